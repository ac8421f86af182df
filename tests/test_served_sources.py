"""What is served: the champion's rankers with the freshest audited week's sources.

A registered version bundles the sources of the week it was trained for, snapshot in the lake
(`Lake.model_tables_dir`). Once a later week's four source tables are live in that lake (they
passed their checks), `recsys predict`, `recsys serve` and the pyfunc serve the same rankers with
them and say which week they used; `recsys predict --week` reproduces an earlier week's lists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.lake import MODEL_TABLES, SUCCESS_MARKER
from pipelines.model import Bundle
from pipelines.model.bundle import TABLE_NAMES, freshest_sources_week
from pipelines.model.scorer import InMemoryScorer
from pipelines.serving.app import ServedModel, recommend_one
from tests.bundles import register_bundle, session_events, source_tables, write_bundle

MODEL_NAME = "served-sources"
TRAINED_WEEK, LATER_WEEK = "2022-08-01", "2022-08-08"


def publish_sources(lake: Path, week: str, seed: int, complete: bool = True) -> None:
    """Week `week`'s four source tables live in the lake, as the source assets leave them."""
    for name, frame in source_tables(seed).items():
        partition = lake / name / f"week={week}"
        partition.mkdir(parents=True)
        frame.to_parquet(partition / "part-00000.parquet", index=False)
        if complete or name != TABLE_NAMES[-1]:
            (partition / SUCCESS_MARKER).touch()


@pytest.fixture
def registered(tmp_path):
    lake = tmp_path / "lake"
    bundle_dir = write_bundle(tmp_path / "bundle", lake / MODEL_TABLES / "run=abc", week=TRAINED_WEEK, seed=0)
    publish_sources(lake, TRAINED_WEEK, seed=0)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = register_bundle(tracking_uri, MODEL_NAME, bundle_dir, tmp_path / "artifacts")
    return {"lake": lake, "bundle": Bundle(bundle_dir), "tracking_uri": tracking_uri, "version": version,
            "uri": f"models:/{MODEL_NAME}/{version}"}


def test_a_later_weeks_live_sources_are_served_with_the_same_rankers(registered):
    lake, bundle = registered["lake"], registered["bundle"]
    assert bundle.lake_root() == lake and bundle.serving() is bundle
    served = ServedModel(registered["uri"], registered["tracking_uri"], poll_seconds=0)
    assert served.current.week == TRAINED_WEEK and not served.refresh()

    publish_sources(lake, LATER_WEEK, seed=9, complete=False)  # one table still unaudited: not served
    assert freshest_sources_week(lake) == TRAINED_WEEK and not served.refresh()
    (lake / TABLE_NAMES[-1] / f"week={LATER_WEEK}" / SUCCESS_MARKER).touch()
    assert freshest_sources_week(lake) == LATER_WEEK
    assert served.refresh() and served.current.week == LATER_WEEK and served.current.trained_week == TRAINED_WEEK
    assert served.current.describe(registered["uri"])["week"] == LATER_WEEK

    events = session_events(1, seed=4, first_session=77)
    body = [{"aid": int(r.aid), "ts": int(r.ts), "type": r.type} for r in events.itertuples()]
    later = InMemoryScorer.from_bundle(bundle.with_sources(lake, LATER_WEEK))
    trained = InMemoryScorer.from_bundle(bundle)
    assert recommend_one(served.current.scorer, 77, body) == recommend_one(later, 77, body)
    assert recommend_one(later, 77, body) != recommend_one(trained, 77, body)  # the sources differ


def test_predict_says_which_week_it_served_and_reproduces_an_earlier_week(registered, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main
    from pipelines.metrics import read_predictions_csv

    publish_sources(registered["lake"], LATER_WEEK, seed=9)
    sessions = tmp_path / "sessions.jsonl"
    events = session_events(3, seed=6, first_session=500)
    with open(sessions, "w") as handle:
        for session, group in events.groupby("session"):
            handle.write(json.dumps({"session": int(session), "events": [
                {"aid": int(r.aid), "ts": int(r.ts), "type": r.type} for r in group.itertuples()]}) + "\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["tracking_uri"])

    outputs = {}
    for week in (None, TRAINED_WEEK):
        out = tmp_path / f"{week}.csv"
        assert main(["predict", "--sessions", str(sessions), "--out", str(out), "--model-uri", registered["uri"],
                     *(["--week", week] if week else [])]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["model_version"] == registered["version"]
        assert summary["sources_week"] == (week or LATER_WEEK)
        outputs[week] = read_predictions_csv(out)
    bundle = registered["bundle"]
    for week, served_bundle in ((None, bundle.with_sources(registered["lake"], LATER_WEEK)), (TRAINED_WEEK, bundle)):
        scorer = InMemoryScorer.from_bundle(served_bundle)
        for session, group in events.groupby("session"):
            expected = recommend_one(scorer, int(session), [
                {"aid": int(r.aid), "ts": int(r.ts), "type": r.type} for r in group.itertuples()])
            got = outputs[week][outputs[week]["session"] == session].sort_values("rank")
            assert {t: list(rows["aid"]) for t, rows in got.groupby("type")} == expected, (week, session)

    assert main(["predict", "--sessions", str(sessions), "--out", str(tmp_path / "x.csv"), "--model-uri",
                 registered["uri"], "--week", "2022-08-15"]) == 2
    assert "week 2022-08-15's sources are not live" in capsys.readouterr().err


def test_predict_in_batches_keeps_a_sessions_rows_together_and_equals_one_call():
    import pandas as pd

    from pipelines.cli import predict_in_batches

    class EchoModel:
        """One list per session: every aid its rows hold, in row order; records each batch."""

        def __init__(self):
            self.batches = []

        def predict(self, frame):
            self.batches.append(sorted(set(frame["session"])))
            rows = [{"session": s, "type": "clicks", "recs": [a for e in group["events"] for a in e]}
                    for s, group in frame.groupby("session", sort=False)]
            return pd.DataFrame(rows, columns=["session", "type", "recs"])

    sessions = pd.DataFrame({"session": [5, 1, 5, 9, 2, 1, 7], "events": [[1], [2], [3], [4], [5], [6], [7]]})
    model = EchoModel()
    batched = predict_in_batches(model, sessions, batch_sessions=2)
    assert model.batches == [[1, 5], [2, 9], [7]]
    whole = EchoModel().predict(sessions)
    key = ["session", "type"]
    assert batched.sort_values(key, ignore_index=True).equals(whole.sort_values(key, ignore_index=True))
    assert len(predict_in_batches(EchoModel(), sessions.iloc[:0])) == 0
