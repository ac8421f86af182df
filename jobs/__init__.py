"""Asset jobs, the weekly schedule and sensors."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from assets.partitions import weekly_partitions

WEEKLY_JOB_NAME = "weekly_recommender"
INGEST_JOB_NAME = "ingest"

# In-process: every step shares the run's one SparkSession instead of starting a JVM per step.
weekly_recommender_job = define_asset_job(
    name=WEEKLY_JOB_NAME,
    selection=AssetSelection.all(),
    partitions_def=weekly_partitions,
    executor_def=in_process_executor,
    description="Every stage for one week, from raw JSONL to candidates, gated by blocking checks.",
)

# Re-ingest a week (events and sessions with their checks) without retraining anything.
ingest_job = define_asset_job(
    name=INGEST_JOB_NAME,
    selection=AssetSelection.groups("ingest"),
    partitions_def=weekly_partitions,
    executor_def=in_process_executor,
    description="Raw JSONL to `events` and `sessions` for one week, with their checks.",
)
