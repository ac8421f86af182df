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
    # A first week: many items seen once, by sessions that saw little else (a few percent of a young shop's items).
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


def _features(spark, rows):
    from pipelines.features import FEATURE_COLUMNS

    schema = "session BIGINT, type STRING, aid BIGINT, " + ", ".join(f"{name} FLOAT" for name in FEATURE_COLUMNS)
    return spark.createDataFrame([(s, t, a, *values) for s, t, a, values in rows], schema)


def test_features_contract_counts_duplicates_non_finite_values_and_missing_session_features(spark):
    from pipelines.features import FEATURE_COLUMNS, features_validation_frame
    from pipelines.quality import features_suite

    good = [1.0] * len(FEATURE_COLUMNS)
    rows = [(s, t, a, good) for s in range(3) for t in ("clicks", "orders") for a in range(4)]
    assert validate(features_validation_frame(_features(spark, rows)), "features", features_suite(len(rows))).success
    # A missing (null) candidate or item feature is allowed: LightGBM treats it as missing.
    session_length = FEATURE_COLUMNS.index("session_length")
    nulls = [1.0 if i == session_length else None for i in range(len(FEATURE_COLUMNS))]
    with_null = rows[:-1] + [(2, "orders", 3, nulls)]
    assert validate(features_validation_frame(_features(spark, with_null)), "features", features_suite(len(rows))).success

    no_session = [None if i == session_length else 1.0 for i in range(len(FEATURE_COLUMNS))]
    infinite = [float("inf")] + good[1:]
    bad = rows + [rows[0]] + [(9, "carts", 1, infinite), (9, "carts", 2, [float("nan")] + good[1:]), (9, "carts", 3, no_session)]
    summary = features_validation_frame(_features(spark, bad))
    assert summary.iloc[0].to_dict() == {"rows": len(rows) + 4, "duplicate_key_rows": 1, "values_not_finite": 2,
                                         "rows_without_session_features": 1}
    report = validate(summary, "features", features_suite(len(rows)))
    assert {o.kwargs["column"] for o in report.failed} == {
        "rows", "duplicate_key_rows", "values_not_finite", "rows_without_session_features"}
    assert any(o.observed.get("partial_unexpected_list") == [1] for o in report.failed
               if o.kwargs["column"] == "duplicate_key_rows")


def test_candidates_contract_counts_duplicates_bad_types_missing_aids_and_oversized_queries(spark):
    from pipelines.quality import candidates_suite, candidates_validation_frame

    schema = "session BIGINT, type STRING, aid BIGINT, n_sources INT"
    rows = [(s, t, a, 1) for s in range(3) for t in ("clicks", "carts") for a in range(5)]
    summary = candidates_validation_frame(spark.createDataFrame(rows, schema))
    assert summary.iloc[0].to_dict() == {"rows": 30, "duplicate_key_rows": 0, "rows_of_unknown_type": 0,
                                         "rows_without_aid": 0, "rows_without_source": 0, "max_candidates_in_query": 5}
    assert validate(summary, "candidates", candidates_suite(max_per_query=5)).success
    assert [o.kwargs["column"] for o in validate(summary, "candidates", candidates_suite(max_per_query=4)).failed] == [
        "max_candidates_in_query"]

    bad = rows + [rows[0], rows[0], (7, "views", 1, 1), (7, "clicks", None, 1), (7, "clicks", 2, 0), (7, "clicks", 3, None)]
    summary = candidates_validation_frame(spark.createDataFrame(bad, schema))
    assert summary.iloc[0].to_dict() == {"rows": 36, "duplicate_key_rows": 2, "rows_of_unknown_type": 1,
                                         "rows_without_aid": 1, "rows_without_source": 2, "max_candidates_in_query": 7}
    failed = {o.kwargs["column"] for o in validate(summary, "candidates", candidates_suite(max_per_query=9)).failed}
    assert failed == {"duplicate_key_rows", "rows_of_unknown_type", "rows_without_aid", "rows_without_source"}
    assert not validate(candidates_validation_frame(spark.createDataFrame([], schema)), "candidates",
                        candidates_suite(max_per_query=9)).success
