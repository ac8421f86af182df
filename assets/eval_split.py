"""`eval_split`: week W's evaluation sessions cut into visible prefixes and hidden labels."""

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.partitions import weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report
from pipelines.evaluation import (
    EVAL_LABELS_TABLE,
    EVAL_SESSIONS_TABLE,
    TRAINING_CUTS_TABLE,
)
from pipelines.stages.eval_split import materialize_eval_split_week
from pipelines.quality import eval_split_suite, eval_split_validation_frame, validate
from resources import LakeResource, PipelineConfigResource, SparkResource

EVAL_SPLIT_CONTRACT_CHECK = "eval_split_contract"
EVAL_SPLIT_CHECKS = AuditedChecks("eval_split", {
    EVAL_SPLIT_CONTRACT_CHECK: "GE: one row per evaluation session, non-empty prefix and hidden part, every session has labels.",
})


@asset(
    pool=SPARK_POOL,
    deps=["sessions"],
    partitions_def=weekly_partitions,
    group_name="evaluation",
    kinds={"spark", "parquet"},
    check_specs=EVAL_SPLIT_CHECKS.specs,
    description=(
        "Sessions whose first event is in week W, each cut at a seeded random position as the official "
        "OTTO test set does: `eval_sessions` (visible prefixes) and `eval_labels` (next click, later carts and orders); "
        "`training_cuts`: more cuts of the same sessions followed by a cart or an order, that only the ranker trains on."
    ),
)
def eval_split(
    context: AssetExecutionContext, spark: SparkResource, lake: LakeResource, pipeline_config: PipelineConfigResource
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    summary, training_cuts = materialize_eval_split_week(spark.session, audited, week, pipeline_config.eval_seed,
                                                         pipeline_config.training_cuts)
    return EVAL_SPLIT_CHECKS.audit(
        context, audited, spark=spark, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "seed": pipeline_config.eval_seed,
            "dagster/partition_row_count": summary.eval_sessions,
            "split": MetadataValue.json(summary.as_dict()),
            "training_cuts_per_session": pipeline_config.training_cuts,
            "training_cuts": training_cuts,
            "eval_sessions_path": MetadataValue.path(str(lake.lake.partition_dir(EVAL_SESSIONS_TABLE, week))),
            "eval_labels_path": MetadataValue.path(str(lake.lake.partition_dir(EVAL_LABELS_TABLE, week))),
            "training_cuts_path": MetadataValue.path(str(lake.lake.partition_dir(TRAINING_CUTS_TABLE, week))),
        },
    )


@EVAL_SPLIT_CHECKS.implements(EVAL_SPLIT_CONTRACT_CHECK)
def eval_split_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    frame = eval_split_validation_frame(
        lake.lake.read_partition(spark.session, EVAL_SESSIONS_TABLE, week),
        lake.lake.read_partition(spark.session, EVAL_LABELS_TABLE, week),
    )
    return check_result_from_report(validate(frame, EVAL_SPLIT_CONTRACT_CHECK, eval_split_suite()), week=week.key)
