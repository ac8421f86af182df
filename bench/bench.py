"""`make bench`: the last week's whole weekly run, as the code location runs it, timed per step.

Not a test: it prints numbers for the README.

    python bench/bench.py --sessions 1000000 --json data/bench-1000000/bench.json
    python bench/bench.py --sessions 200000 --seed 3 --forward --json FILE   # + the model's forward score

Generates `--sessions` sessions over `--weeks` weeks (cached under the workdir, default
`data/bench-<sessions>`), materializes the earlier weeks through the `weekly_recommender` job
untimed, then runs the last week's job in process: Dagster's in-process executor runs the same
assets as the schedule, with every blocking check, the MLflow logging and artefacts, the forward
and champion scoring and the publication. Per step (one per asset) it reports the seconds from
the run's event log and the peak RSS of this process and of its Spark driver JVM, sampled while
the step ran. The earlier weeks stay prepared (`prepared.json` names them): a rerun times only the
last week; `--fresh` rebuilds them (needed after a change to what they write).

`--forward` generates one week more. After the timed week W, W+1's events, sessions and
evaluation split are materialized untimed, and `bench/bench_forward.py` scores W's registered
model on W+1 through `recsys predict`, against the hand rule on the same sessions.

Everything runs with the project's defaults (Spark: pipelines/spark.py, ALS and ranker: their
configs); the environment below points the code location at the workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

TIMEZONE = "Europe/Berlin"
START = "2022-08-01"
STEP_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE"}
INGEST_STEPS = ["events", "sessions", "eval_split"]


def configure_environment(workdir: Path) -> None:
    """What the code location reads at import: set before `definitions` is imported."""
    (workdir / "dagster_home").mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "RECSYS_RAW_URI": str(workdir / "raw"),
        "RECSYS_LAKE_DIR": str(workdir / "lake"),
        "RECSYS_PUBLISH_URI": str(workdir / "published"),
        "RECSYS_PARTITION_START": START,
        "RECSYS_TIMEZONE": TIMEZONE,
        "MLFLOW_TRACKING_URI": f"sqlite:///{(workdir / 'mlflow.db').resolve()}",
        "DAGSTER_HOME": str((workdir / "dagster_home").resolve()),
        "DAGSTER_TELEMETRY_DISABLED": "1",
        "GX_ANALYTICS_ENABLED": "False",
    })
    (workdir / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")


def ensure_raw(workdir: Path, sessions: int, weeks: int, seed: int) -> dict:
    """Generated raw weeks, reused while the generator's parameters are the same."""
    from pipelines.generate import generate_raw

    raw_dir, marker = workdir / "raw", workdir / "raw" / "_generated.json"
    wanted = {"sessions": sessions, "weeks": weeks, "seed": seed, "start": START}
    if marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        return json.loads(marker.read_text())["summary"]
    shutil.rmtree(raw_dir, ignore_errors=True)
    summary = generate_raw(raw_dir, n_sessions=sessions, n_weeks=weeks, start=START, seed=seed, timezone=TIMEZONE)
    marker.write_text(json.dumps({"params": wanted, "summary": summary}, default=str))
    return summary


