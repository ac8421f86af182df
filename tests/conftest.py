"""Shared fixtures: one small SparkSession for the whole test run, fixture paths, resources."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
OTTO_SAMPLE = SHARED_FIXTURES / "otto_sample_sessions.jsonl"
TIMEZONE = "Europe/Berlin"

# Tests that start servers, clusters or a whole backfill: their own bounded waits (the e2e backfill,
# the cluster run) sum to less than this, so a hang still fails by the timeout with every stack.
HEAVY_MARKERS = ("e2e", "cluster", "postgres")
HEAVY_TEST_TIMEOUT = 2400


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None and any(item.get_closest_marker(m) for m in HEAVY_MARKERS):
            item.add_marker(pytest.mark.timeout(HEAVY_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def otto_sample() -> Path:
    if not OTTO_SAMPLE.exists():
        pytest.fail(f"the shared OTTO fixture is missing: expected {OTTO_SAMPLE} (shared/ beside the checkout)")
    return OTTO_SAMPLE


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipelines.spark import build_spark_session

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = build_spark_session(
        "local[2]",
        {
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
            "spark.sql.adaptive.enabled": "false",
            "spark.local.dir": str(tmp_path_factory.mktemp("spark-local")),
        },
        app_name="session-recsys-tests",
    )
    yield session
    session.stop()


def make_resources(
    raw_uri: str, lake_dir: str, partition_start: str = "2022-08-01", mlflow_uri: str | None = None, **config_overrides
) -> dict:
    """Resources like the code location's, pointed at test folders; Spark reuses the test session."""
    from pipelines.config import Settings
    from resources import LakeResource, MlflowResource, PipelineConfigResource, PublishResource, SparkResource, s3_resource

    settings = Settings.from_env()
    return {
        "spark": SparkResource(master="local[2]"),
        "lake": LakeResource(root=lake_dir),
        "s3": s3_resource(settings),
        "mlflow_tracking": MlflowResource(
            tracking_uri=mlflow_uri or f"sqlite:///{Path(lake_dir).parent / 'mlflow.db'}", experiment_name="tests"
        ),
        "publish": PublishResource(),
        "pipeline_config": PipelineConfigResource(
            raw_uri=raw_uri,
            timezone=TIMEZONE,
            partition_start=partition_start,
            **{"publish_uri": str(Path(lake_dir).parent / "published"), **config_overrides},
        ),
    }
