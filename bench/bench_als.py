"""Time the ALS stage and measure what it is for: fit and similar items on the training window that
ends the week before W (the `als` asset of W-1: the sources W's labelled rows come from), then the
ALS candidate source's recall@20 on W's evaluation sessions.

Reads a lake that `bench/bench.py` left (data/bench-1000000/lake, week 2022-08-22 by default); vary the
knobs to see what a cheaper fit costs in recall:

    python bench/bench_als.py [--lake data/bench-1000000/lake] [--week 2022-08-22] [--rank 64] [--max-iter 10] \
        [--min-session-items 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipelines.als import AlsConfig, fit_als, similar_items  # noqa: E402

DEFAULT_LAKE = Path(__file__).resolve().parents[1] / "data" / "bench-1000000" / "lake"
DEFAULT_WEEK = "2022-08-22"


class CpuClock:
    """CPU seconds of this process and all its descendants: with a local master, the driver
    JVM (which runs the tasks) and the JVM's Python workers.

    Wall time on a shared machine depends on what else runs; CPU time much less, so the bench
    reports both. With a cluster master the executors' CPU is not counted."""

    def __init__(self):
        self.pids = [os.getpid()]

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # utime, stime, cutime, cstime: the process and its children that already exited.
        return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        found, todo = [], [pid]
        while todo:
            current = todo.pop()
            found.append(current)
            for children in Path(f"/proc/{current}/task").glob("*/children"):
                try:
                    todo.extend(int(child) for child in children.read_text().split())
                except OSError:
                    pass
        return found

    def __call__(self) -> float:
        # The Python workers are long-lived children of the JVM: count them while they run.
        return sum(self._cpu(pid) for root in self.pids for pid in set(self._descendants(root)))


def run(spark, events, config: AlsConfig, checkpoint_dir: str, out_dir: str) -> dict:
    """Fit, then write similar items under `out_dir`; seconds, CPU seconds, rows and factor norms."""
    report: dict = {}
    cpu = CpuClock()
    started, cpu_started = time.perf_counter(), cpu()
    result = fit_als(events, config, checkpoint_dir)
    report["fit_seconds"] = round(time.perf_counter() - started, 1)
    report["fit_cpu_seconds"] = round(cpu() - cpu_started, 1)
    report["fit_phases"] = result.stats["timings"]
    report.update({key: result.stats[key] for key in ("n_items", "n_sessions", "n_ratings")})
    report["item_factor_norm"] = result.stats["item_factor_norm"]
    report["linear_algebra"] = result.stats["linear_algebra"]
    report["params"] = result.stats["params"]
    try:
        clock, cpu_clock = time.perf_counter(), cpu()
        similar_path = str(Path(out_dir) / "similar_items")
        similar_items(result.item_factors, config).write.mode("overwrite").parquet(similar_path)
        report["similar_items_seconds"] = round(time.perf_counter() - clock, 1)
        report["similar_items_cpu_seconds"] = round(cpu() - cpu_clock, 1)
        report["similar_items_rows"] = spark.read.parquet(similar_path).count()
    finally:
        result.release()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=str(DEFAULT_LAKE))
    parser.add_argument("--week", default=DEFAULT_WEEK, help="the week whose training window is fitted")
    parser.add_argument("--training-weeks", type=int, default=4,
                        help="weeks of the window ending with W-1 (the sources W's rows are built from)")
    parser.add_argument("--rank", type=int, default=AlsConfig.rank)
    parser.add_argument("--max-iter", type=int, default=AlsConfig.max_iter)
    parser.add_argument("--min-session-items", type=int, default=AlsConfig.min_session_items)
    parser.add_argument("--num-blocks", type=int, default=None, help="ALS user/item blocks (default: cores)")
    parser.add_argument("--workdir", default="/tmp/bench_als")
    args = parser.parse_args()

    from pipelines.config import DEFAULT_TIMEZONE
    from pipelines.evaluation import EVAL_LABELS_TABLE, EVAL_SESSIONS_TABLE, labels_long, window_events
    from pipelines.lake import Lake
    from pipelines.spark import build_spark_session
    from pipelines.weeks import Week

    from bench_similar_items import als_source_recall

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    spark = build_spark_session("local[*]", {"spark.ui.enabled": "false"}, app_name="session-recsys-bench-als")
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"Spark {spark.version}", flush=True)
    lake, week = Lake(args.lake), Week.parse(args.week, DEFAULT_TIMEZONE)
    weeks_before = [week.shift(-i) for i in range(args.training_weeks, 0, -1)]
    config = AlsConfig(rank=args.rank, max_iter=args.max_iter, min_session_items=args.min_session_items,
                       num_blocks=args.num_blocks)
    try:
        eval_sessions = lake.read_partition(spark, EVAL_SESSIONS_TABLE, week)
        events = window_events(spark, lake, weeks_before)
        report = run(spark, events, config, str(workdir / "checkpoints"), str(workdir / "out"))
        labels = labels_long(lake.read_partition(spark, EVAL_LABELS_TABLE, week))
        report["als_source_recall"] = als_source_recall(
            spark, eval_sessions, str(workdir / "out" / "similar_items"), labels)
        report["week"] = week.key
        print(json.dumps(report, indent=2, default=str), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
