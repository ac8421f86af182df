"""`als`: implicit ALS on session x item confidences: item and session factors, and similar items.

Candidates and the served model use ALS through `similar_items` of a session's history items, so
training and serving score a session the same way (session factors exist only for sessions seen
in the fit).
"""

from pathlib import Path

from dagster import (
    Config,
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
from pipelines.als import (
    ALS_ITEM_FACTORS_TABLE,
    ALS_SESSION_FACTORS_TABLE,
    SIMILAR_ITEMS_TABLE,
    AlsConfig,
    factor_validation_frame,
)
from pipelines.stages.als import materialize_als_week
from pipelines.quality import (
    coverage_suite,
    factors_suite,
    similar_items_suite,
    similar_items_validation_frame,
    validate,
)
from pipelines.tracking import flatten_metrics
from resources import LakeResource, MlflowResource, PipelineConfigResource, SparkResource

ALS_FACTORS_CHECK = "als_factors"
SIMILAR_ITEMS_CHECK = "similar_items_contract"
ALS_COVERAGE_CHECK = "als_coverage"
ALS_CHECKS = AuditedChecks("als", {
    ALS_FACTORS_CHECK: "GE: item and session factors finite, of the configured rank, norms within RECSYS_MIN/MAX_FACTOR_NORM.",
    SIMILAR_ITEMS_CHECK: "GE: similar items have no self pairs or duplicates, at most K per item, cosine in [-1, 1].",
    ALS_COVERAGE_CHECK: "GE: ALS has factors for at least RECSYS_MIN_SOURCE_COVERAGE of the window's active items.",
})


class AlsRunConfig(Config):
    """ALS knobs, editable per run in the launchpad; defaults are the benchmarked ones."""

    rank: int = AlsConfig.rank
    max_iter: int = AlsConfig.max_iter
    reg_param: float = AlsConfig.reg_param
    alpha: float = AlsConfig.alpha
    top_k: int = AlsConfig.top_k
    similarity_blocks: int = AlsConfig.similarity_blocks
    min_session_items: int = AlsConfig.min_session_items
    seed: int = AlsConfig.seed

    def to_als_config(self) -> AlsConfig:
        return AlsConfig(**self.model_dump())


@asset(
    pool=SPARK_POOL,
    deps=[AssetDep("events", partition_mapping=training_window)],
    partitions_def=weekly_partitions,
    group_name="candidate_sources",
    kinds={"spark", "parquet"},
    check_specs=ALS_CHECKS.specs,
    description=(
        "Spark MLlib implicit ALS (default rank 32, 6 iterations) on session x item confidences (clicks 1, carts 6, "
        "orders 3) of every event of the training window ending with W: item and session factors, and the top-K similar items per item "
        "(exact blocked cosine up to 100k items, clustered search above)."
    ),
)
def als(
    context: AssetExecutionContext,
    config: AlsRunConfig,
    spark: SparkResource,
    lake: LakeResource,
    mlflow_tracking: MlflowResource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    import mlflow

    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    window = pipeline_config.training_window(context.partition_key)
    stats = materialize_als_week(spark.session, audited, week, window, config.to_als_config(),
                                 checkpoint_dir=str(Path(lake.root) / "_checkpoints" / "als"))
    coverage = stats["coverage"]["als_items"]

    with mlflow_tracking.week_run(context):
        mlflow.log_params({f"als.{k}": v for k, v in stats["params"].items()})
        mlflow.log_metrics(flatten_metrics("als", {
            "timings": stats["timings"],
            "item_factor_norm": stats["item_factor_norm"],
            "session_factor_norm": stats["session_factor_norm"],
            "n_items": stats["n_items"],
            "n_sessions": stats["n_sessions"],
            "n_ratings": stats["n_ratings"],
            "coverage": coverage,
        }))
    return ALS_CHECKS.audit(
        context, audited, spark=spark, mlflow_tracking=mlflow_tracking, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "training_window": MetadataValue.json([w.key for w in window]),
            "items": stats["n_items"],
            "sessions": stats["n_sessions"],
            "ratings": stats["n_ratings"],
            "timings_seconds": MetadataValue.json(stats["timings"]),
            "item_factor_norm": MetadataValue.json(stats["item_factor_norm"]),
            "session_factor_norm": MetadataValue.json(stats["session_factor_norm"]),
            "coverage_of_active_items": coverage,
            "linear_algebra": MetadataValue.json(stats.get("linear_algebra", {})),
            "similar_items_rows": stats["similar_items_rows"],
            "similar_items_path": MetadataValue.path(str(lake.lake.partition_dir(SIMILAR_ITEMS_TABLE, week))),
        },
    )


@ALS_CHECKS.implements(ALS_FACTORS_CHECK)
def als_factors(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    quality = pipeline_config.quality
    fitted_rank = lake.lake.read_stats(SIMILAR_ITEMS_TABLE, week)["params"]["rank"]
    suite = factors_suite(fitted_rank, quality.min_factor_norm, quality.max_factor_norm, quality.min_factor_norm_share)
    reports = [
        validate(factor_validation_frame(lake.lake.read_partition(spark.session, table, week)), f"{ALS_FACTORS_CHECK}.{table}", suite)
        for table in (ALS_ITEM_FACTORS_TABLE, ALS_SESSION_FACTORS_TABLE)
    ]
    failed = [r for r in reports if not r.success]
    return check_result_from_report(failed[0] if failed else reports[0], week=week.key,
                                    suites_passed=MetadataValue.json({r.suite: r.success for r in reports}))


@ALS_CHECKS.implements(SIMILAR_ITEMS_CHECK)
def similar_items_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    top_k = lake.lake.read_stats(SIMILAR_ITEMS_TABLE, week)["params"]["top_k"]
    frame = similar_items_validation_frame(lake.lake.read_partition(spark.session, SIMILAR_ITEMS_TABLE, week))
    return check_result_from_report(validate(frame, SIMILAR_ITEMS_CHECK, similar_items_suite(top_k)), week=week.key)


@ALS_CHECKS.implements(ALS_COVERAGE_CHECK)
def als_coverage(
    context: AssetExecutionContext, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    import pandas as pd

    week = pipeline_config.week(context.partition_key)
    coverage = lake.lake.read_stats(SIMILAR_ITEMS_TABLE, week)["coverage"]
    report = validate(pd.DataFrame([coverage]), ALS_COVERAGE_CHECK, coverage_suite(pipeline_config.min_source_coverage, ["als_items"]))
    return check_result_from_report(report, week=week.key, coverage=MetadataValue.json(coverage))
