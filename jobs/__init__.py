"""Asset jobs, the weekly schedule and sensors."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from assets.partitions import weekly_partitions

# In-process: every step shares the run's one SparkSession instead of starting a JVM per step.
weekly_recommender_job = define_asset_job(
    name="weekly_recommender",
    selection=AssetSelection.all(),
    partitions_def=weekly_partitions,
    executor_def=in_process_executor,
    description="Every stage for one week, from raw JSONL to the lake, gated by blocking checks.",
)
