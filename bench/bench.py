"""`make bench`: time each Spark stage at 1M sessions and print rows, seconds and peak memory.

Not a test: it prints numbers for the README. The generated raw data is cached under
data/bench/ and reused while the generator parameters are unchanged.

    python bench/bench.py [--sessions 1000000] [--weeks 4] [--driver-memory 12g]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from pipelines.config import PROJECT_ROOT
from pipelines.events import materialize_events_week
from pipelines.generate import generate_raw
from pipelines.lake import Lake
from pipelines.raw import list_local_week_files
from pipelines.sessions import materialize_sessions_week
from pipelines.spark import build_spark_session
from pipelines.weeks import Week

TIMEZONE = "Europe/Berlin"
START = "2022-08-01"


class PeakMemory:
    """Peak RSS of the Spark driver JVM and of this Python process, resettable per stage."""

    def __init__(self, jvm_pid: int):
        self.jvm_pid = jvm_pid

    def reset(self) -> None:
        # Writing 5 to clear_refs resets the kernel's peak-RSS counter (VmHWM) of a process.
        for pid in (self.jvm_pid, os.getpid()):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass

    @staticmethod
    def _hwm_mb(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def read(self) -> dict[str, float]:
        return {"jvm_peak_mb": round(self._hwm_mb(self.jvm_pid)), "python_peak_mb": round(self._hwm_mb(os.getpid()))}


def ensure_raw(raw_dir: Path, sessions: int, weeks: int, seed: int) -> dict:
    marker = raw_dir / "_generated.json"
    wanted = {"sessions": sessions, "weeks": weeks, "seed": seed, "start": START}
    if marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        return json.loads(marker.read_text())["summary"]
    shutil.rmtree(raw_dir, ignore_errors=True)
    started = time.perf_counter()
    summary = generate_raw(raw_dir, n_sessions=sessions, n_weeks=weeks, start=START, seed=seed, timezone=TIMEZONE)
    summary["bench_seconds"] = round(time.perf_counter() - started, 1)
    marker.write_text(json.dumps({"params": wanted, "summary": summary}, default=str))
    return summary


@contextmanager
def stage(name: str, memory: PeakMemory, results: list):
    memory.reset()
    started = time.perf_counter()
    record: dict = {"stage": name}
    yield record
    record["seconds"] = round(time.perf_counter() - started, 1)
    record.update(memory.read())
    results.append(record)
    print(json.dumps(record), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--workdir", default=str(PROJECT_ROOT / "data" / "bench"))
    args = parser.parse_args()

    workdir = Path(args.workdir)
    raw_dir, lake_dir = workdir / "raw", workdir / "lake"
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}", flush=True)
    generation = ensure_raw(raw_dir, args.sessions, args.weeks, args.seed)
    print(json.dumps({"stage": "generate", "sessions": args.sessions, "events": generation["events"],
                      "seconds": generation.get("bench_seconds", generation.get("seconds"))}), flush=True)

    shutil.rmtree(lake_dir, ignore_errors=True)
    spark = build_spark_session(
        "local[*]",
        {"spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false",
         "spark.local.dir": str(workdir / "spark-local")},
        app_name="session-recsys-bench",
    )
    memory = PeakMemory(spark.sparkContext._gateway.proc.pid)
    lake = Lake(str(lake_dir))
    weeks = [Week.parse(START, TIMEZONE).shift(i) for i in range(args.weeks)]
    results: list[dict] = []

    total_events = 0
    with stage("events (all weeks)", memory, results) as record:
        for week in weeks:
            summary = materialize_events_week(spark, lake, [str(p) for p in list_local_week_files(str(raw_dir), week)], week)
            total_events += summary.events
        record.update(rows=total_events, quarantined=0)
    results[-1]["events_per_second"] = round(total_events / results[-1]["seconds"])

    with stage("sessions (last week, full window)", memory, results) as record:
        summary = materialize_sessions_week(spark, lake, weeks[-1], weeks, 500)
        record.update(rows=summary.sessions, history_events=summary.history_events)
    results[-1]["events_per_second"] = round(summary.history_events / results[-1]["seconds"])

    spark.stop()
    python_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"summary": results, "python_lifetime_peak_mb": round(python_peak)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
