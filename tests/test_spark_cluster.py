"""The Spark stages on a real standalone cluster (one master, two workers) give the same tables as local mode.

One week of tiny generated data goes through events, sessions, eval_split, top_sellers,
covisitation and ALS twice: in this process on the suite's local[2] `spark` fixture, and on
the cluster. Spark allows one SparkContext per process and the fixture holds this one, so
the cluster run is a subprocess (`tests/spark_stages.py`) configured like the code
location, through `SPARK_MASTER` and the `RECSYS_*` variables, with another shuffle
partitioning. The lakes are then compared with pyarrow.

The lake is a local tmp folder, readable by the worker because master, worker and driver
share this machine. On a real cluster it must be a filesystem every node mounts at the same
path (README, "Running on a Spark cluster").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from definitions import build_definitions
from pipelines.generate import generate_raw
from tests.conftest import REPO_ROOT, make_resources
from tests.processes import free_port, managed_process
from tests.spark_stages import FAST_ALS, SOURCE_ASSETS, materialize

pytestmark = pytest.mark.cluster

WEEK = "2022-08-01"
# Tables whose content depends neither on partitioning nor on which executor ran what:
# they must match row for row.
DETERMINISTIC_TABLES = [
    "events", "events_quarantine", "sessions", "eval_sessions", "eval_labels", "top_sellers", "covisitation",
]
# ALS is compared by shape only (see below): table -> key column.
ALS_TABLES = {"als_item_factors": "aid", "als_session_factors": "session", "similar_items": "aid"}
PIPELINE_TIMEOUT = 900  # generous: the 2-core CI machine may be shared; a normal run takes a few minutes


def spark_class() -> Path:
    import pyspark

    script = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not script.exists():
        pytest.fail(f"pyspark has no launcher script at {script}: reinstall pyspark from the wheel")
    return script


def master_state(webui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json", timeout=2) as response:
        return json.load(response)


def master_up(webui_port: int) -> bool:
    try:
        master_state(webui_port)
        return True
    except OSError:
        return False


def alive_workers(webui_port: int) -> int:
    try:
        return sum(1 for worker in master_state(webui_port)["workers"] if worker["state"] == "ALIVE")
    except OSError:
        return 0


def cluster_env(tmp: Path) -> dict[str, str]:
    """Environment of the daemons and the cluster driver: loopback only, this venv's Python on executors."""
    if "JAVA_HOME" not in os.environ and shutil.which("java") is None:
        pytest.fail("no java on the PATH and JAVA_HOME unset: install Java 17")
    conf_dir = tmp / "spark-conf"  # empty: no spark-defaults.conf of the machine leaks in
    local_dirs = tmp / "spark-local"
    conf_dir.mkdir(exist_ok=True)
    local_dirs.mkdir(exist_ok=True)
    return {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_LOCAL_DIRS": str(local_dirs),
        "SPARK_DAEMON_MEMORY": "256m",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "GX_ANALYTICS_ENABLED": "False",
        "DAGSTER_TELEMETRY_DISABLED": "1",
    }


def cluster_driver_args(result_file: Path) -> list[str]:
    """`tests/spark_stages.py` for WEEK, with Spark settings passed as run config of the `spark` resource."""
    spark_conf = {
        # Another partitioning than the local fixture's 2: results must not depend on it.
        "spark.sql.shuffle.partitions": "3",
        "spark.executor.memory": "768m",
        # One core on each of the two workers: tasks, shuffles and broadcasts cross executors.
        "spark.cores.max": "2",
        "spark.ui.enabled": "false",
    }
    args = [sys.executable, "-m", "tests.spark_stages", "--source-weeks", WEEK, "--result", str(result_file)]
    for key, value in spark_conf.items():
        args += ["--spark-conf", f"{key}={value}"]
    return args


def cluster_driver_env(env: dict[str, str], master_url: str, raw_dir: Path, lake_dir: Path, mlflow_db: Path) -> dict:
    """Configured like the code location: `SPARK_MASTER` and the `RECSYS_*` variables."""
    return {
        **env,
        "SPARK_MASTER": master_url,
        "RECSYS_RAW_URI": str(raw_dir),
        "RECSYS_LAKE_DIR": str(lake_dir),
        "RECSYS_PARTITION_START": WEEK,
        "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}",
    }


def assert_all_passed(runs: list[dict], log: str = "", with_checks: bool = True) -> None:
    for run in runs:
        assert run["success"], (run["week"], run["failures"], log)
        assert set(run["materialized"]) == set(SOURCE_ASSETS), run
        if with_checks:
            assert len(run["checks"]) >= 13 and all(run["checks"].values()), run["checks"]


def canonical_rows(lake: Path, table: str) -> list[str]:
    """A week's rows as sorted JSON strings: comparable whatever the files and the row order."""
    folder = lake / table / f"week={WEEK}"
    assert (folder / "_SUCCESS").exists(), f"{folder} was not written"
    return sorted(json.dumps(row, sort_keys=True) for row in pq.read_table(folder).to_pylist())


