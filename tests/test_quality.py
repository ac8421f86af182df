"""GE suites whose thresholds are not exercised by the stage tests."""

from __future__ import annotations

from pipelines.quality import factors_suite, validate


def _factors(spark, vectors):
    from pipelines.als import factor_validation_frame

    return factor_validation_frame(spark.createDataFrame([(i, v) for i, v in enumerate(vectors)], "aid BIGINT, factors ARRAY<FLOAT>"))


def test_factor_suite_tolerates_a_few_near_zero_items_but_not_a_collapsed_fit(spark):
    suite = factors_suite(rank=2, min_norm=1e-4, max_norm=100.0)
    healthy = [[0.6, 0.8]] * 300 + [[1e-6, 0.0]] * 2  # rare items end near zero under regularisation
    assert validate(_factors(spark, healthy), "als_factors", suite).success
    # A first week: many items seen once, by sessions that saw little else (2.7% at 200k sessions).
    first_week = [[0.6, 0.8]] * 300 + [[1e-9, 0.0]] * 15
    assert validate(_factors(spark, first_week), "als_factors", suite).success

    collapsed = [[1e-6, 0.0]] * 300
    assert not validate(_factors(spark, collapsed), "als_factors", suite).success
    mostly_collapsed = [[0.6, 0.8]] * 100 + [[1e-6, 0.0]] * 100
    assert not validate(_factors(spark, mostly_collapsed), "als_factors", suite).success

    diverged = [[0.6, 0.8]] * 300 + [[500.0, 0.0]]
    report = validate(_factors(spark, diverged), "als_factors", suite)
    assert not report.success
    assert any(o.kwargs.get("max_value") == 100.0 and o.kwargs.get("column") == "norm" for o in report.failed)

    not_finite = [[0.6, 0.8]] * 300 + [[float("nan"), 0.0]]
    assert {o.kwargs.get("column") for o in validate(_factors(spark, not_finite), "als_factors", suite).failed} >= {"all_finite"}
