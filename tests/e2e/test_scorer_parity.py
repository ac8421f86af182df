"""The in-memory scorer (what `recsys serve`, `recsys predict` and `mlflow models serve` run) on a
real week of the end-to-end shop, against what the Spark pipeline built and published for it:

- every feature column of the week's evaluation rows equals the `features` table (float32);
- for every session active in the week (over a thousand), the candidates and features equal the
  Spark `candidate_features` of the same bundle, and the top-20 lists equal the published
  `session_recommendations`, which the champion's Spark path wrote.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluation import EVAL_SESSIONS_TABLE
from pipelines.features import FEATURES_TABLE, candidate_features
from pipelines.lake import SESSIONS_TABLE, Lake
from pipelines.model import load_version
from pipelines.model.scorer import InMemoryScorer
from pipelines.recommendations import active_sessions
from pipelines.registry import version_of_week
from pipelines.weeks import Week
from tests.bundles import assert_same_features
from tests.e2e.conftest import E2E_TIMEZONE, MODEL_NAME, PARTITIONS, E2EStack

pytestmark = pytest.mark.e2e

WEEK = PARTITIONS[-1]


def exploded(prefixes: pd.DataFrame, column: str) -> pd.DataFrame:
    """`session, <column>: [{ts, aid, type}, ...]` -> `session, aid, ts, type` in each list's order."""
    rows = prefixes[["session", column]].explode(column, ignore_index=True)
    events = pd.DataFrame.from_records(rows[column].tolist(), columns=["ts", "aid", "type"])
    events.insert(0, "session", rows["session"].to_numpy())
    return events[["session", "aid", "ts", "type"]]


@pytest.fixture(scope="module")
def week(e2e_stack: E2EStack, spark):
    lake, week = Lake(e2e_stack.env["RECSYS_LAKE_DIR"]), Week.parse(WEEK, E2E_TIMEZONE)
    return {"lake": lake, "week": week, "tracking_uri": e2e_stack.mlflow_url,
            "read": lambda table: lake.read_partition(spark, table, week)}


def test_evaluation_rows_equal_the_features_table(week):
    """The rows the week's ranker trained on, rebuilt by the scorer from the week's own version with
    the sources they were built from, the week before's."""
    from mlflow import MlflowClient

    version = version_of_week(MlflowClient(tracking_uri=week["tracking_uri"]), MODEL_NAME, WEEK)
    bundle = load_version(week["tracking_uri"], MODEL_NAME, version.version).bundle.with_sources(
        week["lake"].root, week["week"].shift(-1).key)
    prefixes = week["read"](EVAL_SESSIONS_TABLE).select("session", "prefix").toPandas()
    features = InMemoryScorer.from_bundle(bundle).features(exploded(prefixes, "prefix"))
    assert features["session"].nunique() == len(prefixes) > 300
    assert_same_features(week["read"](FEATURES_TABLE).toPandas(), features)


def test_active_sessions_get_the_spark_features_and_the_published_lists(week, spark):
    """Over a thousand real sessions through both paths: only a week the pipeline really published
    shows that what is served live equals the batch table (`tests/test_scorer.py` uses a synthetic shop)."""
    summary = week["lake"].read_stats("published_summary", week["week"])
    assert summary["model"]["sources_week"] == WEEK
    # The published lists: the champion's rankers with the week's own sources.
    champion = load_version(week["tracking_uri"], MODEL_NAME, summary["model"]["version"]).bundle.with_sources(
        week["lake"].root, WEEK)
    sessions = active_sessions(week["read"](SESSIONS_TABLE))
    histories = exploded(sessions.toPandas(), "prefix")
    assert histories["session"].nunique() >= 1_000
    scorer = InMemoryScorer.from_bundle(champion)

    spark_features = candidate_features(sessions, champion.tables(spark), champion.candidate_config)
    assert_same_features(spark_features.toPandas(), scorer.features(histories))

    published = week["read"]("published_session_recommendations").toPandas()
    lists = scorer.recommend(histories)
    key = lambda frame: frame.sort_values(["session", "type"], ignore_index=True)  # noqa: E731
    published, lists = key(published), key(lists)
    assert published[["session", "type"]].equals(lists[["session", "type"]])
    assert [list(map(int, recs)) for recs in published["recs"]] == lists["recs"].tolist()
    assert np.allclose(np.concatenate(published["scores"].tolist()), np.concatenate(lists["scores"].tolist()), rtol=1e-6)
