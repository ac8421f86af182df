"""Every knob of the pipeline, read from the environment in one place.

The variables in the design's configuration table are a contract; the `RECSYS_*` knobs
beyond it have defaults that reproduce the documented behaviour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RAW_DIR = PROJECT_ROOT / "data" / "sample" / "raw"
# The project's Dagster instance: its run queue and concurrency pools hold only for launches that
# share it, so every launcher the project ships defaults DAGSTER_HOME to it (`with_dagster_home`).
PROJECT_DAGSTER_HOME = PROJECT_ROOT / "dagster_home"
DEFAULT_PARTITION_START = "2022-08-01"
DEFAULT_TIMEZONE = "Europe/Berlin"
DEFAULT_PUBLISH_URI = str(PROJECT_ROOT / "data" / "published")


def env_or_default(name: str, default: str) -> str:
    """The environment variable's value, stripped, or `default` when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def _env_float(name: str, default: float) -> float:
    return float(env_or_default(name, str(default)))


def _env_int(name: str, default: int) -> int:
    return int(env_or_default(name, str(default)))


def _absolute_uri(value: str) -> str:
    """Local paths become absolute so Spark, Dagster and MLflow agree whatever their cwd."""
    if "://" in value:
        return value
    path = Path(value)
    return str(path if path.is_absolute() else (PROJECT_ROOT / path).resolve())


@dataclass(frozen=True)
class QualityThresholds:
    max_quarantine_rate: float = 0.01
    # Drift against the previous week: volume ratio bounds and max absolute change in type share.
    min_volume_ratio: float = 0.5
    max_volume_ratio: float = 2.0
    max_type_share_delta: float = 0.05
    # Candidate sources must cover this share of the window's active items (>= 5 events).
    min_source_coverage: float = 0.5
    # ALS factor norms outside this range mean a diverged or collapsed fit.
    min_factor_norm: float = 1e-4
    max_factor_norm: float = 100.0
    # Share of factors at or above min_factor_norm. Items seen once, by sessions that saw little
    # else, legitimately shrink to ~0 (a few percent of a young shop's items); a collapsed fit puts
    # most factors there.
    min_factor_norm_share: float = 0.9

    @classmethod
    def from_env(cls) -> "QualityThresholds":
        return cls(
            max_quarantine_rate=_env_float("RECSYS_MAX_QUARANTINE_RATE", cls.max_quarantine_rate),
            min_volume_ratio=_env_float("RECSYS_DRIFT_MIN_VOLUME_RATIO", cls.min_volume_ratio),
            max_volume_ratio=_env_float("RECSYS_DRIFT_MAX_VOLUME_RATIO", cls.max_volume_ratio),
            max_type_share_delta=_env_float("RECSYS_DRIFT_MAX_TYPE_SHARE_DELTA", cls.max_type_share_delta),
            min_source_coverage=_env_float("RECSYS_MIN_SOURCE_COVERAGE", cls.min_source_coverage),
            min_factor_norm=_env_float("RECSYS_MIN_FACTOR_NORM", cls.min_factor_norm),
            max_factor_norm=_env_float("RECSYS_MAX_FACTOR_NORM", cls.max_factor_norm),
            min_factor_norm_share=_env_float("RECSYS_MIN_FACTOR_NORM_SHARE", cls.min_factor_norm_share),
        )


@dataclass(frozen=True)
class Settings:
    raw_uri: str
    lake_dir: str
    publish_uri: str
    partition_start: str
    timezone: str
    spark_master: str
    mlflow_tracking_uri: str
    aws_endpoint_url: str | None
    history_weeks: int = 4
    training_weeks: int = 4
    max_session_events: int = 500
    # A raw line longer than this is quarantined `line_too_long` without being parsed.
    max_line_bytes: int = 1 << 20
    eval_seed: int = 42
    # More cuts of each evaluation session that the ranker trains on (`split_training_cuts`). Off:
    # on generated shops they moved the out-of-fold score by -0.0036 (50k) and +0.0007 (200k).
    training_cuts: int = 0
    experiment_name: str = "session-recommender"
    registered_model_name: str = "session-recommender"
    # The champion alias moves to a new version unless it scores below the champion minus this.
    champion_tolerance: float = 0.002
    # A failed audit's staged week is kept this long for inspection, then the next publication of
    # the week removes it; younger staging (another run's, mid-audit) is never touched.
    staging_max_age_hours: float = 24.0
    quality: QualityThresholds = field(default_factory=QualityThresholds)

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            raw_uri=_absolute_uri(env_or_default("RECSYS_RAW_URI", str(SAMPLE_RAW_DIR))),
            lake_dir=_absolute_uri(env_or_default("RECSYS_LAKE_DIR", "data/lake")),
            publish_uri=_absolute_uri(env_or_default("RECSYS_PUBLISH_URI", DEFAULT_PUBLISH_URI)),
            partition_start=env_or_default("RECSYS_PARTITION_START", DEFAULT_PARTITION_START),
            timezone=env_or_default("RECSYS_TIMEZONE", DEFAULT_TIMEZONE),
            spark_master=env_or_default("SPARK_MASTER", "local[*]"),
            mlflow_tracking_uri=env_or_default(
                "MLFLOW_TRACKING_URI", f"sqlite:///{PROJECT_ROOT / 'data' / 'mlflow' / 'mlflow.db'}"
            ),
            aws_endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            history_weeks=_env_int("RECSYS_HISTORY_WEEKS", 4),
            training_weeks=_env_int("RECSYS_TRAINING_WEEKS", 4),
            max_session_events=_env_int("RECSYS_MAX_SESSION_EVENTS", 500),
            max_line_bytes=_env_int("RECSYS_MAX_LINE_BYTES", cls.max_line_bytes),
            eval_seed=_env_int("RECSYS_EVAL_SEED", 42),
            training_cuts=_env_int("RECSYS_TRAINING_CUTS", cls.training_cuts),
            experiment_name=env_or_default("RECSYS_MLFLOW_EXPERIMENT", "session-recommender"),
            registered_model_name=env_or_default("RECSYS_MODEL_NAME", "session-recommender"),
            champion_tolerance=_env_float("RECSYS_CHAMPION_TOLERANCE", 0.002),
            staging_max_age_hours=_env_float("RECSYS_STAGING_MAX_AGE_HOURS", cls.staging_max_age_hours),
            quality=QualityThresholds.from_env(),
        )


def with_dagster_home(environ: dict[str, str]) -> dict[str, str]:
    """`environ` with DAGSTER_HOME defaulted to the project's instance (PROJECT_DAGSTER_HOME): without
    it Dagster's CLI runs on a throwaway instance, where the project's pools do not hold."""
    return {**environ, "DAGSTER_HOME": environ.get("DAGSTER_HOME") or str(PROJECT_DAGSTER_HOME)}

