"""`top_sellers`: recency-weighted bestsellers per event type and trending items of the window."""

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
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report, table_preview
from pipelines.popularity import (
    TOP_SELLERS_CONFIG,
    TOP_SELLERS_TABLE,
    top_sellers_validation_frame,
)
from pipelines.stages.top_sellers import materialize_top_sellers_week
from pipelines.quality import per_type_counts_suite, top_sellers_suite, validate
from resources import LakeResource, MlflowResource, PipelineConfigResource, SparkResource

TOP_SELLERS_CONTRACT_CHECK = "top_sellers_contract"
TOP_SELLERS_PER_TYPE_CHECK = "top_sellers_every_type"
TOP_SELLERS_CHECKS = AuditedChecks("top_sellers", {
    TOP_SELLERS_CONTRACT_CHECK: "GE: known types and lists, ranks within top-N, positive finite scores, no duplicate aid in a list.",
    TOP_SELLERS_PER_TYPE_CHECK: "GE: the popular list is non-empty for clicks, carts and orders (it is every list's fallback).",
})


@asset(
    pool=SPARK_POOL,
    deps=[AssetDep("events", partition_mapping=training_window)],
    partitions_def=weekly_partitions,
    group_name="candidate_sources",
    kinds={"spark", "parquet"},
    check_specs=TOP_SELLERS_CHECKS.specs,
    description=(
        "Recency-weighted popularity per event type (half-life 7 days) and trending items (W against the week "
        "before), and `item_stats` (the ranker's item features), fitted once on every event of the training window "
        "ending with W. Published for W and served during W+1; week W+1's labelled rows are built from them."
    ),
)
def top_sellers(
    context: AssetExecutionContext,
    spark: SparkResource,
    lake: LakeResource,
    mlflow_tracking: MlflowResource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    import mlflow

    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    window = pipeline_config.training_window(context.partition_key)
    summary = materialize_top_sellers_week(spark.session, audited, week, window, TOP_SELLERS_CONFIG)
    with mlflow_tracking.week_run(context):
        mlflow.log_params({f"top_sellers.{k}": v for k, v in TOP_SELLERS_CONFIG.__dict__.items()})
        mlflow.log_params({"training.window": ",".join(w.key for w in window)})
        mlflow.log_metric("top_sellers.seconds", summary.seconds)
    return TOP_SELLERS_CHECKS.audit(
        context, audited, spark=spark, mlflow_tracking=mlflow_tracking, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "training_window": MetadataValue.json([w.key for w in window]),
            "item_stats_items": summary.item_stats_items,
            "popular_per_type": MetadataValue.json(summary.popular_per_type),
            "top5": table_preview(summary.preview),
            "seconds": round(summary.seconds, 1),
            "path": MetadataValue.path(str(lake.lake.partition_dir(TOP_SELLERS_TABLE, week))),
        },
    )


@TOP_SELLERS_CHECKS.implements(TOP_SELLERS_CONTRACT_CHECK)
def top_sellers_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    frame = top_sellers_validation_frame(lake.lake.read_partition(spark.session, TOP_SELLERS_TABLE, week))
    report = validate(frame, TOP_SELLERS_CONTRACT_CHECK, top_sellers_suite(TOP_SELLERS_CONFIG.top_n))
    return check_result_from_report(report, week=week.key)


@TOP_SELLERS_CHECKS.implements(TOP_SELLERS_PER_TYPE_CHECK)
def top_sellers_every_type(
    context: AssetExecutionContext, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    import pandas as pd

    week = pipeline_config.week(context.partition_key)
    per_type = lake.lake.read_stats(TOP_SELLERS_TABLE, week)["popular_per_type"]
    report = validate(pd.DataFrame([per_type]), TOP_SELLERS_PER_TYPE_CHECK, per_type_counts_suite())
    return check_result_from_report(report, week=week.key, popular_per_type=MetadataValue.json(per_type))
