"""`recommendation_tables` (built and gated in the lake) and `published_recommendations` (uploaded atomically).

Downstream readers follow `_latest.json`: it moves only after every file of the week and its
manifest are uploaded and verified, and only when every gate before it passed.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Backoff,
    Config,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
    asset_check,
)
from dagster_aws.s3 import S3Resource

from assets.partitions import weekly_partitions, weekly_publication_freshness
from assets.pools import PUBLISH_POOL, SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, table_preview
from pipelines.lake import EVENTS_TABLE, SESSIONS_TABLE
from pipelines.publish import (
    GATE_ROW_COUNTS,
    PUBLISHED_TABLES,
    SESSION_RECOMMENDATIONS,
    ModelInfo,
    failed_gates,
    previous_manifest,
    publish_week,
    run_publish_gates,
    s3_client_from_resource,
    verify_manifest,
)
from pipelines.raw import is_s3_uri
from pipelines.recommendations import (
    HAND_RULE_MODEL,
    SUMMARY_TABLE,
    catalogue,
    lake_table,
    model_for_week,
    row_count_warm_up,
)
from pipelines.stages.recommendation_tables import write_recommendation_tables
from pipelines.stages.ranker_week import RANKER_TABLE
from pipelines.tracking import ui_links
from resources import LakeResource, MlflowResource, PipelineConfigResource, PublishResource, SparkResource

PUBLISH_GATES_CHECK = "publish_gates"
MANIFEST_VERIFIED_CHECK = "published_manifest_verified"
RECOMMENDATION_TABLES_CHECKS = AuditedChecks("recommendation_tables", {
    PUBLISH_GATES_CHECK: (
        "GE gates before upload: 1..20 distinct known aids per list with as many scores, descending; top sellers "
        "ranked 1..n per type; every active session has all three lists; rows per table within "
        "RECSYS_PUBLISH_MIN/MAX_ROW_RATIO of the previous published week."
    ),
})


class RecommendationTablesConfig(Config):
    """Which registered version writes the session lists (launchpad: `ops.recommendation_tables.config`)."""

    model_version: str = ""  # "": the champion right after this week's ranker gate; "champion": the current one; or "7"


def model_links(tracking_uri: str, model: dict) -> dict:
    """Links to the MLflow run and model version that wrote the session lists (none for the hand rule)."""
    links = ui_links(tracking_uri, model["mlflow_run_id"] or None, model["name"], model["version"] or None)
    return {key: MetadataValue.url(url) for key, url in links.items()}


def _s3_client(uri: str, s3: S3Resource):
    return s3_client_from_resource(s3) if is_s3_uri(uri) else None


@asset(
    pool=SPARK_POOL,
    deps=["ranker", "top_sellers", "covisitation", "als", "sessions"],
    partitions_def=weekly_partitions,
    group_name="publishing",
    kinds={"spark", "parquet"},
    check_specs=RECOMMENDATION_TABLES_CHECKS.specs,
    description=(
        "The four published tables of week W, staged in the lake: top sellers per type, frequently bought together "
        "(buy2buy), similar items (ALS), all of week W's sources (fitted through the end of W), and the top 20 per "
        "type of every session active in W by the champion's boosters on those sources (the hand rule in the "
        "warm-up week)."
    ),
)
def recommendation_tables(
    context: AssetExecutionContext,
    config: RecommendationTablesConfig,
    spark: SparkResource,
    lake: LakeResource,
    s3: S3Resource,
    mlflow_tracking: MlflowResource,
    publish: PublishResource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    read = lambda table: audited.read_partition(spark.session, table, week)  # noqa: E731
    champion, chosen_as = model_for_week(mlflow_tracking, audited.read_stats(RANKER_TABLE, week), config.model_version)
    if champion is None:
        model = {"name": HAND_RULE_MODEL, "version": "", "mlflow_run_id": "", "trained_for_week": None,
                 "sources_week": week.key, "chosen_as": chosen_as}
    else:
        model = {"name": champion.name, "version": str(champion.version), "mlflow_run_id": champion.run_id,
                 "trained_for_week": champion.bundle.info.get("week"), "sources_week": week.key, "chosen_as": chosen_as}
    context.log.info(f"session recommendations from {model['name']} v{model['version']} with week {week.key}'s "
                     f"sources: {chosen_as}")
    row_counts = write_recommendation_tables(spark.session, audited, week, None if champion is None else champion.bundle, model)
    previews = {name: table_preview(read(lake_table(name)).limit(5).toPandas()) for name in PUBLISHED_TABLES}
    return RECOMMENDATION_TABLES_CHECKS.audit(
        context, audited, spark=spark, s3=s3, publish=publish, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "dagster/partition_row_count": row_counts[SESSION_RECOMMENDATIONS],
            "row_counts": MetadataValue.json(row_counts),
            "model": MetadataValue.json(model),
            **model_links(mlflow_tracking.tracking_uri, model),
            **{f"preview_{name}": preview for name, preview in previews.items()},
        },
    )


@RECOMMENDATION_TABLES_CHECKS.implements(PUBLISH_GATES_CHECK)
def publish_gates(
    context: AssetExecutionContext,
    spark: SparkResource,
    lake: StagedLake,
    s3: S3Resource,
    publish: PublishResource,
    pipeline_config: PipelineConfigResource,
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    read = lambda table: lake.lake.read_partition(spark.session, table, week)  # noqa: E731
    uri = pipeline_config.publish_uri
    previous = previous_manifest(uri, week, _s3_client(uri, s3))
    results = run_publish_gates(
        {name: read(lake_table(name)) for name in PUBLISHED_TABLES},
        catalogue(lake.lake.read_weeks(spark.session, EVENTS_TABLE, pipeline_config.history_window(context.partition_key))),
        read(SESSIONS_TABLE),
        previous,
        publish.gates,
        current_row_counts=lake.lake.read_stats(lake_table(SUMMARY_TABLE), week)["row_counts"],
        warm_up=row_count_warm_up(pipeline_config, week.key, previous["week"] if previous else None),
    )
    failed = failed_gates(results)
    return AssetCheckResult(
        passed=not failed,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(gate.summary() for gate in failed)[:2000] if failed else None,
        metadata={
            "week": week.key,
            "gates": MetadataValue.json({name: gate.summary() for name, gate in results.items()}),
            "failed_expectations": MetadataValue.json(
                {gate.name: gate.report.as_metadata()["failed_expectations"] for gate in failed if gate.report}
            ),
            "row_counts": MetadataValue.json(results[GATE_ROW_COUNTS].details),
        },
    )


@asset(
    pool=PUBLISH_POOL,
    deps=[recommendation_tables],
    partitions_def=weekly_partitions,
    group_name="publishing",
    kinds={"s3"},
    retry_policy=RetryPolicy(max_retries=2, delay=10, backoff=Backoff.EXPONENTIAL),
    freshness_policy=weekly_publication_freshness,
    description=(
        "Uploads W's four tables to RECSYS_PUBLISH_URI (S3 via dagster-aws, or a folder): data files, then the "
        "week's `_manifest.json` (model, run, row counts, sha256 per file), then `_latest.json` last."
    ),
)
def published_recommendations(
    context: AssetExecutionContext, lake: LakeResource, s3: S3Resource, publish: PublishResource,
    mlflow_tracking: MlflowResource, pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    summary = lake.lake.read_stats(lake_table(SUMMARY_TABLE), week)
    model = summary["model"]
    uri = pipeline_config.publish_uri
    result = publish_week(
        {name: lake.lake.partition_dir(lake_table(name), week) for name in PUBLISHED_TABLES},
        week,
        ModelInfo(name=model["name"], version=model["version"], run_id=model["mlflow_run_id"]),
        uri,
        _s3_client(uri, s3),
        dagster_run_id=context.run.run_id,
        config=publish.transfer,
    )
    return MaterializeResult(
        metadata={
            "week": week.key,
            "manifest": MetadataValue.url(result.manifest_uri) if is_s3_uri(uri) else MetadataValue.path(result.manifest_uri),
            "latest_updated": result.latest_updated,
            "latest": result.latest_note,
            "files_uploaded": result.files_uploaded,
            "bytes_uploaded": result.bytes_uploaded,
            "row_counts": MetadataValue.json(result.row_counts),
            "model": MetadataValue.json(model),
            **model_links(mlflow_tracking.tracking_uri, model),
            "stale_objects_deleted": len(result.deleted),
            "cleanup_errors": MetadataValue.json(result.cleanup_errors),
        }
    )


@asset_check(
    asset=published_recommendations,
    name=MANIFEST_VERIFIED_CHECK,
    blocking=True,
    partitions_def=weekly_partitions,
    description="Re-reads W's manifest from the publish target and checks every file's size and sha256.",
)
def published_manifest_verified(
    context: AssetCheckExecutionContext, s3: S3Resource, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    uri = pipeline_config.publish_uri
    report = verify_manifest(uri, week, _s3_client(uri, s3))
    return AssetCheckResult(
        passed=report.ok,
        severity=AssetCheckSeverity.ERROR,
        description=None if report.ok else f"{len(report.mismatches)} published files differ from the manifest",
        metadata={"week": week.key, "verification": MetadataValue.json(report.as_dict()), "files_checked": report.files_checked},
    )
