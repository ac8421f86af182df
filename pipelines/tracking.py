"""MLflow bookkeeping: one run per (weekly partition, Dagster run), shared by every stage of it.

Stages of one Dagster run log into the same MLflow run, found by its tags, so the MLflow
UI shows one row per week with the parameters and metrics of every stage side by side.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from pipelines.config import PROJECT_ROOT

PARTITION_TAG = "dagster.partition"
DAGSTER_RUN_TAG = "dagster.run_id"
CODE_VERSION_TAG = "code_version"


def code_version() -> str:
    """The git commit of the code, or the package version where there is no git checkout (Docker)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("session-recsys")
        except PackageNotFoundError:
            return "unknown"


def ensure_sqlite_parent(tracking_uri: str) -> None:
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def _client(tracking_uri: str):
    import mlflow

    ensure_sqlite_parent(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri)


def experiment_id(tracking_uri: str, experiment_name: str) -> str:
    client = _client(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment:
        return experiment.experiment_id
    return client.create_experiment(experiment_name, artifact_location=default_artifact_location(tracking_uri, experiment_name))


def default_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifacts beside a SQLite database (MLflow's default is ./mlruns of whatever the cwd is);
    a tracking server decides for itself (None)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts" / experiment_name).as_uri()
    return None


def week_run_id(tracking_uri: str, experiment_name: str, partition_key: str, dagster_run_id: str, job_name: str = "") -> str:
    """The MLflow run of this partition in this Dagster run, created on first use."""
    client = _client(tracking_uri)
    exp_id = experiment_id(tracking_uri, experiment_name)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{PARTITION_TAG}` = '{partition_key}' and tags.`{DAGSTER_RUN_TAG}` = '{dagster_run_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=f"week-{partition_key}",
        tags={
            PARTITION_TAG: partition_key,
            DAGSTER_RUN_TAG: dagster_run_id,
            "dagster.job": job_name,
            CODE_VERSION_TAG: code_version(),
        },
    )
    return run.info.run_id


@contextmanager
def active_run(tracking_uri: str, run_id: str):
    """Activate an existing run for `mlflow.log_*`, leaving it open for the next stage."""
    import mlflow

    _client(tracking_uri)
    with mlflow.start_run(run_id=run_id) as run:
        yield run
    # start_run's context ends the run as FINISHED; reopen state is fine: the next stage
    # resumes it by id, and the last stage's status is what the UI shows.


def flatten_metrics(prefix: str, values: dict, out: dict[str, float] | None = None) -> dict[str, float]:
    """{"a": {"b": 1.0}} -> {"prefix.a.b": 1.0}, numbers only (MLflow metric names allow dots)."""
    out = {} if out is None else out
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flatten_metrics(name, value, out)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def log_lake_inputs(partitions: dict[str, str | Path], context: str) -> None:
    """Log lake partitions as the active run's dataset inputs (the MLflow UI's Datasets column):
    a name, the partition's location and a digest of its files' names and sizes, not the data."""
    import hashlib

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for name, location in partitions.items():
        files = sorted(path for path in Path(location).iterdir() if not path.name.startswith((".", "_"))) \
            if Path(location).is_dir() else []
        digest = hashlib.sha256("".join(f"{f.name}:{f.stat().st_size};" for f in files).encode()).hexdigest()[:12]
        mlflow.log_input(MetaDataset(resolve_dataset_source(str(location)), name=name, digest=digest), context=context)


def ui_links(tracking_uri: str, run_id: str | None = None, model_name: str | None = None,
             version: str | int | None = None, experiment: str | None = None) -> dict[str, str]:
    """URLs of a run and of a registered model version in the MLflow UI, when `tracking_uri` is the
    tracking server's (its address is the UI's); none for a local store, which has no UI address.
    `experiment`: the run's experiment id, looked up when not given."""
    if not tracking_uri.startswith(("http://", "https://")):
        return {}
    ui = tracking_uri.rstrip("/")
    links = {}
    if run_id:
        if not experiment:
            from mlflow import MlflowClient

            experiment = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        links["mlflow_run"] = f"{ui}/#/experiments/{experiment}/runs/{run_id}"
    if model_name and version not in (None, ""):
        links["mlflow_model_version"] = f"{ui}/#/models/{model_name}/versions/{version}"
    return links
