"""The second week of the end-to-end shop on a standalone Spark cluster, run beside the e2e suite.

`tests/e2e/test_spark_cluster.py` compares what this run wrote with the e2e backfill's lake. The
run needs the backfill's first week only (its features are what the second week's ranker trains
on beside its own), so `e2e_stack` starts it as soon as that week's run succeeded, when the
session holds a `cluster` test: the cluster's week then overlaps the backfill's second week and
the other e2e tests instead of following them.

One master and two single-core workers on loopback, and a driver in a process of its own (Spark
allows one SparkContext per process and the suite's `spark` fixture holds this one):
`tests/spark_stages.py`, configured like the code location through `SPARK_MASTER` and the
`RECSYS_*` variables, with another shuffle partitioning than local mode's and every check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import ManagedProcess, free_port, managed_process

REPO_ROOT = Path(__file__).resolve().parents[2]
# Generous (the 2-core CI machine runs the e2e backfill beside it; alone the run takes about four
# minutes) and, with the backfill's own bound, below the heavy tests' timeout (tests/conftest.py).
PIPELINE_TIMEOUT = 900
WORKER_CORES, WORKERS = 1, 2


def spark_class() -> Path:
    import pyspark

    script = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not script.exists():
        raise RuntimeError(f"pyspark has no launcher script at {script}: reinstall pyspark from the wheel")
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


def cluster_env(root: Path) -> dict[str, str]:
    """Environment of the daemons and the cluster driver: loopback only, this venv's Python on executors,
    none of the e2e servers' or the test session's RECSYS_/SPARK_ settings."""
    if "JAVA_HOME" not in os.environ and shutil.which("java") is None:
        raise RuntimeError("no java on the PATH and JAVA_HOME unset: install Java 17")
    conf_dir = root / "spark-conf"  # empty: no spark-defaults.conf of the machine leaks in
    local_dirs = root / "spark-local"
    conf_dir.mkdir(parents=True, exist_ok=True)
    local_dirs.mkdir(exist_ok=True)
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("RECSYS_", "SPARK_"))}
    return {
        **inherited,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_LOCAL_DIRS": str(local_dirs),
        "SPARK_DAEMON_MEMORY": "256m",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "GX_ANALYTICS_ENABLED": "False",
        "DAGSTER_TELEMETRY_DISABLED": "1",
    }


def seed_with_week(reference_lake: Path, lake: Path, week: str) -> list[str]:
    """Copy every table's `week` partition of the reference lake into `lake`; returns the tables copied."""
    folder = f"week={week}"
    copied = []
    for partition in sorted(reference_lake.glob(f"*/{folder}")):
        if (partition / "_SUCCESS").exists():
            shutil.copytree(partition, lake / partition.parent.name / folder)
            copied.append(partition.parent.name)
    return copied


@dataclass
class ClusterRun:
    """One week of every asset on the cluster; `wait` returns the driver's result file."""

    root: Path
    raw_dir: Path
    partition_start: str
    week: str
    lake: Path = field(init=False)
    mlflow_db: Path = field(init=False)
    published: Path = field(init=False)
    result_file: Path = field(init=False)
    master_url: str = ""
    master_ui: int = 0
    seeded_tables: list[str] = field(default_factory=list)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = 0.0

    def __post_init__(self):
        self.lake, self.mlflow_db = self.root / "lake-cluster", self.root / "mlflow-cluster.db"
        self.published, self.result_file = self.root / "published-cluster", self.root / "cluster.json"

    @property
    def driver(self) -> ManagedProcess:
        return self.processes["cluster driver"]

    def driver_args(self) -> list[str]:
        """`tests/spark_stages.py` for the week, with Spark settings passed as run config of the `spark` resource."""
        spark_conf = {
            # Another partitioning than local mode's: results must not depend on it.
            "spark.sql.shuffle.partitions": "3",
            "spark.executor.memory": "768m",
            # One core on each of the two workers: tasks, shuffles and broadcasts cross executors.
            "spark.cores.max": str(WORKER_CORES * WORKERS),
            "spark.ui.enabled": "false",
        }
        args = [sys.executable, "-m", "tests.spark_stages", "--graph-weeks", self.week, "--result", str(self.result_file)]
        for key, value in spark_conf.items():
            args += ["--spark-conf", f"{key}={value}"]
        return args

    def driver_env(self, env: dict[str, str]) -> dict[str, str]:
        """Configured like the code location: `SPARK_MASTER` and the `RECSYS_*` variables."""
        return {
            **env,
            "SPARK_MASTER": self.master_url,
            "RECSYS_RAW_URI": str(self.raw_dir),
            "RECSYS_LAKE_DIR": str(self.lake),
            "RECSYS_PARTITION_START": self.partition_start,
            "RECSYS_PUBLISH_URI": str(self.published),
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.mlflow_db}",
        }

    def start(self, reference_lake: Path, exits: ExitStack) -> None:
        """Seed the lake with the reference's weeks before `week`, start master and workers, wait for
        them, and start the driver without waiting for it; `exits` stops every process."""
        from pipelines.weeks import Week

        self.started = time.monotonic()
        before = Week.parse(self.week, "UTC").shift(-1).key
        self.seeded_tables = seed_with_week(reference_lake, self.lake, before)
        env = cluster_env(self.root)
        launcher = str(spark_class())
        master_port, self.master_ui = free_port(), free_port()
        self.master_url = f"spark://127.0.0.1:{master_port}"

        def start(name: str, args: list[str], **kwargs) -> ManagedProcess:
            process = exits.enter_context(managed_process(args, self.root / f"{name.replace(' ', '-')}.log", name=name,
                                                          **kwargs))
            self.processes[name] = process
            return process

        master = start("spark master", [launcher, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                        "--port", str(master_port), "--webui-port", str(self.master_ui)], env=env)
        master.wait_ready(lambda: master_up(self.master_ui), timeout=90)
        for number in range(1, WORKERS + 1):
            start(f"spark worker {number}", [
                launcher, "org.apache.spark.deploy.worker.Worker", self.master_url, "--host", "127.0.0.1",
                "--cores", str(WORKER_CORES), "--memory", "1g", "--webui-port", str(free_port()),
                "--work-dir", str(self.root / f"spark-work-{number}")], env=env)
        master.wait_ready(lambda: alive_workers(self.master_ui) == WORKERS, timeout=90)
        self.timings["cluster_start"] = time.monotonic() - self.started
        start("cluster driver", self.driver_args(), env=self.driver_env(env), cwd=REPO_ROOT)

    def wait(self) -> dict:
        """The driver's result (`{"spark_master", "runs"}`) once it exited; raises with its log's tail
        when it failed, wrote nothing or ran past PIPELINE_TIMEOUT since the cluster started."""
        try:
            returncode = self.driver.popen.wait(timeout=max(1.0, PIPELINE_TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the cluster run did not finish in {PIPELINE_TIMEOUT}s:\n{self.driver.log_tail(60)}")
        self.timings.setdefault("cluster_run", time.monotonic() - self.started - self.timings["cluster_start"])
        if not self.result_file.exists():
            raise RuntimeError(f"the cluster run exited with {returncode} before writing results:\n{self.driver.log_tail(60)}")
        result = json.loads(self.result_file.read_text())
        result["returncode"] = returncode
        return result

    def assert_running(self) -> None:
        for name, process in self.processes.items():
            if name != "cluster driver":
                process.assert_running()
