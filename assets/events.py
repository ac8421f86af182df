"""`events`: one week of raw JSONL parsed, validated, deduplicated and quarantined by Spark."""


from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster_aws.s3 import S3Resource

from assets.partitions import weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report
from pipelines.stages.events import materialize_events_week
from pipelines.lake import EVENTS_TABLE, QUARANTINE_TABLE
from pipelines.quality import drift_frame, drift_suite, events_suite, quarantine_suite, validate
from pipelines.raw import RawWeekMissingError, is_s3_uri, staged_raw_week
from resources import LakeResource, PipelineConfigResource, SparkResource

EVENTS_CONTRACT_CHECK = "events_contract"
EVENTS_QUARANTINE_RATE_CHECK = "events_quarantine_rate"
EVENTS_DRIFT_CHECK = "events_drift"
EVENTS_CHECKS = AuditedChecks("events", {
    EVENTS_CONTRACT_CHECK: "GE: schema and types, type domain, ts inside the week, non-negative ids, no duplicates, rows > 0.",
    EVENTS_QUARANTINE_RATE_CHECK: "GE: share of quarantined records at most RECSYS_MAX_QUARANTINE_RATE (default 1%).",
    EVENTS_DRIFT_CHECK: "GE: event volume and type mix within the configured bounds of the previous week's.",
})

raw_jsonl = AssetSpec(
    "raw_jsonl",
    description=(
        "OTTO-format session JSONL in the landing zone: <RECSYS_RAW_URI>/week=YYYY-MM-DD/**/*.{jsonl,json,ndjson}"
        "[.gz|.bz2], any letter case; other files are listed in the `events` metadata as skipped."
    ),
    partitions_def=weekly_partitions,
    group_name="landing",
    kinds={"json"},
)


@asset(
    pool=SPARK_POOL,
    deps=[raw_jsonl],
    partitions_def=weekly_partitions,
    group_name="ingest",
    kinds={"spark", "parquet"},
    check_specs=EVENTS_CHECKS.specs,
    description=(
        "Clean `session, aid, ts, type` events of the week (explicit schema, exact duplicates removed); "
        "rejected lines and events go to the `events_quarantine` table with a reason each."
    ),
)
def events(
    context: AssetExecutionContext,
    spark: SparkResource,
    lake: LakeResource,
    s3: S3Resource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    week = pipeline_config.week(context.partition_key)
    raw_uri = pipeline_config.raw_uri
    s3_client = s3.get_client() if is_s3_uri(raw_uri) else None
    audited = lake.lake.audited(week)
    # This run's own copies of the raw files, removed once the week's events are written.
    try:
        with staged_raw_week(raw_uri, week, Path(lake.root) / "_raw_staging", s3_client=s3_client,
                             max_age_s=lake.lake.staging_max_age_s, max_line_bytes=pipeline_config.max_line_bytes) as raw:
            for unreadable in raw.unreadable:
                context.log.warning(
                    f"unreadable raw file {unreadable.source} ({unreadable.bytes} bytes) quarantined: {unreadable.error}")
            for skipped in raw.skipped:
                context.log.warning(f"raw file {skipped.source} skipped: {skipped.reason}")
            summary = materialize_events_week(spark.session, audited, raw, pipeline_config.max_line_bytes)
    except RawWeekMissingError as missing:
        raise Failure(description=str(missing), metadata={"raw_uri": raw_uri, "week": week.key}, allow_retries=False)
    context.log.info(
        f"week {week.key}: {summary.events} events, {summary.quarantined} quarantined "
        f"({summary.quarantine_rate:.4%}), {summary.duplicates_removed} duplicates removed"
    )
    raw_metadata = raw.as_metadata()
    return EVENTS_CHECKS.audit(
        context, audited, spark=spark, pipeline_config=pipeline_config,
        metadata={
            "week": week.key,
            "raw_files": raw_metadata["raw_files"],
            "raw_bytes": raw_metadata["raw_bytes"],
            "unreadable_files": MetadataValue.json(raw_metadata["unreadable_files"]),
            "skipped_files": MetadataValue.json(raw_metadata["skipped_files"]),
            "raw_lines": summary.raw_lines,
            "dagster/partition_row_count": summary.events,
            "events_by_type": MetadataValue.json(summary.events_by_type),
            "sessions": summary.sessions,
            "items": summary.items,
            "duplicates_removed": summary.duplicates_removed,
            "quarantined": summary.quarantined,
            "quarantine_rate": summary.quarantine_rate,
            "quarantine_by_reason": MetadataValue.json(summary.quarantine_by_reason),
            "path": MetadataValue.path(str(lake.lake.partition_dir(EVENTS_TABLE, week))),
            "quarantine_path": MetadataValue.path(str(lake.lake.partition_dir(QUARANTINE_TABLE, week))),
        },
    )


@EVENTS_CHECKS.implements(EVENTS_CONTRACT_CHECK)
def events_contract(
    context: AssetExecutionContext, spark: SparkResource, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    frame = lake.lake.read_partition(spark.session, EVENTS_TABLE, week)
    return check_result_from_report(validate(frame, EVENTS_CONTRACT_CHECK, events_suite(week)), week=week.key)


@EVENTS_CHECKS.implements(EVENTS_QUARANTINE_RATE_CHECK)
def events_quarantine_rate(
    context: AssetExecutionContext, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    import pandas as pd

    week = pipeline_config.week(context.partition_key)
    stats = lake.lake.read_stats(EVENTS_TABLE, week)
    frame = pd.DataFrame([{"records": stats["valid_events"] + stats["quarantined"], "quarantine_rate": stats["quarantine_rate"]}])
    report = validate(frame, EVENTS_QUARANTINE_RATE_CHECK, quarantine_suite(pipeline_config.quality))
    return check_result_from_report(
        report,
        week=week.key,
        quarantine_rate=stats["quarantine_rate"],
        max_quarantine_rate=pipeline_config.max_quarantine_rate,
        quarantine_by_reason=MetadataValue.json(stats["quarantine_by_reason"]),
    )


@EVENTS_CHECKS.implements(EVENTS_DRIFT_CHECK)
def events_drift(
    context: AssetExecutionContext, lake: StagedLake, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    week = pipeline_config.week(context.partition_key)
    current = lake.lake.read_stats(EVENTS_TABLE, week)
    previous_week = week.shift(-1)
    previous = lake.lake.read_stats(EVENTS_TABLE, previous_week)
    if previous is None:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.ERROR,
            description=f"no events for the previous week {previous_week.key} in the lake: nothing to compare",
            metadata={"week": week.key, "previous_week": previous_week.key, "compared": False},
        )
    frame = drift_frame(current, previous, count_key="events", shares_key="type_shares")
    report = validate(frame, EVENTS_DRIFT_CHECK, drift_suite(pipeline_config.quality, [c for c in frame.columns if c.endswith("_share_delta")]))
    return check_result_from_report(
        report,
        week=week.key,
        previous_week=previous_week.key,
        compared=True,
        drift=MetadataValue.json(frame.iloc[0].to_dict()),
    )
