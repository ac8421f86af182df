"""The end-to-end stack, started once per test session and shared by every e2e test.

On free 127.0.0.1 ports: a moto S3 server (the publish bucket), an MLflow tracking server
(SQLite backend), `dagster-webserver` and `dagster-daemon` on a fresh DAGSTER_HOME (a copy of
dagster_home/dagster.yaml: queued runs, one at a time). The data is tiny and generated with
`recsys generate`. One backfill of the weekly job is launched over GraphQL exactly as the UI's
"Materialize → backfill" dialog does, and awaited with a bounded timeout; the tests then check
what it produced (test_end_to_end.py) and look at it through both UIs (test_browser.py).

Every server goes through `tests.processes.managed_process`, so all of them stop when the test
session ends, also on failure; a failing e2e test gets the tail of every server's log (the
daemon's includes the run workers' output) in its report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

from tests.e2e.cluster_run import ClusterRun
from tests.processes import ManagedProcess, free_port, http_ok, managed_process, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SCREENSHOT_DIR = REPO_ROOT / "test-output" / "screenshots"
DOCS_SCREENSHOT_DIR = REPO_ROOT / "docs" / "screenshots"

# Small data (5,000 sessions, seed 11). With rows built from the week before's sources, the second
# week's ranker (one labelled week) keeps the hand rule's order and is not promoted, and the third
# (two labelled weeks) beats the hand rule and becomes the champion (2026-12-07: 0.6169 against
# 0.6148; at 2,500 sessions 0.6097 against 0.6090, too close to count on). Week W's labelled rows
# come from week W-1's sources, so the backfill covers every generated week, oldest first: the first
# is the warm-up week (sources only), the second trains the first model, the third scores it forward.
E2E_SESSIONS = int(os.environ.get("RECSYS_E2E_SESSIONS", "5000"))
E2E_WEEKS = int(os.environ.get("RECSYS_E2E_WEEKS", "3"))
E2E_START = "2022-08-01"
E2E_SEED = int(os.environ.get("RECSYS_E2E_SEED", "11"))
E2E_TIMEZONE = "Europe/Berlin"
PARTITIONS = [date.fromordinal(date.fromisoformat(E2E_START).toordinal() + 7 * i).isoformat() for i in range(E2E_WEEKS)]
# The weeks that train a ranker: all but the warm-up week.
TRAINED_PARTITIONS = PARTITIONS[1:]

JOB_NAME = "weekly_recommender"
LOCATION_NAME = "session_recsys"
EXPERIMENT_NAME = "session-recommender"
MODEL_NAME = "session-recommender"
BUCKET = "recsys-e2e"
PUBLISH_PREFIX = "published"
UI_TAGS = [{"key": "dagster/from_ui", "value": "true"}]  # what the UI adds to everything it launches

STARTUP_TIMEOUT = float(os.environ.get("RECSYS_E2E_STARTUP_TIMEOUT", "300"))
BACKFILL_TIMEOUT = float(os.environ.get("RECSYS_E2E_TIMEOUT", "1200"))  # below HEAVY_TEST_TIMEOUT (tests/conftest.py)
POLL_SECONDS = 5.0
TERMINAL_RUN_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}

# Filled while the stack runs; printed at the end of the test session.
TIMINGS: dict[str, float] = {}
STEP_SECONDS: dict[str, list[float]] = defaultdict(list)


def run_config_for_tiny_data() -> dict:
    """Launchpad run config for every run of the backfill: a small ALS, everything else at its defaults.

    With a few hundred items the default ALS (AlsConfig: rank 32, 6 iterations, 8 similarity blocks) mostly
    measures Spark task overhead. Fields the asset's config no longer has are left out.
    """
    from assets.als import AlsRunConfig

    wanted = {"rank": 8, "max_iter": 4, "similarity_blocks": 2}  # small and fast: the stage logic is the same at the default rank
    fields = set(getattr(AlsRunConfig, "model_fields", {}))
    config = {key: value for key, value in wanted.items() if key in fields}
    return {"ops": {"als": {"config": config}}} if config else {}


class GraphQLError(RuntimeError):
    pass


class DagsterGraphQL:
    """POSTs to the webserver's /graphql endpoint, as the UI does."""

    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 120) -> dict:
        import requests

        response = requests.post(self.url, json={"query": query, "variables": variables or {}}, timeout=timeout)
        if response.status_code != 200:
            raise GraphQLError(f"HTTP {response.status_code} from {self.url}: {response.text[:2000]}")
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(json.dumps(body["errors"], indent=1)[:4000])
        return body["data"]


