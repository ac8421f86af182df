"""`features`: label-free features for every candidate row of W's evaluation sessions, and item statistics."""

import time

from dagster import (
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.candidates import candidates
from assets.events import events
from assets.partitions import training_weeks_before, weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report
from pipelines.candidates import CANDIDATES_TABLE
from pipelines.evaluation import EVAL_SESSIONS_TABLE, training_events
from pipelines.features import (
    FEATURE_CODE_VERSION,
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    ITEM_STATS_TABLE,
    add_features,
    build_item_stats,
    features_validation_frame,
)
from pipelines.quality import features_suite, validate
from resources import LakeResource, PipelineConfigResource, SparkResource

FEATURES_CONTRACT_CHECK = "features_contract"
FEATURES_CHECKS = AuditedChecks("features", {
    FEATURES_CONTRACT_CHECK: "GE: exactly one feature row per candidate, every feature finite or missing, session features present.",
})


@asset(
    pool=SPARK_POOL,
    code_version=FEATURE_CODE_VERSION,
    deps=[candidates, AssetDep(events, partition_mapping=training_weeks_before)],
    partitions_def=weekly_partitions,
    group_name="ranking",
    kinds={"spark", "parquet"},
    check_specs=FEATURES_CHECKS.specs,
    description=(
        "Per candidate row: candidate (source scores and ranks, hand-rule rank), session (length, duration, counts), "
        "item (popularity by type over the window and its last week, trend, conversion) and session x item "
        "(interactions, recency, co-visitation weights per matrix, ALS similarity) features. Never reads a label. "
        "Also writes `item_stats`, which the served model bundles."
    ),
)
def features(
    context: AssetExecutionContext, spark: SparkResource, lake: LakeResource, pipeline_config: PipelineConfigResource
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    weeks_before = pipeline_config.training_weeks_before(context.partition_key)
    started = time.perf_counter()
    eval_sessions = audited.read_partition(spark.session, EVAL_SESSIONS_TABLE, week)
    train = training_events(spark.session, audited, weeks_before, eval_sessions)
    audited.write_partition(build_item_stats(train, week.start_ms), ITEM_STATS_TABLE, week)

    candidate_rows = audited.read_partition(spark.session, CANDIDATES_TABLE, week)
    table = add_features(candidate_rows, eval_sessions.select("session", "prefix"),
                         audited.read_partition(spark.session, ITEM_STATS_TABLE, week))
    audited.write_partition(
        table, FEATURES_TABLE, week,
        stats=lambda written: {"rows": written.count(), "candidate_rows": candidate_rows.count(),
                               "rows_per_type": {r["type"]: r["count"] for r in written.groupBy("type").count().collect()}},
    )
    stats = audited.read_stats(FEATURES_TABLE, week)
    return FEATURES_CHECKS.audit(
        context, audited, spark=spark, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "dagster/row_count": stats["rows"],
            "rows_per_type": MetadataValue.json(stats["rows_per_type"]),
            "feature_columns": MetadataValue.json(FEATURE_COLUMNS),
            "n_features": len(FEATURE_COLUMNS),
            "seconds": round(time.perf_counter() - started, 1),
            "path": MetadataValue.path(str(lake.lake.partition_dir(FEATURES_TABLE, week))),
        },
    )


@FEATURES_CHECKS.implements(FEATURES_CONTRACT_CHECK)
def features_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    stats = lake.lake.read_stats(FEATURES_TABLE, week)
    summary = features_validation_frame(lake.lake.read_partition(spark.session, FEATURES_TABLE, week))
    report = validate(summary, FEATURES_CONTRACT_CHECK, features_suite(stats["candidate_rows"]))
    return check_result_from_report(report, week=week.key, candidate_rows=stats["candidate_rows"],
                                    **summary.iloc[0].to_dict())
