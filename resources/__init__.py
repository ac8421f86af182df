"""Dagster resources, and the one place that picks them for the current environment."""

from __future__ import annotations

import os

from dagster import ConfigurableResource, InitResourceContext
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from pipelines.config import QualityThresholds, Settings
from pipelines.lake import Lake
from pipelines.spark import build_spark_session
from pipelines.weeks import Week


class SparkResource(ConfigurableResource):
    """One SparkSession per run, created on first use and stopped when the run's resources are torn down.

    A session that already existed (a test fixture, a notebook) is reused and left running.
    """

    master: str = "local[*]"
    conf: dict[str, str] = {}

    _session = PrivateAttr(default=None)
    _owns_session: bool = PrivateAttr(default=False)

    @property
    def session(self):
        if self._session is None:
            from pyspark.sql import SparkSession

            existing = SparkSession.getActiveSession()
            if existing is not None:
                self._session = existing
            else:
                self._session = build_spark_session(self.master, self.conf)
                self._owns_session = True
        return self._session

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._owns_session and self._session is not None:
            self._session.stop()
        self._session = None
        self._owns_session = False


class LakeResource(ConfigurableResource):
    """The Parquet lake of intermediate assets (`RECSYS_LAKE_DIR`)."""

    root: str

    @property
    def lake(self) -> Lake:
        return Lake(self.root)


class PipelineConfigResource(ConfigurableResource):
    """Pipeline knobs that are not connections: where raw data lands and the quality bounds."""

    raw_uri: str
    timezone: str
    partition_start: str
    history_weeks: int = 4
    max_session_events: int = 500
    max_quarantine_rate: float = QualityThresholds.max_quarantine_rate
    drift_min_volume_ratio: float = QualityThresholds.min_volume_ratio
    drift_max_volume_ratio: float = QualityThresholds.max_volume_ratio
    drift_max_type_share_delta: float = QualityThresholds.max_type_share_delta

    def week(self, partition_key: str) -> Week:
        return Week.parse(partition_key, self.timezone)

    def history_window(self, partition_key: str) -> list[Week]:
        return self.week(partition_key).window(self.history_weeks, first=Week.parse(self.partition_start, self.timezone))

    @property
    def quality(self) -> QualityThresholds:
        return QualityThresholds(
            max_quarantine_rate=self.max_quarantine_rate,
            min_volume_ratio=self.drift_min_volume_ratio,
            max_volume_ratio=self.drift_max_volume_ratio,
            max_type_share_delta=self.drift_max_type_share_delta,
        )


def s3_resource(settings: Settings) -> S3Resource:
    if settings.aws_endpoint_url:
        # S3-compatible servers (MinIO, moto) reject the checksums newer botocore sends by default.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    # Region defaults to us-east-1: S3-compatible servers expect it.
    return S3Resource(
        endpoint_url=settings.aws_endpoint_url,
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )


def build_resources(settings: Settings | None = None) -> dict[str, object]:
    """Resources for the environment described by `settings` (default: the process environment)."""
    settings = settings or Settings.from_env()
    quality = settings.quality
    return {
        "spark": SparkResource(master=settings.spark_master),
        "lake": LakeResource(root=settings.lake_dir),
        "s3": s3_resource(settings),
        "pipeline_config": PipelineConfigResource(
            raw_uri=settings.raw_uri,
            timezone=settings.timezone,
            partition_start=settings.partition_start,
            history_weeks=settings.history_weeks,
            max_session_events=settings.max_session_events,
            max_quarantine_rate=quality.max_quarantine_rate,
            drift_min_volume_ratio=quality.min_volume_ratio,
            drift_max_volume_ratio=quality.max_volume_ratio,
            drift_max_type_share_delta=quality.max_type_share_delta,
        ),
    }
