"""Dagster resources, and the one place that picks them for the current environment."""

from __future__ import annotations

import os
from contextlib import contextmanager

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from pipelines.config import DEFAULT_PUBLISH_URI, QualityThresholds, Settings
from pipelines.lake import Lake
from pipelines.publish import MB, PublishConfig, PublishGateThresholds
from pipelines.spark import build_spark_session
from pipelines.weeks import Week


class SparkResource(ConfigurableResource):
    """One SparkSession per run, created on first use and stopped when the run's resources are torn down.

    A session that already existed (a test fixture, a notebook) is reused and left running.
    """

    # None: `SPARK_MASTER` from the environment (default local[*]). Run config that sets only
    # `conf` replaces this resource's whole config, so a master given here would be lost then;
    # reading the environment at session start keeps the deployment's cluster.
    master: str | None = None
    conf: dict[str, str] = {}

    @property
    def resolved_master(self) -> str:
        return self.master or os.environ.get("SPARK_MASTER") or "local[*]"

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
                self._session = build_spark_session(self.resolved_master, self.conf)
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
    staging_max_age_hours: float = Settings.staging_max_age_hours

    @property
    def lake(self) -> Lake:
        return Lake(self.root, staging_max_age_s=self.staging_max_age_hours * 3600.0)


class PipelineConfigResource(ConfigurableResource):
    """Pipeline knobs that are not connections: where raw data lands and the quality bounds."""

    raw_uri: str
    timezone: str
    partition_start: str
    history_weeks: int = 4
    training_weeks: int = 4
    max_session_events: int = 500
    max_line_bytes: int = Settings.max_line_bytes
    eval_seed: int = 42
    training_cuts: int = Settings.training_cuts
    max_quarantine_rate: float = QualityThresholds.max_quarantine_rate
    drift_min_volume_ratio: float = QualityThresholds.min_volume_ratio
    drift_max_volume_ratio: float = QualityThresholds.max_volume_ratio
    drift_max_type_share_delta: float = QualityThresholds.max_type_share_delta
    min_source_coverage: float = QualityThresholds.min_source_coverage
    min_factor_norm: float = QualityThresholds.min_factor_norm
    max_factor_norm: float = QualityThresholds.max_factor_norm
    min_factor_norm_share: float = QualityThresholds.min_factor_norm_share
    publish_uri: str = DEFAULT_PUBLISH_URI

    def week(self, partition_key: str) -> Week:
        return Week.parse(partition_key, self.timezone)

    @property
    def first_week(self) -> Week:
        return Week.parse(self.partition_start, self.timezone)

    def history_window(self, partition_key: str) -> list[Week]:
        return self.week(partition_key).window(self.history_weeks, first=self.first_week)

    def training_window(self, partition_key: str) -> list[Week]:
        """The weeks W's sources are fitted on: every event of the `training_weeks` weeks ending with W."""
        return self.week(partition_key).window(self.training_weeks - 1, first=self.first_week)

    def sources_week(self, partition_key: str) -> Week | None:
        """The week whose sources W's labelled rows are built from (W-1: what its model serves W with);
        None for the first partition, the warm-up week, which fits sources and trains no ranker."""
        previous = self.week(partition_key).shift(-1)
        return previous if previous.monday >= self.first_week.monday else None

    @property
    def quality(self) -> QualityThresholds:
        return QualityThresholds(
            max_quarantine_rate=self.max_quarantine_rate,
            min_volume_ratio=self.drift_min_volume_ratio,
            max_volume_ratio=self.drift_max_volume_ratio,
            max_type_share_delta=self.drift_max_type_share_delta,
            min_source_coverage=self.min_source_coverage,
            min_factor_norm=self.min_factor_norm,
            max_factor_norm=self.max_factor_norm,
            min_factor_norm_share=self.min_factor_norm_share,
        )


