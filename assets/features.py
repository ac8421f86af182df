"""`features`: label-free features for every candidate row of W's evaluation sessions, and item statistics."""

from dagster import (
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.partitions import previous_week, weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report
from pipelines.candidates import CANDIDATE_CONFIG
from pipelines.evaluation import warm_up_week_reason
from pipelines.features import (
    FEATURE_CODE_VERSION,
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    TRAINING_FEATURES_TABLE,
    features_validation_frame,
)
from pipelines.stages.features import materialize_features_week
from pipelines.quality import features_suite, validate
from resources import LakeResource, PipelineConfigResource, SparkResource

FEATURES_CONTRACT_CHECK = "features_contract"
FEATURES_CHECKS = AuditedChecks("features", {
    FEATURES_CONTRACT_CHECK: "GE: exactly one feature row per candidate, every feature finite or missing, session features present.",
})


@asset(
    pool=SPARK_POOL,
    code_version=FEATURE_CODE_VERSION,
    deps=["candidates", AssetDep("top_sellers", partition_mapping=previous_week)],
    partitions_def=weekly_partitions,
    group_name="ranking",
    kinds={"spark", "parquet"},
    check_specs=FEATURES_CHECKS.specs,
    description=(
        "Per candidate row: candidate (source scores and ranks, hand-rule rank), session (length, duration, counts), "
        "item (week W-1's `item_stats`: popularity by type over its window and its last week, trend, conversion) and "
        "session x item (interactions, recency, co-visitation weights per matrix, ALS similarity) features. Never "
        "reads a label, nor any event of W outside the visible prefixes. `training_features`: the same rows for "
        "the week's training cuts (buy types), built from the same sources."
    ),
)
def features(
    context: AssetExecutionContext, spark: SparkResource, lake: LakeResource, pipeline_config: PipelineConfigResource
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    sources_week = pipeline_config.sources_week(context.partition_key)
    if sources_week is None:
        return FEATURES_CHECKS.warm_up(context, audited, warm_up_week_reason(week), metadata={"week": week.key})
    summary = materialize_features_week(spark.session, audited, week, sources_week, CANDIDATE_CONFIG)
    return FEATURES_CHECKS.audit(
        context, audited, spark=spark, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "sources_week": sources_week.key,
            "dagster/partition_row_count": summary.rows,
            "rows_per_type": MetadataValue.json(summary.rows_per_type),
            "training_cut_rows": summary.training_cut_rows,
            "training_cut_queries": summary.training_cut_queries,
            "feature_columns": MetadataValue.json(FEATURE_COLUMNS),
            "n_features": len(FEATURE_COLUMNS),
            "seconds": round(summary.seconds, 1),
            "path": MetadataValue.path(str(lake.lake.partition_dir(FEATURES_TABLE, week))),
        },
    )


@FEATURES_CHECKS.implements(FEATURES_CONTRACT_CHECK)
def features_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    # The evaluation rows, then the training cuts' rows: the first table that fails is reported.
    expected_rows = {FEATURES_TABLE: lake.lake.read_stats(FEATURES_TABLE, week)["candidate_rows"]}
    if lake.lake.has_partition(TRAINING_FEATURES_TABLE, week):
        expected_rows[TRAINING_FEATURES_TABLE] = lake.lake.read_stats(TRAINING_FEATURES_TABLE, week)["rows"]
    for table, rows in expected_rows.items():
        summary = features_validation_frame(lake.lake.read_partition(spark.session, table, week))
        report = validate(summary, FEATURES_CONTRACT_CHECK, features_suite(rows))
        if not report.success:
            break
    return check_result_from_report(report, week=week.key, table=table, expected_rows=rows,
                                    **summary.iloc[0].to_dict())
