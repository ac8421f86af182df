"""Intra-list diversity and catalogue coverage of top-k lists, against hand-computed values."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from pipelines.diversity import catalogue_coverage, diversity_report, intra_list_diversity


@pytest.fixture()
def factors(spark):
    return spark.createDataFrame(
        [(1, [2.0, 0.0]), (2, [0.0, 3.0]), (3, [0.5, 0.0]), (4, [0.0, 0.0])], "aid BIGINT, factors ARRAY<FLOAT>")


def _lists(spark, lists: dict[tuple[int, str], list[int]]):
    rows = [(session, kind, aid, rank) for (session, kind), aids in lists.items() for rank, aid in enumerate(aids, start=1)]
    return spark.createDataFrame(rows, "session BIGINT, type STRING, aid BIGINT, rank INT")


def test_diversity_is_the_mean_pairwise_cosine_distance_of_each_list(spark, factors):
    lists = _lists(spark, {
        (1, "clicks"): [1, 2],  # orthogonal: 1
        (1, "carts"): [1, 3],  # the same direction: 0
        (2, "clicks"): [1, 2, 3],  # pairs 1-2: 1, 1-3: 0, 2-3: 1 -> 2/3
        (2, "orders"): [1, 4, 99],  # one item with factors (4 has none that count, 99 none): left out
    })
    assert intra_list_diversity(lists, factors) == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_no_list_with_two_items_has_no_diversity(spark, factors):
    assert intra_list_diversity(_lists(spark, {(1, "clicks"): [1]}), factors) is None


def test_coverage_and_the_report_per_ranking(spark, factors):
    ranker = _lists(spark, {(1, "clicks"): [1, 2], (2, "clicks"): [2, 3]})
    popular = _lists(spark, {(1, "clicks"): [1, 3], (2, "clicks"): [1, 3]})
    catalogue = spark.createDataFrame([(aid,) for aid in range(1, 11)], "aid BIGINT")
    assert catalogue_coverage(ranker, catalogue) == pytest.approx(0.3)
    # An item outside the catalogue (new this week) does not count.
    with_new_item = _lists(spark, {(1, "clicks"): [1, 2], (2, "clicks"): [2, 3, 999]})
    assert catalogue_coverage(with_new_item, catalogue) == pytest.approx(0.3)
    report = diversity_report({"ranker": ranker, "baseline_popularity": popular}, factors, catalogue)
    assert report["ranker"] == {"catalogue_coverage": pytest.approx(0.3), "intra_list_diversity": pytest.approx(1.0)}
    assert report["baseline_popularity"] == {"catalogue_coverage": pytest.approx(0.2), "intra_list_diversity": pytest.approx(0.0)}


def test_mmr_keeps_the_ranker_order_at_lambda_one_and_spreads_near_duplicates_below_it():
    import numpy as np

    from pipelines.diversity import mmr_order

    # Slots best first: 0 and 1 point the same way, 2 elsewhere, 3 has no factors, 4 is padding.
    relevance = np.array([[0.9, 0.8, 0.5, 0.1, np.nan]])
    vectors = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    assert mmr_order(relevance, vectors, 1.0, 5).tolist() == [[0, 1, 2, 3, -1]]
    # Relevance scales to 1, 0.875, 0.5, 0: at lambda 0.5 the duplicate (similarity 1) falls behind
    # the orthogonal item (0.25 against -0.0625) and the item without factors (0 against -0.0625).
    assert mmr_order(relevance, vectors, 0.5, 5).tolist() == [[0, 2, 3, 1, -1]]
    assert mmr_order(relevance, vectors, 0.5, 2).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="lambda"):
        mmr_order(relevance, vectors, 1.5, 2)


def test_mmr_rerank_rechooses_each_lists_pool_in_spark(spark, factors):
    from pipelines.diversity import mmr_rerank, unit_factors

    pool = spark.createDataFrame(
        [(1, "clicks", 1, 0.9), (1, "clicks", 3, 0.8), (1, "clicks", 2, 0.5), (2, "carts", 2, 0.3)],
        "session BIGINT, type STRING, aid BIGINT, score DOUBLE")
    ranked = lambda lam: {  # noqa: E731
        (r["session"], r["type"]): [a for _, a in sorted(zip(r["ranks"], r["aids"]))]
        for r in mmr_rerank(pool, unit_factors(factors), lam, k=20).groupBy("session", "type").agg(
            F.collect_list("rank").alias("ranks"), F.collect_list("aid").alias("aids")).collect()}
    assert ranked(1.0) == {(1, "clicks"): [1, 3, 2], (2, "carts"): [2]}
    # Items 1 and 3 point the same way: below lambda 1 the orthogonal item 2 comes second.
    assert ranked(0.5) == {(1, "clicks"): [1, 2, 3], (2, "carts"): [2]}