WORKSPACE_QUERY = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name } }
          ... on PythonError { message stack }
        }
      }
    }
    ... on PythonError { message stack }
  }
}
"""

JOB_ASSETS_QUERY = """
query JobAssets($pipeline: PipelineSelector!) {
  assetNodes(pipeline: $pipeline) {
    assetKey { path }
    groupName
    isMaterializable
    isPartitioned
    jobNames
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name blocking } }
    }
  }
}
"""

# The UI's LAUNCH_PARTITION_BACKFILL_MUTATION (ui-core/src/instance/backfill/BackfillUtils.tsx).
LAUNCH_BACKFILL_MUTATION = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { pipelineName errors { message path reason } }
    ... on PythonError { message stack }
  }
}
"""

BACKFILL_QUERY = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id
      status
      numPartitions
      partitionNames
      error { message stack }
      runs(limit: 100) { runId status startTime endTime tags { key value } }
    }
    ... on PythonError { message stack }
    ... on BackfillNotFoundError { message }
  }
}
"""

RUN_STEPS_QUERY = """
query RunSteps($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status startTime endTime stepStats { stepKey status startTime endTime } }
  }
}
"""

RUN_ERRORS_QUERY = """
query RunErrors($runId: ID!) {
  logsForRun(runId: $runId, limit: 5000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on StepEvent { stepKey }
        ... on ErrorEvent { error { message stack } }
      }
    }
  }
}
"""


@dataclass
class E2EStack:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    partitions: list[str] = field(default_factory=lambda: list(PARTITIONS))
    dagster_url: str = ""
    mlflow_url: str = ""
    s3_endpoint: str = ""
    bucket: str = BUCKET
    publish_prefix: str = PUBLISH_PREFIX
    repository_name: str = ""
    job_assets: list[dict] = field(default_factory=list)
    run_config: dict = field(default_factory=dict)
    backfill_id: str = ""
    backfill: dict = field(default_factory=dict)
    # The cluster's run of the second week (tests/e2e/cluster_run.py), when the session holds a
    # `cluster` test; or why it could not start.
    cluster: ClusterRun | None = None
    cluster_error: str = ""

    @property
    def graphql(self) -> DagsterGraphQL:
        return DagsterGraphQL(f"{self.dagster_url}/graphql")

    @property
    def repository_selector(self) -> dict:
        return {"repositoryLocationName": LOCATION_NAME, "repositoryName": self.repository_name}

    @property
    def runs(self) -> list[dict]:
        return list(self.backfill.get("runs") or [])

    def run_for(self, partition: str) -> dict | None:
        for run in self.runs:
            if tag(run, "dagster/partition") == partition:
                return run
        return None

    @property
    def asset_names(self) -> set[str]:
        return {"/".join(node["assetKey"]["path"]) for node in self.job_assets}

    def has_asset(self, *names: str) -> bool:
        return any(name in self.asset_names for name in names)

    def s3_client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
        )

    def mlflow_client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)

    def log_tails(self, lines: int = 60) -> str:
        parts = []
        for name, process in self.processes.items():
            state = "running" if process.popen.poll() is None else f"exited {process.popen.returncode}"
            parts.append(f"--- {name} ({state}), last {lines} lines of {process.log} ---\n{process.log_tail(lines)}")
        return "\n".join(parts)

    def run_errors(self, run_id: str) -> str:
        """The step and run failures of a run, as the run's event log in the UI shows them."""
        try:
            data = self.graphql(RUN_ERRORS_QUERY, {"runId": run_id})["logsForRun"]
        except Exception as error:  # diagnostics only
            return f"(could not read the event log of {run_id}: {error})"
        lines = []
        for event in data.get("events", []):
            if event.get("error") or event["__typename"] in {"RunFailureEvent", "ExecutionStepFailureEvent"} or (
                event["__typename"] == "AssetCheckEvaluationEvent" and "failed" in (event.get("message") or "")
            ):
                error = event.get("error") or {}
                lines.append(f"[{event['__typename']} {event.get('stepKey') or ''}] {event.get('message') or ''}\n"
                             f"{error.get('message') or ''}{(error.get('stack') or [''])[-1] if error.get('stack') else ''}")
        return "\n".join(lines) or "(no failure events)"


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run.get("tags", []) if t["key"] == key), None)


