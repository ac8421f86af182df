"""Great Expectations suites for every stage, run with an ephemeral GE 1.x context.

GE is imported lazily (its import takes seconds) and every validation gets its own
ephemeral context, so validations never share state. A `ValidationReport` keeps only what
an operator needs to act: which expectations failed and the values GE observed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import QualityThresholds
from pipelines.vocabulary import EVENT_TYPES
from pipelines.weeks import Week

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

_OBSERVED_KEYS = (
    "observed_value",
    "element_count",
    "unexpected_count",
    "unexpected_percent",
    "missing_count",
    "partial_unexpected_list",
)


@dataclass
class ExpectationOutcome:
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    observed: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "kwargs": self.kwargs, "observed": self.observed}


@dataclass
class ValidationReport:
    suite: str
    success: bool
    outcomes: list[ExpectationOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.success]

    def failure_summary(self) -> str:
        return "; ".join(
            f"{o.expectation}({', '.join(f'{k}={v}' for k, v in o.kwargs.items())}) observed {o.observed}"
            for o in self.failed
        )

    def as_metadata(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "expectations_evaluated": len(self.outcomes),
            "expectations_failed": len(self.failed),
            "failed_expectations": [o.describe() for o in self.failed],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value][:20]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return value.item()  # numpy scalars
    except AttributeError:
        return str(value)


def _report(suite_name: str, result) -> ValidationReport:
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        kwargs = {k: _jsonable(v) for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
        observed = {k: _jsonable(item.result[k]) for k in _OBSERVED_KEYS if k in (item.result or {})}
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed["exception"] = str(item.exception_info.get("exception_message"))[:500]
        outcomes.append(ExpectationOutcome(config.type, kwargs, bool(item.success), observed))
    return ValidationReport(suite_name, bool(result.success), outcomes)


def validate(frame, suite_name: str, expectations: list) -> ValidationReport:
    """Validate a Spark or pandas DataFrame against `expectations` in a fresh ephemeral context."""
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GE draws a tqdm bar per validation, which floods the run logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    is_pandas = frame.__class__.__module__.startswith("pandas")
    # persist=False: GE would otherwise cache every validated Spark frame, and Spark serves a
    # later read of the same lake path from that cache, so a rerun would validate stale data.
    source = (
        context.data_sources.add_pandas("frame")
        if is_pandas
        else context.data_sources.add_spark("frame", persist=False)
    )
    batch_definition = source.add_dataframe_asset(name=suite_name).add_batch_definition_whole_dataframe("whole")
    suite = gx.ExpectationSuite(name=suite_name, expectations=expectations)
    if is_pandas:
        return _report(suite_name, batch_definition.get_batch(batch_parameters={"dataframe": frame}).validate(
            suite, result_format="SUMMARY"))
    # GE runs a Spark job per metric: computing the validation frame once for this validation
    # (and dropping it after) is ~3x faster than redoing its joins for every expectation.
    cached = frame.persist()
    try:
        cached.count()
        batch = batch_definition.get_batch(batch_parameters={"dataframe": cached})
        return _report(suite_name, batch.validate(suite, result_format="SUMMARY"))
    finally:
        cached.unpersist()


# --- suites ---------------------------------------------------------------------------


def events_suite(week: Week) -> list:
    import great_expectations.expectations as gxe

    ids = ("session", "aid", "ts")
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=["session", "aid", "ts", "type"]),
        *[gxe.ExpectColumnValuesToBeOfType(column=c, type_="LongType") for c in ids],
        gxe.ExpectColumnValuesToBeOfType(column="type", type_="StringType"),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in (*ids, "type")],
        gxe.ExpectColumnValuesToBeInSet(column="type", value_set=list(EVENT_TYPES)),
        gxe.ExpectColumnValuesToBeBetween(column="session", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="aid", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="ts", min_value=week.start_ms, max_value=week.end_ms - 1),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["session", "aid", "ts", "type"]),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def quarantine_suite(thresholds: QualityThresholds) -> list:
    """Runs on a one-row pandas frame with `quarantine_rate` and `records`."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="records", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="quarantine_rate", min_value=0, max_value=thresholds.max_quarantine_rate),
    ]


