"""The in-memory scorer against the Spark path it replaces in serving: the same candidate rows, the
same features (float32), the same top-20 lists, on a synthetic shop (tests/bundles.py).

The same comparison on a real week of the end-to-end shop is `tests/e2e/test_scorer_parity.py`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.candidates import CandidateConfig
from pipelines.features import candidate_features
from pipelines.model import Bundle, prefixes_from_events
from pipelines.model.scorer import InMemoryScorer, sessions_from_events
from tests.bundles import CATALOGUE, assert_same_features, session_events, write_bundle

EVENTS_SCHEMA = "session BIGINT, aid BIGINT, ts BIGINT, type STRING"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    root = tmp_path_factory.mktemp("bundle")
    return Bundle(write_bundle(root / "bundle", root / "tables"))


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return session_events(300)


def test_in_memory_features_and_lists_equal_the_spark_ones(spark, bundle, events):
    sessions = prefixes_from_events(spark.createDataFrame(events, EVENTS_SCHEMA))
    tables = bundle.tables(spark)
    spark_features = candidate_features(sessions, tables, bundle.candidate_config).toPandas()
    scorer = InMemoryScorer.from_bundle(bundle)
    history = sessions_from_events(events)

    assert_same_features(spark_features, scorer.features(history))
    assert spark_features["session"].nunique() == events["session"].nunique()

    spark_lists = bundle.recommend(sessions).toPandas().sort_values(["session", "type"], ignore_index=True)
    lists = scorer.recommend(history).sort_values(["session", "type"], ignore_index=True)
    assert spark_lists[["session", "type"]].equals(lists[["session", "type"]])
    assert [list(map(int, recs)) for recs in spark_lists["recs"]] == [list(recs) for recs in lists["recs"]]
    assert np.allclose(np.concatenate(spark_lists["scores"].to_list()), np.concatenate(lists["scores"].to_list()), rtol=1e-6)


def test_one_session_without_pandas_gets_the_lists_of_the_batch_path(bundle, events):
    scorer = InMemoryScorer.from_bundle(bundle)
    lists = scorer.recommend(sessions_from_events(events))
    for session in events["session"].unique()[:60]:
        mine = events[events["session"] == session].sample(frac=1.0, random_state=0)  # any order
        expected = {row.type: list(row.recs) for row in lists[lists["session"] == session].itertuples()}
        got = scorer.recommend_session(int(session), mine[["aid", "ts", "type"]].to_dict("records"))
        assert {t: recs for t, recs in got.items() if recs} == expected, session


def test_the_history_cap_and_other_configs_follow_the_spark_rules(spark, bundle, events):
    """Short caps make every cut bite: history, co-visitation, ALS, top sellers and the fill rule."""
    config = CandidateConfig(history=3, covisitation=5, als=2, top_sellers=4, top_sellers_fill_below=6, max_prefix_events=7)
    sessions = prefixes_from_events(spark.createDataFrame(events, EVENTS_SCHEMA))
    spark_features = candidate_features(sessions, bundle.tables(spark), config).toPandas()
    tables = {name: pd.read_parquet(location) for name, location in bundle.table_locations().items()}
    scorer = InMemoryScorer(**tables, ranker_strings=bundle.ranker_strings, ranker_rounds=bundle.ranker_rounds,
                            candidate_config=config)
    assert_same_features(spark_features, scorer.features(sessions_from_events(events)))


def test_a_session_of_unseen_items_gets_the_top_sellers(bundle):
    scorer = InMemoryScorer.from_bundle(bundle)
    unseen = pd.DataFrame({"session": [7, 7], "aid": [CATALOGUE + 10_000, CATALOGUE + 10_001],
                           "ts": [1_659_304_800_000, 1_659_304_801_000], "type": ["clicks", "clicks"]})
    lists = scorer.recommend(sessions_from_events(unseen)).set_index("type")["recs"]
    top = pd.read_parquet(bundle.table_location("top_sellers"))
    for event_type, recs in lists.items():
        popular = set(top[(top["list"] == "popular") & (top["type"] == event_type) & (top["rank"] <= 10)]["aid"])
        assert popular <= set(recs), event_type
        assert set(recs) - popular <= {CATALOGUE + 10_000, CATALOGUE + 10_001}  # the session's own items
        assert len(recs) == len(set(recs)) <= 20


def test_sessions_from_events_orders_like_the_sessions_asset_and_keeps_the_last_events():
    events = pd.DataFrame({"session": [1, 1, 1, 1, 2], "aid": [9, 3, 5, 4, 1], "ts": [30, 10, 10, 10, 5],
                           "type": ["clicks", "orders", "clicks", "carts", "clicks"]})
    ordered = sessions_from_events(events, max_events=3)
    # ts, then clicks < carts < orders, then aid; the first of session 1's four events is dropped.
    assert ordered[["session", "aid"]].values.tolist() == [[1, 4], [1, 3], [1, 9], [2, 1]]
