"""Two weeks materialized at once through the documented CLI take turns on Spark.

`recsys materialize` runs `dagster asset materialize` on the project's instance, which bypasses
the run queue; the `spark` pool (limit 1, op granularity, dagster_home/dagster.yaml) is what
keeps the two runs' Spark steps apart. The runs' event logs show it: each run's `events` step
starts only after the other's has ended.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from pipelines.config import PROJECT_DAGSTER_HOME
from tests.e2e.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

WEEKS = ("2022-08-01", "2022-08-08")


def test_cli_materializations_started_together_run_their_spark_steps_one_at_a_time(tmp_path):
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, EventRecordsFilter

    raw = tmp_path / "raw"
    subprocess.run([sys.executable, "-m", "pipelines", "generate", "--sessions", "400", "--weeks", "2",
                    "--start", WEEKS[0], "--seed", "3", "--out", str(raw)], check=True, cwd=REPO_ROOT, timeout=300)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DAGSTER_HOME / "dagster.yaml", home / "dagster.yaml")
    subprocess.run([sys.executable, "-m", "dagster", "instance", "migrate"], check=True, cwd=REPO_ROOT, timeout=300,
                   env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_RAW_URI": str(raw), "RECSYS_LAKE_DIR": str(tmp_path / "lake"),
           "RECSYS_PUBLISH_URI": str(tmp_path / "published"), "RECSYS_PARTITION_START": WEEKS[0],
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "SPARK_MASTER": "local[1]",
           "RECSYS_SHUFFLE_PARTITIONS": "2", "SPARK_LOCAL_IP": "127.0.0.1"}
    launches = [
        subprocess.Popen([sys.executable, "-m", "pipelines", "materialize", "--select", "events", "--partition", week],
                         cwd=REPO_ROOT, env=env, stdout=(tmp_path / f"{week}.log").open("w"), stderr=subprocess.STDOUT)
        for week in WEEKS
    ]
    deadline = time.monotonic() + 600
    for launch in launches:
        launch.wait(timeout=max(1.0, deadline - time.monotonic()))
    logs = {week: (tmp_path / f"{week}.log").read_text() for week in WEEKS}
    assert all(launch.returncode == 0 for launch in launches), logs
    assert all(f"Dagster instance {home}" in log for log in logs.values())

    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert sorted(run.tags.get("dagster/partition") for run in runs) == list(WEEKS)
        assert all(run.status == DagsterRunStatus.SUCCESS for run in runs)
        intervals = []
        for run in runs:
            def step_time(event_type):
                records = instance.get_event_records(EventRecordsFilter(event_type=event_type), limit=100)
                return [r.event_log_entry.timestamp for r in records
                        if r.event_log_entry.run_id == run.run_id and r.event_log_entry.step_key == "events"]

            (started,), (ended,) = step_time(DagsterEventType.STEP_START), step_time(DagsterEventType.STEP_SUCCESS)
            intervals.append((started, ended))
    (first_start, first_end), (second_start, second_end) = sorted(intervals)
    assert first_end <= second_start, f"the two runs' Spark steps overlapped: {sorted(intervals)}"
