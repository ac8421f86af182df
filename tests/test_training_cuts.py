"""Training cuts: more cuts of each evaluation session that only the ranker trains on.

Each cut is a query of its own (a negative id), labelled by the events after it, kept only where
a cart or an order follows; it is drawn, held out and folded with the session it was cut from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluation import MAX_TRAINING_CUTS, split_evaluation_sessions, split_training_cuts
from pipelines.ranker import (
    LABEL_COLUMN,
    RANKER,
    TrainingCuts,
    evaluate_ranker,
    fold_array,
    labelled_rows_of_weeks,
    training_sample,
)
from tests.test_ranker import FAST, spark_frames, synthetic_rows, top_sellers_of

SESSIONS_SCHEMA = ("session BIGINT, history ARRAY<STRUCT<ts: BIGINT, aid: BIGINT, type: STRING>>, "
                   "started_in_week BOOLEAN, n_events INT")


def _session(session: int, types: list[str], started: bool = True) -> tuple:
    history = [(1_000 * i, 100 + i, kind) for i, kind in enumerate(types)]
    return session, history, started, len(history)


def _week_sessions(spark):
    shopper = ["clicks", "clicks", "carts", "clicks", "clicks", "carts", "clicks", "orders", "clicks", "clicks"]
    return spark.createDataFrame([
        *[_session(session, shopper) for session in range(1, 41)],
        _session(50, ["clicks", "carts"]),  # two events: one cut only, the evaluation's
        _session(51, ["clicks"] * 12),  # nothing bought: no buy label after any cut
        _session(52, shopper, started=False),  # began before the week: not an evaluation session
    ], SESSIONS_SCHEMA)


def test_training_cuts_are_other_cuts_of_evaluation_sessions_followed_by_a_buy(spark):
    sessions = _week_sessions(spark)
    cuts = split_training_cuts(sessions, seed=42, cuts=2).toPandas()
    eval_cuts = {row.session: len(row.prefix) for row in split_evaluation_sessions(sessions, 42)[0].collect()}
    histories = {row.session: [tuple(e) for e in row.history] for row in sessions.collect()}

    assert set(cuts["origin"]) <= set(range(1, 41)) and len(set(cuts["origin"])) > 30
    assert (cuts["session"] < 0).all() and cuts["session"].is_unique
    assert cuts.groupby("origin").size().max() <= 2
    for row in cuts.itertuples():
        history = histories[row.origin]
        cut = len(row.prefix)
        assert 1 <= cut < len(history) and cut != eval_cuts[row.origin]
        assert [tuple(e) for e in row.prefix] == history[:cut]
        hidden = history[cut:]
        assert sorted(row.carts) == sorted({aid for _, aid, kind in hidden if kind == "carts"})
        assert sorted(row.orders) == sorted({aid for _, aid, kind in hidden if kind == "orders"})
        next_click = next((aid for _, aid, kind in hidden if kind == "clicks"), None)
        assert (row.clicks if not pd.isna(row.clicks) else None) == next_click
        assert len(row.carts) + len(row.orders) > 0
    # Two cuts of one session never share a position.
    assert not cuts.assign(cut=cuts["prefix"].map(len)).duplicated(["origin", "cut"]).any()

    again = split_training_cuts(sessions, seed=42, cuts=2).toPandas()
    pd.testing.assert_frame_equal(cuts.sort_values("session", ignore_index=True),
                                  again.sort_values("session", ignore_index=True))
    other_seed = split_training_cuts(sessions, seed=7, cuts=2).toPandas()
    assert set(other_seed["session"]).isdisjoint(cuts["session"])


def test_no_training_cuts_keeps_the_schema_and_out_of_range_counts_are_refused(spark):
    sessions = _week_sessions(spark)
    none = split_training_cuts(sessions, seed=42, cuts=0)
    assert none.count() == 0
    assert none.columns == split_training_cuts(sessions, seed=42, cuts=1).columns
    with pytest.raises(ValueError, match="training cuts"):
        split_training_cuts(sessions, seed=42, cuts=MAX_TRAINING_CUTS + 1)


def _cuts_of(spark, rows: pd.DataFrame, origin_of: dict[int, int]) -> TrainingCuts:
    features, labels = spark_frames(spark, rows)
    origins = spark.createDataFrame(pd.DataFrame({"session": list(origin_of), "origin": list(origin_of.values())}))
    return TrainingCuts(features, labels, origins)


def test_training_cuts_join_the_sample_in_their_origins_fold_and_are_never_scored(spark):
    """Cut queries train beside the evaluation sessions, in the origin's fold, sample and
    validation share; fold k's model never saw a cut of a session it scores."""
    this_week = synthetic_rows(240, 25, seed=1)
    cut_rows = synthetic_rows(240, 25, seed=4)
    cut_rows["session"] = -(cut_rows["session"] + 1) * 7919
    origin_of = {int(query): origin for origin, query in enumerate(sorted(set(cut_rows["session"]), reverse=True))}
    features, labels = spark_frames(spark, this_week)
    cuts = _cuts_of(spark, cut_rows, origin_of)

    rows = labelled_rows_of_weeks(features, labels, FAST, training_cuts=[cuts]).toPandas()
    assert len(rows) == len(this_week) + len(cut_rows)
    queries = rows[rows["session"] < 0]
    assert (queries["origin"] == queries["session"].map(origin_of)).all()
    assert (queries["fold"].to_numpy() == fold_array(queries["origin"].to_numpy(), FAST.folds, FAST.seed)).all()
    merged = queries.merge(cut_rows[["session", "aid", LABEL_COLUMN]], on=["session", "aid"], suffixes=("", "_truth"))
    assert len(merged) == len(cut_rows) and (merged[LABEL_COLUMN] == merged[f"{LABEL_COLUMN}_truth"]).all()

    labelled = labelled_rows_of_weeks(features, labels, FAST, training_cuts=[cuts])
    sample = training_sample(labelled, "carts", FAST)
    by_origin = sample.groupby("origin")["validation"].nunique()
    assert (by_origin == 1).all() and (sample["session"] < 0).any()
    assert sample.loc[sample["session"] >= 0, "origin"].eq(sample.loc[sample["session"] >= 0, "session"]).all()

    evaluation = evaluate_ranker(features, labels, top_sellers_of(spark, this_week), FAST, types=("carts",),
                                 training_cuts=[cuts])
    scored = evaluation.predictions[RANKER].toPandas()
    evaluation.release()
    assert set(scored["session"]) == set(this_week["session"])
    for record in evaluation.results["carts"].folds:
        assert record.train_sessions and all(session >= 0 for session in record.train_sessions)
        assert not {s for s in record.train_sessions if fold_array(np.array([s]), FAST.folds, FAST.seed)[0] == record.fold}