class PublishResource(ConfigurableResource):
    """How the weekly tables are published (RECSYS_PUBLISH_*): the gates they must pass and the
    transfer and lease knobs. Settable per run in the launchpad; defaults from the environment."""

    min_list_length: int = PublishGateThresholds.min_list_length
    max_list_length: int = PublishGateThresholds.max_list_length
    min_row_ratio: float = PublishGateThresholds.min_row_ratio
    max_row_ratio: float = PublishGateThresholds.max_row_ratio
    keep_previous: int = PublishConfig.keep_previous
    lease_ttl_seconds: float = PublishConfig.lease_ttl_seconds
    lease_wait_seconds: float = PublishConfig.lease_wait_seconds
    multipart_threshold_mb: float = PublishConfig.multipart_threshold / MB
    multipart_chunksize_mb: float = PublishConfig.multipart_chunksize / MB
    max_concurrency: int = PublishConfig.max_concurrency
    max_attempts: int = PublishConfig.max_attempts
    verify_checksums: bool = PublishConfig.verify_checksums

    @classmethod
    def from_env(cls) -> "PublishResource":
        gates, transfer = PublishGateThresholds.from_env(), PublishConfig.from_env()
        return cls(
            min_list_length=gates.min_list_length, max_list_length=gates.max_list_length,
            min_row_ratio=gates.min_row_ratio, max_row_ratio=gates.max_row_ratio,
            keep_previous=transfer.keep_previous, lease_ttl_seconds=transfer.lease_ttl_seconds,
            lease_wait_seconds=transfer.lease_wait_seconds, multipart_threshold_mb=transfer.multipart_threshold / MB,
            multipart_chunksize_mb=transfer.multipart_chunksize / MB, max_concurrency=transfer.max_concurrency,
            max_attempts=transfer.max_attempts, verify_checksums=transfer.verify_checksums,
        )

    @property
    def gates(self) -> PublishGateThresholds:
        return PublishGateThresholds(min_list_length=self.min_list_length, max_list_length=self.max_list_length,
                                     min_row_ratio=self.min_row_ratio, max_row_ratio=self.max_row_ratio)

    @property
    def transfer(self) -> PublishConfig:
        return PublishConfig(
            keep_previous=self.keep_previous, lease_ttl_seconds=self.lease_ttl_seconds,
            lease_wait_seconds=self.lease_wait_seconds, multipart_threshold=int(self.multipart_threshold_mb * MB),
            multipart_chunksize=int(self.multipart_chunksize_mb * MB), max_concurrency=self.max_concurrency,
            max_attempts=self.max_attempts, verify_checksums=self.verify_checksums,
        )


class MlflowResource(ConfigurableResource):
    """MLflow tracking (`MLFLOW_TRACKING_URI`): one MLflow run per weekly partition and Dagster run."""

    tracking_uri: str
    experiment_name: str = "session-recommender"
    registered_model_name: str = "session-recommender"
    champion_tolerance: float = 0.002

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def load_champion(self):
        from pipelines.model import load_champion

        return load_champion(self.tracking_uri, self.registered_model_name)

    def load_version(self, version: str):
        from pipelines.model import load_version

        return load_version(self.tracking_uri, self.registered_model_name, version)

    def run_id_for(self, context) -> str:
        from pipelines.tracking import week_run_id

        return week_run_id(
            self.tracking_uri, self.experiment_name, context.partition_key, context.run.run_id, context.run.job_name
        )

    @contextmanager
    def week_run(self, context):
        """The active MLflow run of this partition in this Dagster run; `mlflow.log_*` log into it."""
        from pipelines.tracking import active_run

        with active_run(self.tracking_uri, self.run_id_for(context)) as run:
            yield run


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


def deploy_value(name: str, value: str | None):
    """`EnvVar(name)` where the deployment sets the variable to exactly the value the settings
    resolved: the launchpad then shows which variable a value comes from, and each run reads it
    when it starts. Otherwise the value itself (a default, or a relative path the settings made
    absolute). Outside a run, read such a resource through `process_config_and_initialize()`."""
    return EnvVar(name) if value is not None and os.environ.get(name, "").strip() == str(value) else value


def build_resources(settings: Settings | None = None) -> dict[str, object]:
    """Resources for the environment described by `settings` (default: the process environment)."""
    settings = settings or Settings.from_env()
    quality = settings.quality
    return {
        "spark": SparkResource(master=settings.spark_master),
        "lake": LakeResource(root=deploy_value("RECSYS_LAKE_DIR", settings.lake_dir),
                             staging_max_age_hours=settings.staging_max_age_hours),
        "s3": s3_resource(settings),
        "mlflow_tracking": MlflowResource(
            tracking_uri=deploy_value("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
            experiment_name=deploy_value("RECSYS_MLFLOW_EXPERIMENT", settings.experiment_name),
            registered_model_name=deploy_value("RECSYS_MODEL_NAME", settings.registered_model_name),
            champion_tolerance=settings.champion_tolerance,
        ),
        "publish": PublishResource.from_env(),
        "pipeline_config": PipelineConfigResource(
            raw_uri=deploy_value("RECSYS_RAW_URI", settings.raw_uri),
            publish_uri=deploy_value("RECSYS_PUBLISH_URI", settings.publish_uri),
            timezone=settings.timezone,
            partition_start=settings.partition_start,
            history_weeks=settings.history_weeks,
            training_weeks=settings.training_weeks,
            max_session_events=settings.max_session_events,
            max_line_bytes=settings.max_line_bytes,
            eval_seed=settings.eval_seed,
            training_cuts=settings.training_cuts,
            max_quarantine_rate=quality.max_quarantine_rate,
            drift_min_volume_ratio=quality.min_volume_ratio,
            drift_max_volume_ratio=quality.max_volume_ratio,
            drift_max_type_share_delta=quality.max_type_share_delta,
            min_source_coverage=quality.min_source_coverage,
            min_factor_norm=quality.min_factor_norm,
            max_factor_norm=quality.max_factor_norm,
            min_factor_norm_share=quality.min_factor_norm_share,
        ),
    }