def drift_suite(thresholds: QualityThresholds, share_columns: list[str]) -> list:
    """Runs on a one-row pandas frame with `volume_ratio` and one `*_share_delta` per type."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="volume_ratio", min_value=thresholds.min_volume_ratio, max_value=thresholds.max_volume_ratio
        ),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=c, min_value=-thresholds.max_type_share_delta, max_value=thresholds.max_type_share_delta
            )
            for c in share_columns
        ],
    ]


def sessions_suite(week: Week, max_events: int) -> list:
    """Runs on `sessions_validation_frame`: the sessions table plus derived consistency columns."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeOfType(column="session", type_="LongType"),
        gxe.ExpectColumnValuesToNotBeNull(column="session"),
        gxe.ExpectColumnValuesToBeUnique(column="session"),
        gxe.ExpectColumnValuesToBeBetween(column="session", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="n_events", min_value=1, max_value=max_events),
        gxe.ExpectColumnValuesToBeBetween(column="n_events_in_week", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="n_trimmed", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="last_ts", min_value=week.start_ms, max_value=week.end_ms - 1),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="last_ts", column_B="first_ts", or_equal=True),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_events", column_B="type_count_total"),
        gxe.ExpectColumnValuesToBeInSet(column="history_sorted", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="history_types_known", value_set=[True]),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def sessions_validation_frame(sessions):
    """The sessions table with columns GE can check row by row (sortedness, count consistency)."""
    from pyspark.sql import functions as F

    ts_list = F.transform("history", lambda e: e["ts"])
    return sessions.select(
        "session",
        "n_events",
        "n_events_in_week",
        "n_trimmed",
        "first_ts",
        "last_ts",
        (F.col("n_clicks") + F.col("n_carts") + F.col("n_orders")).alias("type_count_total"),
        (F.array_sort(ts_list) == ts_list).alias("history_sorted"),
        F.forall("history", lambda e: e["type"].isin(*EVENT_TYPES)).alias("history_types_known"),
    )


def drift_frame(current: dict, previous: dict, count_key: str, shares_key: str | None = None):
    """One-row pandas frame comparing this week's summary with the previous week's."""
    import pandas as pd

    row = {"volume_ratio": current[count_key] / previous[count_key] if previous[count_key] else float("inf")}
    if shares_key:
        for event_type in EVENT_TYPES:
            row[f"{event_type}_share_delta"] = current[shares_key][event_type] - previous[shares_key][event_type]
    return pd.DataFrame([row])


def eval_split_suite() -> list:
    """Runs on `eval_split_validation_frame`: one row per evaluation session."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeUnique(column="session"),
        gxe.ExpectColumnValuesToBeBetween(column="n_prefix", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="n_hidden", min_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="has_labels", value_set=[True]),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def eval_split_validation_frame(eval_sessions, eval_labels):
    """Eval sessions joined with their labels; every session must have some truth after its cut."""
    from pyspark.sql import functions as F

    joined = eval_sessions.join(eval_labels, "session", "left")
    return joined.select(
        "session",
        "n_prefix",
        "n_hidden",
        F.coalesce(
            F.col("clicks").isNotNull() | (F.size("carts") > 0) | (F.size("orders") > 0), F.lit(False)
        ).alias("has_labels"),
    )


def top_sellers_suite(top_n: int) -> list:
    """Runs on `top_sellers_validation_frame`."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(column="type", value_set=list(EVENT_TYPES)),
        gxe.ExpectColumnValuesToBeInSet(column="list", value_set=["popular", "trending"]),
        gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=top_n),
        gxe.ExpectColumnValuesToBeInSet(column="score_positive_finite", value_set=[True]),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="entries_in_list", column_B="distinct_aids_in_list"),
        gxe.ExpectColumnValuesToNotBeNull(column="aid"),
        gxe.ExpectColumnValuesToBeBetween(column="aid", min_value=0),
    ]


def per_type_counts_suite(min_count: int = 1) -> list:
    """Runs on a one-row pandas frame with one column per event type (e.g. popular-list length)."""
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(column=t, min_value=min_count) for t in EVENT_TYPES]


