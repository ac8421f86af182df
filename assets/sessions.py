"""`sessions`: each session active in the week with its ordered history across the window."""


from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetDep,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.partitions import history_window, weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report
from pipelines.lake import SESSIONS_TABLE
from pipelines.quality import drift_frame, drift_suite, sessions_suite, sessions_validation_frame, validate
from pipelines.stages.sessions import materialize_sessions_week
from resources import LakeResource, PipelineConfigResource, SparkResource

SESSIONS_CONTRACT_CHECK = "sessions_contract"
SESSIONS_DRIFT_CHECK = "sessions_drift"
SESSIONS_CHECKS = AuditedChecks("sessions", {
    SESSIONS_CONTRACT_CHECK: (
        "GE: one row per session, non-negative ids, history sorted and within the cap, "
        "type counts consistent, at least one event and the last event inside the week."
    ),
    SESSIONS_DRIFT_CHECK: "GE: number of active sessions within the configured volume bounds of the previous week's.",
})


@asset(
    pool=SPARK_POOL,
    deps=[AssetDep("events", partition_mapping=history_window)],
    partitions_def=weekly_partitions,
    group_name="ingest",
    kinds={"spark", "parquet"},
    check_specs=SESSIONS_CHECKS.specs,
    description=(
        "Every session active in the week: its time-ordered history over the history window "
        "(the week and RECSYS_HISTORY_WEEKS weeks before it), capped to the most recent "
        "RECSYS_MAX_SESSION_EVENTS events, with per-session stats."
    ),
)
def sessions(
    context: AssetExecutionContext, spark: SparkResource, lake: LakeResource, pipeline_config: PipelineConfigResource
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    window = pipeline_config.history_window(context.partition_key)
    summary = materialize_sessions_week(spark.session, audited, week, window, pipeline_config.max_session_events)
    if summary.trimmed_events:
        context.log.warning(
            f"{summary.trimmed_sessions} sessions longer than {pipeline_config.max_session_events} events "
            f"lost {summary.trimmed_events} oldest events to the cap"
        )
    return SESSIONS_CHECKS.audit(
        context, audited, spark=spark, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "history_window": MetadataValue.json([w.key for w in window]),
            "dagster/partition_row_count": summary.sessions,
            "sessions_started_in_week": summary.sessions_started_in_week,
            "history_events": summary.history_events,
            "trimmed_events": summary.trimmed_events,
            "trimmed_sessions": summary.trimmed_sessions,
            "max_history_length": summary.max_history,
            "path": MetadataValue.path(str(lake.lake.partition_dir(SESSIONS_TABLE, week))),
        },
    )


@SESSIONS_CHECKS.implements(SESSIONS_CONTRACT_CHECK)
def sessions_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    frame = sessions_validation_frame(lake.lake.read_partition(spark.session, SESSIONS_TABLE, week))
    report = validate(frame, SESSIONS_CONTRACT_CHECK, sessions_suite(week, pipeline_config.max_session_events))
    return check_result_from_report(report, week=week.key)


@SESSIONS_CHECKS.implements(SESSIONS_DRIFT_CHECK)
def sessions_drift(
    context: AssetExecutionContext, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    previous_week = week.shift(-1)
    current = lake.lake.read_stats(SESSIONS_TABLE, week)
    previous = lake.lake.read_stats(SESSIONS_TABLE, previous_week)
    if previous is None:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.ERROR,
            description=f"no sessions for the previous week {previous_week.key} in the lake: nothing to compare",
            metadata={"week": week.key, "previous_week": previous_week.key, "compared": False},
        )
    frame = drift_frame(current, previous, count_key="sessions")
    report = validate(frame, SESSIONS_DRIFT_CHECK, drift_suite(pipeline_config.quality, []))
    return check_result_from_report(
        report, week=week.key, previous_week=previous_week.key, compared=True, drift=MetadataValue.json(frame.iloc[0].to_dict())
    )
