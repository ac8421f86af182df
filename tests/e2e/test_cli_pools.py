"""Two weeks materialized at once through the documented CLI take turns on Spark.

`recsys materialize` runs `dagster asset materialize` on the project's instance, which bypasses
the run queue; the `spark` pool (limit 1, op granularity, dagster_home/dagster.yaml) is what
keeps the two runs' Spark steps apart. The runs' event logs show it: each run's Spark steps run
only while the other's do not. They also show that a run of several assets (the implicit asset
job, as "Materialize selected" runs it) executes every step in one process, so one Spark driver.
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
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

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
    selections = {WEEKS[0]: "events", WEEKS[1]: "events,sessions"}
    launches = [
        subprocess.Popen([sys.executable, "-m", "pipelines", "materialize", "--select", selections[week],
                          "--partition", week],
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
        intervals, processes = [], {}
        for run in runs:
            week = run.tags["dagster/partition"]
            records = [r.event_log_entry for r in instance.get_records_for_run(run.run_id, limit=10_000).records]
            steps = {}
            for entry in records:
                event = entry.dagster_event
                if event is not None and event.event_type in (DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS):
                    steps.setdefault(entry.step_key, {})[event.event_type] = entry.timestamp
                    processes.setdefault(week, set()).add(event.pid)
            assert sorted(steps) == sorted(selections[week].split(",")), steps
            intervals += [(times[DagsterEventType.STEP_START], times[DagsterEventType.STEP_SUCCESS], week)
                          for times in steps.values()]
    intervals.sort()
    for (_, end, week), (start, _, next_week) in zip(intervals, intervals[1:]):
        assert week == next_week or end <= start, f"Spark steps of two runs overlapped: {intervals}"
    assert all(len(pids) == 1 for pids in processes.values()), f"steps ran in several processes: {processes}"