def covisitation_suite(top_k: int) -> list:
    """Runs on `pipelines.covisitation.validation_frame`."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(column="is_known_matrix", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="is_self_pair", value_set=[False]),
        gxe.ExpectColumnValuesToBeInSet(column="weight_finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="weight_positive", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="ordered_after_previous", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="n_neighbours", min_value=1, max_value=top_k),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_neighbours", column_B="n_distinct_neighbours"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_neighbours", column_B="max_rank"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["matrix", "aid", "rank"]),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def factors_suite(rank: int, min_norm: float, max_norm: float, min_norm_share: float = 0.9) -> list:
    """Runs on `pipelines.als.factor_validation_frame` of item or session factors."""
    import great_expectations.expectations as gxe

    # Rarely seen items legitimately end near zero under regularisation, so the lower bound
    # holds for `min_norm_share` of rows and for the mean; a collapsed fit fails both, a diverged
    # one the max.
    return [
        gxe.ExpectColumnValuesToBeInSet(column="all_finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="dims", min_value=rank, max_value=rank),
        gxe.ExpectColumnValuesToBeBetween(column="norm", min_value=0.0, max_value=max_norm),
        gxe.ExpectColumnValuesToBeBetween(column="norm", min_value=min_norm, mostly=min_norm_share),
        gxe.ExpectColumnMeanToBeBetween(column="norm", min_value=min_norm, max_value=max_norm),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]


def similar_items_suite(top_k: int) -> list:
    """Runs on `similar_items_validation_frame`."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeInSet(column="is_self_pair", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=-1.000001, max_value=1.000001),
        gxe.ExpectColumnValuesToBeBetween(column="n_neighbours", min_value=1, max_value=top_k),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_neighbours", column_B="n_distinct_neighbours"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["aid", "rank"]),
    ]


def similar_items_validation_frame(similar):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    item = Window.partitionBy("aid")
    return similar.select(
        "aid",
        "neighbour",
        "score",
        "rank",
        (F.col("aid") == F.col("neighbour")).alias("is_self_pair"),
        F.count(F.lit(1)).over(item).alias("n_neighbours"),
        F.size(F.collect_set("neighbour").over(item)).alias("n_distinct_neighbours"),
    )


def coverage_suite(min_share: float, columns: list[str]) -> list:
    """Runs on a one-row pandas frame: one coverage share per source."""
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=min_share, max_value=1.0) for c in columns]


def candidates_suite(max_per_query: int) -> list:
    """Runs on `candidates_validation_frame` (one row of counts)."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=1),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=0)
          for c in ("duplicate_key_rows", "rows_of_unknown_type", "rows_without_aid", "rows_without_source")],
        gxe.ExpectColumnValuesToBeBetween(column="max_candidates_in_query", min_value=1, max_value=max_per_query),
    ]


def candidates_validation_frame(candidates):
    """A one-row pandas summary of the candidates table: rows, rows sharing a (session, type, aid)
    key with another, rows of a type outside the event types, without an aid or without a
    source (`n_sources` < 1), and the largest query. Aggregated in Spark (GE per row would run a
    Spark job per expectation over every row)."""
    import pandas as pd
    from pyspark.sql import functions as F

    per_key = candidates.groupBy("session", "type", "aid").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.coalesce((F.col("n_sources") < 1), F.lit(True)).cast("long")).alias("without_source"),
    )
    per_query = per_key.groupBy("session", "type").agg(
        F.sum("rows").alias("rows"),
        F.sum(F.col("rows") - 1).alias("duplicate_key_rows"),
        F.sum(F.when(F.col("aid").isNull(), F.col("rows")).otherwise(0)).alias("without_aid"),
        F.sum("without_source").alias("without_source"),
    )
    row = per_query.agg(
        F.sum("rows").alias("rows"),
        F.sum("duplicate_key_rows").alias("duplicate_key_rows"),
        F.sum(F.when(~F.coalesce(F.col("type").isin(*EVENT_TYPES), F.lit(False)), F.col("rows")).otherwise(0)).alias(
            "rows_of_unknown_type"),
        F.sum("without_aid").alias("rows_without_aid"),
        F.sum("without_source").alias("rows_without_source"),
        F.max("rows").alias("max_candidates_in_query"),
    ).first()
    return pd.DataFrame([{name: int(row[name] or 0) for name in row.asDict()}])


def features_suite(expected_rows: int) -> list:
    """Runs on `pipelines.features.features_validation_frame` (one row of counts): one feature row
    per candidate, every feature finite or missing, session features on every row."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=expected_rows, max_value=expected_rows),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=0)
          for c in ("duplicate_key_rows", "values_not_finite", "rows_without_session_features")],
    ]