def reset_outputs(workdir: Path) -> None:
    """Everything the weekly runs wrote: the next run starts from the first week."""
    for name in ("lake", "published", "dagster_home", "mlflow.db", "prepared.json", "forward"):
        path = workdir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _java_children(pid: int) -> list[int]:
    """Java processes this process started: the driver JVM of its local Spark session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and "java" in (entry / "comm").read_text():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


@dataclass
class MemoryTimeline:
    """RSS of this process and of its Spark driver JVM, sampled on a thread every `interval` seconds:
    a step's peak is the largest sample inside its window, the sum the largest simultaneous total."""

    interval: float = 0.2
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, python kB, jvm kB)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-timeline", daemon=True)

    def __enter__(self) -> "MemoryTimeline":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me, jvms, scanned = os.getpid(), [], 0.0
        while not self._stop.wait(self.interval):
            now = time.time()
            if not jvms and now - scanned > 2:  # the run's Spark resource starts the JVM
                jvms, scanned = _java_children(me), now
            try:
                jvm = sum(_status_kb(pid, "VmRSS") for pid in jvms)
            except OSError:
                jvms, jvm = [], 0
            self.samples.append((now, _status_kb(me, "VmRSS"), jvm))

    def peaks(self, start: float, end: float) -> dict[str, int]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            inside = [min(self.samples, key=lambda s: abs(s[0] - end))] if self.samples else [(end, 0, 0)]
        return {"python_peak_mb": round(max(s[1] for s in inside) / 1024),
                "jvm_peak_mb": round(max(s[2] for s in inside) / 1024),
                "peak_sum_mb": round(max(s[1] + s[2] for s in inside) / 1024)}


def step_windows(instance, run_id: str) -> dict[str, dict]:
    """step key -> {"start", "end", "status"}, from the run's event log."""
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.event_type_value not in STEP_EVENTS:
            continue
        step = steps.setdefault(event.step_key, {})
        if event.event_type_value == "STEP_START":
            step["start"] = entry.timestamp
        else:
            step["end"], step["status"] = entry.timestamp, event.event_type_value
    return steps


def run_week(definitions, instance, week: str, steps: list[str] | None = None,
             timeline: MemoryTimeline | None = None) -> dict:
    """One week of `weekly_recommender` (or of `steps` only) in process; with `timeline`, each step's
    seconds and memory peaks."""
    from dagster import AssetSelection, define_asset_job, in_process_executor

    job = definitions.resolve_job_def("weekly_recommender") if steps is None else define_asset_job(
        "bench_steps", selection=AssetSelection.assets(*steps), executor_def=in_process_executor,
    ).resolve(asset_graph=definitions.resolve_asset_graph())
    started = time.time()
    result = job.execute_in_process(partition_key=week, instance=instance, raise_on_error=False)
    outcome = {
        "week": week, "run_id": result.run_id, "success": result.success, "seconds": round(time.time() - started, 1),
        "failed_checks": [e.check_name for e in result.get_asset_check_evaluations() if not e.passed],
        "failures": [str(e.step_failure_data.error.message if e.step_failure_data.error else e.message)[:2000]
                     for e in result.all_events if e.is_step_failure],
    }
    if timeline is not None:
        windows = sorted(step_windows(instance, result.run_id).items(), key=lambda item: item[1].get("start", 0))
        outcome["stages"] = {key: {"seconds": round(w["end"] - w["start"], 1), "status": w["status"],
                                   **timeline.peaks(w["start"], w["end"])}
                             for key, w in windows if "start" in w and "end" in w}
        outcome.update(timeline.peaks(started, time.time()))
    return outcome


def prepare_earlier_weeks(workdir: Path, definitions, instance, weeks: list[str]) -> list[dict]:
    """Materialize the weeks before the timed one (untimed), skipping those a previous run prepared."""
    marker = workdir / "prepared.json"
    prepared = json.loads(marker.read_text())["weeks"] if marker.exists() else []
    runs = []
    for week in weeks:
        if week in prepared:
            continue
        outcome = run_week(definitions, instance, week)
        print(json.dumps({"prepared": week, **{k: outcome[k] for k in ("success", "seconds", "failed_checks")}}),
              flush=True)
        if not outcome["success"] or outcome["failed_checks"]:
            raise SystemExit(f"week {week} failed while preparing: {outcome['failures'] or outcome['failed_checks']}")
        prepared.append(week)
        marker.write_text(json.dumps({"weeks": prepared}))
        runs.append(outcome)
    return runs


