"""Intra-list diversity and catalogue coverage of top-k lists, against hand-computed values."""

from __future__ import annotations

import pytest

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