def ranker_suite(tolerance: float) -> list:
    """Runs on a one-row pandas frame of the week's scores: the ranker is at most `tolerance` below
    the hand rule and beats popularity. Not strictly above the hand rule: a ranker whose boosting
    gained nothing significant on held-out sessions keeps the hand rule's order (`fit_target`) and
    ties it, up to the folds' noise. Such a version is never promoted (the champion gate wants a
    strict gain), so the week still publishes, with the champion's lists or the hand rule's; a
    broken ranker falls far below and stops the week.

    Columns: `margin_over_covisitation` and `margin_over_popularity` (ranker score minus baseline).
    """
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column="margin_over_covisitation", min_value=-tolerance),
        gxe.ExpectColumnValuesToBeBetween(column="margin_over_popularity", min_value=0.0, strict_min=True),
    ]


# --- published recommendation tables (pre-publication gates, see pipelines/publish/gates.py)


def published_lists_suite(key_columns, min_length: int = 1, max_length: int = 20) -> list:
    """Runs on `published_lists_validation_frame` of frequently_bought_together, similar_items or
    session_recommendations: 1..20 distinct recs per row, as many scores, scores descending, known aids."""
    import great_expectations.expectations as gxe

    keys = list(key_columns)
    expectations = [
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in keys],
        gxe.ExpectCompoundColumnsToBeUnique(column_list=keys) if len(keys) > 1 else gxe.ExpectColumnValuesToBeUnique(column=keys[0]),
        gxe.ExpectColumnValuesToBeBetween(column="n_recs", min_value=min_length, max_value=max_length),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_recs", column_B="n_scores"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="n_recs", column_B="n_distinct_recs"),
        gxe.ExpectColumnValuesToBeInSet(column="recs_not_null", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="scores_finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="scores_descending", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="n_unknown_recs", min_value=0, max_value=0),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    if "aid" in keys:
        expectations += [
            gxe.ExpectColumnValuesToBeInSet(column="aid_known", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="recommends_itself", value_set=[False]),
        ]
    if "type" in keys:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column="type", value_set=list(EVENT_TYPES)))
    return expectations


def _known_aids(catalogue):
    from pyspark.sql import functions as F

    return catalogue.select(F.col("aid").cast("long").alias("_aid")).where(F.col("_aid").isNotNull()).distinct()


def published_lists_validation_frame(table, key_columns, catalogue):
    """One row per list with its lengths, order, and how many of its aids the catalogue does not know."""
    from pyspark.sql import functions as F

    keys = list(key_columns)
    known = _known_aids(catalogue)
    lists = table.select(*keys, "recs", "scores")
    unknown = (
        lists.select(*keys, F.explode("recs").alias("_aid"))
        .join(known, "_aid", "left_anti")
        .groupBy(*keys)
        .agg(F.count(F.lit(1)).alias("n_unknown_recs"))
    )
    frame = lists.join(unknown, keys, "left")
    columns = [
        *keys,
        F.coalesce(F.size("recs"), F.lit(0)).alias("n_recs"),
        F.coalesce(F.size("scores"), F.lit(0)).alias("n_scores"),
        F.coalesce(F.size(F.array_distinct("recs")), F.lit(0)).alias("n_distinct_recs"),
        F.coalesce(F.forall("recs", lambda r: r.isNotNull()), F.lit(False)).alias("recs_not_null"),
        F.coalesce(
            F.forall("scores", lambda s: s.isNotNull() & ~F.isnan(s) & (F.abs(s) < F.lit(float("inf")))), F.lit(False)
        ).alias("scores_finite"),
        F.coalesce(F.sort_array("scores", asc=False) == F.col("scores"), F.lit(False)).alias("scores_descending"),
        F.coalesce(F.col("n_unknown_recs"), F.lit(0)).alias("n_unknown_recs"),
    ]
    if "aid" in keys:
        frame = frame.join(known.select(F.col("_aid").alias("aid"), F.lit(True).alias("aid_known")), "aid", "left")
        columns += [
            F.coalesce(F.col("aid_known"), F.lit(False)).alias("aid_known"),
            F.coalesce(F.array_contains("recs", F.col("aid")), F.lit(False)).alias("recommends_itself"),
        ]
    return frame.select(*columns)


