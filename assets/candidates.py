"""`candidates`: the union of every source's proposals for W's evaluation sessions, with the recall report."""

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
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report, table_preview
from pipelines.candidates import (
    CANDIDATE_CONFIG,
    CANDIDATES_TABLE,
    MAX_CANDIDATES_PER_QUERY,
)
from pipelines.stages.candidates import materialize_candidates_week
from pipelines.evaluation import warm_up_week_reason
from pipelines.features import FEATURE_CODE_VERSION
from pipelines.quality import candidates_suite, candidates_validation_frame, validate
from pipelines.tracking import flatten_metrics
from resources import LakeResource, MlflowResource, PipelineConfigResource, SparkResource

CANDIDATES_CONTRACT_CHECK = "candidates_contract"
CANDIDATES_CHECKS = AuditedChecks("candidates", {
    CANDIDATES_CONTRACT_CHECK: "GE: one row per (session, type, aid), known types, every row from a source, < 10,000 per query.",
})


def report_table(report: dict):
    """Recall per source as a table: recall@20 and the candidate ceiling per type."""
    import pandas as pd

    rows = []
    for source, values in report.items():
        rows.append({
            "source": source,
            **{f"{t}@20": round(values.get(f"at20_recall_{t}", values.get(f"recall_{t}", float("nan"))), 4)
               for t in ("clicks", "carts", "orders")},
            **{f"{t} ceiling": round(values.get(f"ceiling_recall_{t}", float("nan")), 4) for t in ("clicks", "carts", "orders")},
            "score@20": round(values.get("at20_score", values.get("score", float("nan"))), 4),
        })
    return table_preview(pd.DataFrame(rows))


@asset(
    pool=SPARK_POOL,
    code_version=FEATURE_CODE_VERSION,
    deps=["eval_split",
          *(AssetDep(source, partition_mapping=previous_week) for source in ("top_sellers", "covisitation", "als"))],
    partitions_def=weekly_partitions,
    group_name="candidates",
    kinds={"spark", "parquet"},
    check_specs=CANDIDATES_CHECKS.specs,
    description=(
        "Per (evaluation session, type) of week W, from week W-1's sources (what W-1's model serves W with; none "
        "in the warm-up week): the union of history, co-visitation, ALS similar-item and top-seller candidates with "
        "each source's score and rank, the hand-rule baseline rank and the session x item features (interactions, "
        "co-visitation and ALS weights summed from the session's items). Metadata: recall@20 and candidate "
        "ceiling per source and combined, and the popularity and hand-rule baselines' OTTO scores."
    ),
)
def candidates(
    context: AssetExecutionContext,
    spark: SparkResource,
    lake: LakeResource,
    mlflow_tracking: MlflowResource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    import mlflow

    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    sources_week = pipeline_config.sources_week(context.partition_key)
    if sources_week is None:
        return CANDIDATES_CHECKS.warm_up(context, audited, warm_up_week_reason(week), metadata={"week": week.key})
    summary = materialize_candidates_week(spark.session, audited, week, sources_week, CANDIDATE_CONFIG)
    report = summary.report
    with mlflow_tracking.week_run(context):
        mlflow.log_params({f"candidates.{k}": v for k, v in CANDIDATE_CONFIG.__dict__.items()})
        mlflow.log_metrics(flatten_metrics("recall", report))
        mlflow.log_metrics({
            "baseline_covisitation.score": report["baseline_covisitation"]["score"],
            "baseline_popularity.score": report["baseline_popularity"]["score"],
            "candidates.seconds": summary.seconds,
            "candidates.per_query": summary.per_query,
        })
    return CANDIDATES_CHECKS.audit(
        context, audited, spark=spark, mlflow_tracking=mlflow_tracking, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "sources_week": sources_week.key,
            "dagster/partition_row_count": summary.rows,
            "candidates_per_session_and_type": round(summary.per_query, 1),
            "recall_report": report_table(report),
            "recall": MetadataValue.json(report),
            "baseline_covisitation_score": report["baseline_covisitation"]["score"],
            "baseline_popularity_score": report["baseline_popularity"]["score"],
            "seconds": round(summary.seconds, 1),
            "path": MetadataValue.path(str(lake.lake.partition_dir(CANDIDATES_TABLE, week))),
        },
    )


@CANDIDATES_CHECKS.implements(CANDIDATES_CONTRACT_CHECK)
def candidates_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    summary = candidates_validation_frame(lake.lake.read_partition(spark.session, CANDIDATES_TABLE, week))
    return check_result_from_report(
        validate(summary, CANDIDATES_CONTRACT_CHECK, candidates_suite(MAX_CANDIDATES_PER_QUERY)), week=week.key,
        **summary.iloc[0].to_dict()
    )