def forward_score(workdir: Path, mlflow_tracking, week: str) -> dict:
    """Week `week`'s registered model on the next week's sessions through `recsys predict` and the hand
    rule on the same sessions (`bench/bench_forward.py`, its own Spark)."""
    from pipelines.registry import version_of_week

    version = version_of_week(mlflow_tracking.client, mlflow_tracking.registered_model_name, week)
    if version is None:
        raise SystemExit(f"no registered version for week {week}: its ranker did not run")
    bundle = workdir / "forward" / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(mlflow_tracking.load_version(version.version).bundle.directory, bundle)
    report = workdir / "forward" / "forward.json"
    subprocess.run([sys.executable, str(Path(__file__).with_name("bench_forward.py")), "--lake", str(workdir / "lake"),
                    "--week", week, "--bundle", str(bundle), "--workdir", str(workdir / "forward"),
                    "--json", str(report)], check=True)
    return {"model_version": str(version.version), **json.loads(report.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--weeks", type=int, default=4, help="weeks run through the job; the last one is timed")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=None, help="default: data/bench-<sessions>")
    parser.add_argument("--fresh", action="store_true", help="rebuild the earlier weeks too")
    parser.add_argument("--forward", action="store_true", help="also score the timed week's model on the week after")
    parser.add_argument("--json", help="write total_seconds, python_peak_mb, jvm_peak_mb and stages to this file")
    args = parser.parse_args()

    workdir = Path(args.workdir or PROJECT_ROOT / "data" / f"bench-{args.sessions}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    configure_environment(workdir)
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}", flush=True)
    raw_marker = workdir / "raw" / "_generated.json"
    before = raw_marker.read_text() if raw_marker.exists() else None
    generation = ensure_raw(workdir, args.sessions, args.weeks + int(args.forward), args.seed)
    if args.fresh or (raw_marker.read_text() != before):
        reset_outputs(workdir)
        configure_environment(workdir)
    print(json.dumps({"generated": args.sessions, "events": generation["events"]}), flush=True)

    from dagster import DagsterInstance

    from definitions import build_definitions
    from pipelines.config import Settings
    from pipelines.tracking import code_version
    from pipelines.weeks import Week
    from resources import build_resources

    commit = code_version()  # of the code this process imported, not of a checkout changed meanwhile
    resources = build_resources(Settings.from_env())
    definitions = build_definitions(resources)
    instance = DagsterInstance.get()
    first = Week.parse(START, TIMEZONE)
    weeks = [first.shift(i).key for i in range(args.weeks + int(args.forward))]
    timed = weeks[args.weeks - 1]
    prepare_earlier_weeks(workdir, definitions, instance, weeks[:args.weeks - 1])
    with MemoryTimeline() as timeline:
        outcome = run_week(definitions, instance, timed, timeline=timeline)
    report = {
        "sessions": args.sessions, "week": timed, "commit": commit, "success": outcome["success"],
        "failed_checks": outcome["failed_checks"], "failures": outcome["failures"],
        "total_seconds": outcome["seconds"], "python_peak_mb": outcome["python_peak_mb"],
        "jvm_peak_mb": outcome["jvm_peak_mb"], "peak_sum_mb": outcome["peak_sum_mb"], "stages": outcome["stages"],
    }
    print(json.dumps(report, indent=2), flush=True)
    if args.json:  # the week's numbers first: they stay written if the forward scoring fails
        Path(args.json).write_text(json.dumps(report, indent=2))
    if not outcome["success"] or outcome["failed_checks"]:
        return 1
    if args.forward:
        next_week = run_week(definitions, instance, weeks[-1], steps=INGEST_STEPS)
        if not next_week["success"]:
            raise SystemExit(f"week {weeks[-1]}'s evaluation split failed: {next_week['failures']}")
        forward = forward_score(workdir, resources["mlflow_tracking"].process_config_and_initialize(), timed)
        report["forward"] = {key: forward[key] for key in
                             ("model_version", "week", "scored_week", "sessions", "forward", "forward_hand_rule", "gain")}
        print(json.dumps(report["forward"], indent=2), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