def server_env(stack: E2EStack) -> dict[str, str]:
    """The environment of the webserver, the daemon and so of every run: only the e2e servers and tmp dirs."""
    inherited = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("RECSYS_", "AWS_", "DAGSTER_", "MLFLOW_", "SPARK_", "PYSPARK_"))
    }
    spark_conf_dir = stack.root / "spark-conf"
    spark_conf_dir.mkdir(exist_ok=True)
    # Read by spark-submit when a run starts its driver; the app's own conf still wins.
    (spark_conf_dir / "spark-defaults.conf").write_text(
        "spark.ui.enabled false\n"
        f"spark.local.dir {stack.root / 'spark-local'}\n"
    )
    return {
        **inherited,
        "PATH": f"{VENV_BIN}{os.pathsep}{inherited.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "DAGSTER_HOME": str(stack.root / "dagster_home"),
        "DAGSTER_TELEMETRY_DISABLED": "1",
        "GX_ANALYTICS_ENABLED": "False",
        "RECSYS_RAW_URI": str(stack.root / "raw"),
        "RECSYS_LAKE_DIR": str(stack.root / "lake"),
        "RECSYS_PUBLISH_URI": f"s3://{BUCKET}/{PUBLISH_PREFIX}",
        "RECSYS_PARTITION_START": E2E_START,
        "RECSYS_TIMEZONE": E2E_TIMEZONE,
        "AWS_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        "MLFLOW_TRACKING_URI": stack.mlflow_url,
        "SPARK_MASTER": "local[2]",
        # Two shuffle partitions for a 2,500-session shop (the default, 4 per core, is sized for real
        # weeks): a week runs about 10% faster; the cluster test runs with 3, so it still compares
        # two partitionings.
        "RECSYS_SHUFFLE_PARTITIONS": "2",
        "SPARK_CONF_DIR": str(spark_conf_dir),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def _timed(name: str, started: float) -> None:
    TIMINGS[name] = time.monotonic() - started


def generate_raw(stack: E2EStack) -> None:
    started = time.monotonic()
    generated = subprocess.run(
        [sys.executable, "-m", "pipelines", "generate", "--sessions", str(E2E_SESSIONS), "--weeks", str(E2E_WEEKS),
         "--start", E2E_START, "--seed", str(E2E_SEED), "--out", str(stack.root / "raw")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    if generated.returncode != 0:
        raise RuntimeError(f"recsys generate failed:\n{generated.stderr[-4000:]}")
    _timed(f"generate data ({E2E_SESSIONS} sessions, {E2E_WEEKS} weeks)", started)


def start_servers(stack: E2EStack, exits: ExitStack) -> None:
    """All four servers start at once; each is then awaited with a bounded timeout."""
    started = time.monotonic()
    ports = {name: free_port() for name in ("s3", "mlflow", "dagster")}
    stack.s3_endpoint = f"http://127.0.0.1:{ports['s3']}"
    stack.mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
    stack.dagster_url = f"http://127.0.0.1:{ports['dagster']}"
    logs = stack.root / "logs"

    dagster_home = stack.root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    (stack.root / "mlflow" / "artifacts").mkdir(parents=True)
    stack.env = env = server_env(stack)
    # Create the instance's SQLite storages once, before two processes race to migrate them
    # (webserver and daemon starting together on an empty DAGSTER_HOME: "more than one head").
    migrated = subprocess.run([str(VENV_BIN / "dagster"), "instance", "migrate"], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    if migrated.returncode != 0:
        raise RuntimeError(f"dagster instance migrate failed:\n{migrated.stdout[-2000:]}\n{migrated.stderr[-4000:]}")

    def start(name: str, args: list[str], **kwargs) -> ManagedProcess:
        process = exits.enter_context(managed_process(args, logs / f"{name}.log", name=name, env=env, **kwargs))
        stack.processes[name] = process
        return process

    s3 = start("moto-s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])])
    mlflow_port = str(ports["mlflow"])
    mlflow = start("mlflow", [
        str(VENV_BIN / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{stack.root / 'mlflow' / 'mlflow.db'}",
        "--default-artifact-root", str(stack.root / "mlflow" / "artifacts"),
        "--host", "127.0.0.1", "--port", mlflow_port, "--workers", "2",
        # MLflow 3 rejects requests whose Host header is not allowed (DNS-rebinding protection).
        "--allowed-hosts", f"127.0.0.1:{mlflow_port},localhost:{mlflow_port},127.0.0.1,localhost",
    ])
    webserver = start("dagster-webserver", [
        str(VENV_BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(ports["dagster"]),
    ], cwd=REPO_ROOT)
    start("dagster-daemon", [str(VENV_BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO_ROOT)

    s3.wait_ready(lambda: http_ok(stack.s3_endpoint), STARTUP_TIMEOUT)
    stack.s3_client().create_bucket(Bucket=BUCKET)
    _timed("start moto S3 + create bucket", started)
    mlflow.wait_ready(lambda: http_ok(f"{stack.mlflow_url}/health"), STARTUP_TIMEOUT)
    _timed("start MLflow server", started)
    webserver.wait_ready(lambda: http_ok(f"{stack.dagster_url}/server_info"), STARTUP_TIMEOUT)
    webserver.wait_ready(lambda: _location_loaded(stack), STARTUP_TIMEOUT)
    _timed("start dagster-webserver + load code location", started)
    stack.processes["dagster-daemon"].assert_running()


def _location_loaded(stack: E2EStack) -> bool:
    try:
        data = stack.graphql(WORKSPACE_QUERY, timeout=10)["workspaceOrError"]
    except Exception:
        return False
    for entry in data.get("locationEntries", []):
        if entry["name"] != LOCATION_NAME or entry["loadStatus"] != "LOADED":
            continue
        location = entry["locationOrLoadError"]
        if location["__typename"] == "PythonError":
            raise RuntimeError(f"the code location failed to load:\n{location['message']}\n{''.join(location['stack'])}")
        stack.repository_name = location["repositories"][0]["name"]
        return True
    return False


def load_job_assets(stack: E2EStack) -> None:
    pipeline = {"pipelineName": JOB_NAME, **stack.repository_selector}
    nodes = stack.graphql(JOB_ASSETS_QUERY, {"pipeline": pipeline})["assetNodes"]
    stack.job_assets = [node for node in nodes if node["isMaterializable"] and JOB_NAME in node["jobNames"]]
    if not stack.job_assets:
        raise RuntimeError(f"the job {JOB_NAME} has no materializable assets: {nodes}")


def launch_backfill(stack: E2EStack) -> None:
    """What the UI sends from the job's "Materialize all → backfill" dialog (LaunchAssetChoosePartitionsDialog)."""
    stack.run_config = run_config_for_tiny_data()
    params = {
        "tags": UI_TAGS,
        "assetSelection": [{"path": node["assetKey"]["path"]} for node in stack.job_assets],
        "partitionNames": stack.partitions,
        "fromFailure": False,
        "selector": {"partitionSetName": f"{JOB_NAME}_partition_set", "repositorySelector": stack.repository_selector},
    }
    if stack.run_config:
        params["runConfigData"] = stack.run_config
    result = stack.graphql(LAUNCH_BACKFILL_MUTATION, {"backfillParams": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise RuntimeError(f"launchPartitionBackfill failed: {json.dumps(result, indent=1)}")
    stack.backfill_id = result["backfillId"]


def wait_for_backfill(stack: E2EStack, on_success: dict[str, Callable[[], None]] | None = None) -> None:
    """Poll until every week's run has finished (or one failed), within BACKFILL_TIMEOUT; `on_success`
    calls, once, what it holds for a week as soon as that week's run succeeded."""
    started = time.monotonic()
    pending = dict(on_success or {})
    progress_log = stack.root / "logs" / "backfill-progress.log"
    last_line = ""

    def finished() -> bool:
        nonlocal last_line
        for name in ("dagster-webserver", "dagster-daemon"):
            stack.processes[name].assert_running()
        try:
            data = stack.graphql(BACKFILL_QUERY, {"backfillId": stack.backfill_id}, timeout=30)["partitionBackfillOrError"]
        except Exception as error:  # noqa: BLE001 - a busy webserver may time out once; the deadline still holds
            with progress_log.open("a") as out:
                out.write(f"{time.monotonic() - started:6.0f}s backfill status not read: {error}\n")
            return False
        if data["__typename"] != "PartitionBackfill":
            raise RuntimeError(f"backfill {stack.backfill_id}: {data}")
        stack.backfill = data
        runs = data["runs"]
        line = (f"{time.monotonic() - started:6.0f}s backfill {data['status']}: "
                + ", ".join(f"{tag(r, 'dagster/partition')}={r['status']}" for r in sorted(runs, key=lambda r: r["startTime"] or 0)))
        if line.split(": ", 1)[1] != last_line.split(": ", 1)[-1]:
            with progress_log.open("a") as out:
                out.write(line + "\n")
            print(line, flush=True)
        last_line = line
        for partition in [p for p in pending if (stack.run_for(p) or {}).get("status") == "SUCCESS"]:
            pending.pop(partition)()
        if data["status"] in {"FAILED", "CANCELED"}:
            return True
        if any(r["status"] in {"FAILURE", "CANCELED"} for r in runs):
            return True  # fail fast: the tests report the failure; later weeks depend on this one
        return (data["status"] != "REQUESTED" and len(runs) >= len(stack.partitions)
                and all(r["status"] in TERMINAL_RUN_STATUSES for r in runs))

    wait_until(finished, BACKFILL_TIMEOUT, f"backfill {stack.backfill_id} of {stack.partitions}",
               interval=POLL_SECONDS, log=progress_log)
    _timed("backfill: launch to last run finished", started)
    record_run_timings(stack)


def record_run_timings(stack: E2EStack) -> None:
    for run in stack.runs:
        partition = tag(run, "dagster/partition")
        if run.get("startTime") and run.get("endTime"):
            TIMINGS[f"run {partition} ({run['status']})"] = run["endTime"] - run["startTime"]
        try:
            steps = stack.graphql(RUN_STEPS_QUERY, {"runId": run["runId"]})["runOrError"].get("stepStats", [])
        except Exception:
            continue
        for step in steps:
            if step.get("startTime") and step.get("endTime"):
                STEP_SECONDS[step["stepKey"]].append(step["endTime"] - step["startTime"])


def start_cluster_after_first_week(stack: E2EStack, root: Path, exits: ExitStack) -> Callable[[], None]:
    """What `wait_for_backfill` calls once the first week succeeded: the cluster's run of the second
    week, seeded from the backfill's first, starts beside the backfill's own second week."""

    def start() -> None:
        cluster = ClusterRun(root=root, raw_dir=stack.root / "raw", partition_start=E2E_START, week=PARTITIONS[1])
        try:
            cluster.start(stack.root / "lake", exits)
            stack.cluster = cluster
        except Exception as error:  # noqa: BLE001 - the cluster test reports it; the e2e tests go on
            stack.cluster_error = f"{type(error).__name__}: {error}"

    return start


@pytest.fixture(scope="session")
def e2e_stack(request, tmp_path_factory) -> Iterator[E2EStack]:
    """The running stack after the backfill finished; servers keep running for the browser tests.
    With a `cluster` test in the session, the cluster's run is under way too (`stack.cluster`)."""
    session_started = time.monotonic()
    stack = E2EStack(root=tmp_path_factory.mktemp("e2e"))
    wants_cluster = E2E_WEEKS >= 2 and any(item.get_closest_marker("cluster") for item in request.session.items)
    with ExitStack() as exits:
        try:
            generate_raw(stack)
            start_servers(stack, exits)
            load_job_assets(stack)
            launched_at = time.time()
            launch_backfill(stack)
            on_success = {PARTITIONS[0]: start_cluster_after_first_week(stack, tmp_path_factory.mktemp("cluster"), exits)} \
                if wants_cluster else {}
            wait_for_backfill(stack, on_success)
            record_launch_delay(stack, launched_at)
        except Exception as error:
            pytest.fail(f"the e2e stack did not come up or the backfill did not finish: {error}\n\n{stack.log_tails()}",
                        pytrace=True)
        _timed("e2e setup total (data, servers, backfill)", session_started)
        yield stack
        stopping = time.monotonic()
    _timed("stop every server", stopping)
    _timed("e2e total", session_started)


def record_launch_delay(stack: E2EStack, launched_at: float) -> None:
    """Backfill daemon tick, queue and run worker start-up before the first week's run began."""
    starts = [r["startTime"] for r in stack.runs if r.get("startTime")]
    if starts:
        TIMINGS["backfill: launch to first run started"] = min(starts) - launched_at


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's Chromium, installed by scripts/ensure_chromium.sh when missing (make test runs it first)."""
    path = os.environ.get("RECSYS_CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure_chromium.sh")],
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0 or not os.access(path, os.X_OK):
            pytest.fail(f"Chromium is needed for the browser tests and could not be installed:\n{result.stderr[-3000:]}",
                        pytrace=False)
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (make test does)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("e2e_stack") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(stack, E2EStack):
        report.sections.append(("e2e server logs", stack.log_tails()))


def pytest_terminal_summary(terminalreporter):
    if not TIMINGS:
        return
    terminalreporter.section("e2e timings")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {name}")
    if STEP_SECONDS:
        terminalreporter.write_line("per step, summed over the weeks (mean per week):")
        for step, values in sorted(STEP_SECONDS.items(), key=lambda item: -sum(item[1])):
            terminalreporter.write_line(f"{sum(values):8.1f} s  {step}  ({sum(values) / len(values):.1f} s x {len(values)})")
