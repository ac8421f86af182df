"""`covisitation`: clicks, carts-orders and buy2buy co-visitation matrices of the training window."""

from dagster import (
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.partitions import training_window, weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report
from pipelines.covisitation import (
    COVISITATION_CONFIG,
    COVISITATION_TABLE,
    MATRICES,
    validation_frame,
)
from pipelines.stages.covisitation import materialize_covisitation_week
from pipelines.quality import coverage_suite, covisitation_suite, validate
from resources import LakeResource, MlflowResource, PipelineConfigResource, SparkResource

COVISITATION_CONTRACT_CHECK = "covisitation_contract"
COVISITATION_COVERAGE_CHECK = "covisitation_coverage"
COVISITATION_CHECKS = AuditedChecks("covisitation", {
    COVISITATION_CONTRACT_CHECK: "GE: no self pairs, no duplicate neighbours, at most K per item, ranks 1..n, positive finite weights.",
    COVISITATION_COVERAGE_CHECK: (
        "GE: each matrix has neighbours for at least RECSYS_MIN_SOURCE_COVERAGE of the window's active items "
        "(>= 5 events; for buy2buy, >= 5 carts/orders). The derived two-hop list is reported, not checked."
    ),
})


@asset(
    pool=SPARK_POOL,
    deps=[AssetDep("events", partition_mapping=training_window)],
    partitions_def=weekly_partitions,
    group_name="candidate_sources",
    kinds={"spark", "parquet"},
    check_specs=COVISITATION_CHECKS.specs,
    description=(
        "Top-K neighbours per item from three co-visitation matrices fitted once on every event of the training "
        "window ending with W (published for W, served during W+1, behind week W+1's labelled rows): clicks (time-weighted, 24 h), carts-orders (type-weighted, 24 h) and "
        "buy2buy (carts and orders, 14 days) = frequently bought together; plus the clicks matrix's two-hop list."
    ),
)
def covisitation(
    context: AssetExecutionContext,
    spark: SparkResource,
    lake: LakeResource,
    mlflow_tracking: MlflowResource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    import mlflow

    week = pipeline_config.week(context.partition_key)
    window = pipeline_config.training_window(context.partition_key)
    audited = lake.lake.audited(week)
    summary = materialize_covisitation_week(spark.session, audited, week, window, COVISITATION_CONFIG)
    with mlflow_tracking.week_run(context):
        mlflow.log_params({f"covisitation.{k}": v for k, v in COVISITATION_CONFIG.__dict__.items()})
        mlflow.log_metrics({"covisitation.seconds": summary.seconds,
                            **{f"covisitation.rows.{m}": v for m, v in summary.rows.items()},
                            **{f"covisitation.coverage.{m}": v for m, v in summary.coverage.items()}})
    return COVISITATION_CHECKS.audit(
        context, audited, spark=spark, mlflow_tracking=mlflow_tracking, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "training_window": MetadataValue.json([w.key for w in window]),
            "dagster/partition_row_count": sum(summary.rows.values()),
            "rows_per_matrix": MetadataValue.json(summary.rows),
            "items_per_matrix": MetadataValue.json(summary.items),
            "coverage_of_active_items": MetadataValue.json(summary.coverage),
            "seconds": round(summary.seconds, 1),
            "path": MetadataValue.path(str(lake.lake.partition_dir(COVISITATION_TABLE, week))),
        },
    )


@COVISITATION_CHECKS.implements(COVISITATION_CONTRACT_CHECK)
def covisitation_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    frame = validation_frame(lake.lake.read_partition(spark.session, COVISITATION_TABLE, week))
    report = validate(frame, COVISITATION_CONTRACT_CHECK, covisitation_suite(COVISITATION_CONFIG.top_k))
    return check_result_from_report(report, week=week.key)


@COVISITATION_CHECKS.implements(COVISITATION_COVERAGE_CHECK)
def covisitation_coverage(
    context: AssetExecutionContext, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    import pandas as pd

    week = pipeline_config.week(context.partition_key)
    coverage = {m: lake.lake.read_stats(COVISITATION_TABLE, week)["coverage"][m] for m in MATRICES}
    report = validate(
        pd.DataFrame([coverage]), COVISITATION_COVERAGE_CHECK,
        coverage_suite(pipeline_config.min_source_coverage, list(MATRICES)),
    )
    return check_result_from_report(report, week=week.key, coverage=MetadataValue.json(coverage))