def published_top_sellers_suite(max_rank: int = 20) -> list:
    """Runs on `published_top_sellers_validation_frame`: ranks 1..n per type, distinct known aids, scores ordered."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnDistinctValuesToEqualSet(column="type", value_set=list(EVENT_TYPES)),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("type", "rank", "aid", "score")],
        gxe.ExpectColumnValuesToBeBetween(column="rank", min_value=1, max_value=max_rank),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["type", "rank"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["type", "aid"]),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="rows_in_type", column_B="max_rank_in_type"),
        gxe.ExpectColumnValuesToBeInSet(column="aid_known", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="score_finite", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="score_not_above_previous_rank", value_set=[True]),
    ]


def published_top_sellers_validation_frame(top_sellers, catalogue):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per_type = Window.partitionBy("type")
    by_rank = Window.partitionBy("type").orderBy("rank")
    known = _known_aids(catalogue).select(F.col("_aid").alias("aid"), F.lit(True).alias("aid_known"))
    frame = top_sellers.select("type", "rank", "aid", "score").join(known, "aid", "left")
    return frame.select(
        "type",
        "rank",
        "aid",
        "score",
        F.count(F.lit(1)).over(per_type).alias("rows_in_type"),
        F.max("rank").over(per_type).alias("max_rank_in_type"),
        F.coalesce(F.col("aid_known"), F.lit(False)).alias("aid_known"),
        F.coalesce(~F.isnan("score") & (F.abs("score") < F.lit(float("inf"))), F.lit(False)).alias("score_finite"),
        F.coalesce(F.col("score") <= F.lag("score").over(by_rank), F.lit(True)).alias("score_not_above_previous_rank"),
    )


def session_coverage_suite() -> list:
    """Runs on `session_coverage_validation_frame`: `uncovered` names each missing `session/type`."""
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeNull(column="uncovered")]


def session_coverage_validation_frame(session_recommendations, active_sessions):
    """Every active session crossed with every event type, with `uncovered` = "session/type" when it has no list."""
    from pyspark.sql import functions as F

    expected = active_sessions.select("session").distinct().select(
        "session", F.explode(F.array(*[F.lit(t) for t in EVENT_TYPES])).alias("type")
    )
    present = session_recommendations.select("session", "type").distinct().withColumn("_present", F.lit(True))
    joined = expected.join(present, ["session", "type"], "left")
    return joined.select(
        "session",
        "type",
        F.when(F.col("_present").isNull(), F.concat_ws("/", F.col("session").cast("string"), F.col("type"))).alias("uncovered"),
    )


def published_row_counts_suite(tables, min_ratio: float = 0.5, max_ratio: float = 2.0) -> list:
    """Runs on `published_row_counts_frame`: rows per table against the previous published week."""
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(column=f"{t}_row_ratio", min_value=min_ratio, max_value=max_ratio) for t in tables
    ]


def published_row_counts_frame(current: dict, previous: dict):
    """One-row pandas frame: `<table>_row_ratio` = rows now / rows in the previous manifest."""
    import pandas as pd

    return pd.DataFrame(
        [{f"{t}_row_ratio": (n / previous[t]) if previous.get(t) else float("inf") for t, n in current.items()}]
    )