def test_stages_on_a_standalone_cluster_match_local_mode(spark, tmp_path):
    timings = {}
    raw_dir, local_lake, cluster_lake = tmp_path / "raw", tmp_path / "lake-local", tmp_path / "lake-cluster"
    generate_raw(raw_dir, n_sessions=300, n_weeks=1, start=WEEK, seed=5)

    env = cluster_env(tmp_path)
    master_port, master_ui, worker_ui, second_worker_ui = free_port(), free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    launcher = str(spark_class())
    result_file = tmp_path / "cluster.json"
    began = time.monotonic()
    with managed_process(
        [launcher, "org.apache.spark.deploy.master.Master",
         "--host", "127.0.0.1", "--port", str(master_port), "--webui-port", str(master_ui)],
        tmp_path / "master.log", name="spark master", env=env,
    ) as master:
        master.wait_ready(lambda: master_up(master_ui), timeout=90)
        with managed_process(
            [launcher, "org.apache.spark.deploy.worker.Worker", master_url,
             "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
             "--webui-port", str(worker_ui), "--work-dir", str(tmp_path / "spark-work")],
            tmp_path / "worker.log", name="spark worker", env=env,
        ) as worker, managed_process(
            [launcher, "org.apache.spark.deploy.worker.Worker", master_url,
             "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
             "--webui-port", str(second_worker_ui), "--work-dir", str(tmp_path / "spark-work-2")],
            tmp_path / "worker-2.log", name="second spark worker", env=env,
        ) as second_worker:
            worker.wait_ready(lambda: alive_workers(master_ui) == 2, timeout=90)
            timings["cluster_start"] = time.monotonic() - began
            with managed_process(
                cluster_driver_args(result_file), tmp_path / "cluster-driver.log", name="cluster driver",
                env=cluster_driver_env(env, master_url, raw_dir, cluster_lake, tmp_path / "mlflow-cluster.db"),
                cwd=REPO_ROOT,
            ) as driver:
                # While the cluster works, the same stages run here in local mode on the suite's session,
                # without their checks: this run is only the reference for the tables (the checks run
                # on the cluster).
                local_began = time.monotonic()
                local_definitions = build_definitions(make_resources(
                    str(raw_dir), str(local_lake), partition_start=WEEK,
                    mlflow_uri=f"sqlite:///{tmp_path / 'mlflow-local.db'}",
                ))
                local_runs = materialize(
                    local_definitions, [(WEEK, SOURCE_ASSETS)], {"ops": {"als": {"config": FAST_ALS}}}, with_checks=False
                )
                timings["local_run"] = time.monotonic() - local_began
                assert_all_passed(local_runs, with_checks=False)
                try:
                    returncode = driver.popen.wait(timeout=max(1.0, PIPELINE_TIMEOUT - (time.monotonic() - began)))
                except subprocess.TimeoutExpired:
                    pytest.fail(f"the cluster run did not finish in {PIPELINE_TIMEOUT}s:\n{driver.log_tail(60)}")
                timings["cluster_run"] = time.monotonic() - began - timings["cluster_start"]
            if not result_file.exists():
                pytest.fail(f"the cluster run exited with {returncode} before writing results:\n{driver.log_tail(60)}")
            cluster = json.loads(result_file.read_text())
            assert_all_passed(cluster["runs"], driver.log_tail(60))
            assert returncode == 0, driver.log_tail(60)
            master.assert_running()
            worker.assert_running()
            second_worker.assert_running()
            state = master_state(master_ui)

    # The run was an application of this master that got a core on each worker, and it finished.
    assert cluster["spark_master"] == master_url
    apps = state["completedapps"]
    assert [(app["name"], app["state"]) for app in apps] == [("session-recsys", "FINISHED")], apps
    assert apps[0]["cores"] == 2, apps
    assert not state["activeapps"]

    for table in DETERMINISTIC_TABLES:
        local_rows, cluster_rows = canonical_rows(local_lake, table), canonical_rows(cluster_lake, table)
        assert local_rows == cluster_rows, f"{table} differs between local mode and the cluster"
        assert local_rows or table == "events_quarantine", f"{table} is empty: comparing it proves nothing"

    # ALS is not bitwise reproducible across partitionings (solver blocks and the order of float
    # sums differ), so it is compared by shape: the same items and sessions got finite factors
    # of the configured rank and the same items got similar items; the cluster run passed the
    # ALS checks (factor norms, similar-items contract, coverage).
    for table, key in ALS_TABLES.items():
        local_table = pq.read_table(local_lake / table / f"week={WEEK}")
        cluster_table = pq.read_table(cluster_lake / table / f"week={WEEK}")
        assert local_table.schema == cluster_table.schema, table
        assert local_table.num_rows > 0, table
        assert set(local_table[key].to_pylist()) == set(cluster_table[key].to_pylist()), table
    for table in ("als_item_factors", "als_session_factors"):
        for row in pq.read_table(cluster_lake / table / f"week={WEEK}").to_pylist():
            assert len(row["factors"]) == FAST_ALS["rank"] and all(map(math.isfinite, row["factors"])), table

    print("timings (s):", json.dumps({name: round(seconds, 1) for name, seconds in timings.items()}))
