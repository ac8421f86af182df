"""Time the ALS stage: fit, similar items and session recommendations at benchmark scale.

`run` is the reusable part (the main bench can call it with its own session and events);
`__main__` reads the events that `bench/bench.py` leaves in data/bench/lake/events/ (weeks
2022-08-01..2022-08-15, 1M sessions over the 4 generated weeks) and prints one JSON line per
phase and a summary.

    python bench/bench_als.py [--rank 64] [--max-iter 10] [--num-blocks 2] [--driver-memory 12g]
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

from pipelines.als import AlsConfig, fit_als, recommend_for_sessions, similar_items  # noqa: E402

DEFAULT_EVENTS = Path(__file__).resolve().parents[1] / "data" / "bench" / "lake" / "events"
DEFAULT_WEEKS = ("2022-08-01", "2022-08-08", "2022-08-15")
RECOMMEND_SESSIONS = 150_000


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


def run(spark, events, config: AlsConfig, checkpoint_dir: str, out_dir: str | None = None,
        recommend_sessions: int = RECOMMEND_SESSIONS, fit_only: bool = False) -> dict:
    """Fit, then write similar items and recommendations for `recommend_sessions` sessions as
    Parquet under `out_dir` (a temporary folder by default); seconds, rows and factor norms."""
    import tempfile

    from pyspark.sql import functions as F

    own_out = out_dir is None
    out = Path(out_dir or tempfile.mkdtemp(prefix="bench-als-"))
    report: dict = {}
    cpu = CpuClock()
    started, cpu_started = time.perf_counter(), cpu()
    result = fit_als(events, config, checkpoint_dir)
    report["fit_seconds"] = round(time.perf_counter() - started, 1)
    report["fit_cpu_seconds"] = round(cpu() - cpu_started, 1)
    report["fit_phases"] = result.stats["timings"]
    report.update({key: result.stats[key] for key in ("n_items", "n_sessions", "n_ratings")})
    report["item_factor_norm"] = result.stats["item_factor_norm"]
    report["session_factor_norm"] = result.stats["session_factor_norm"]
    report["linear_algebra"] = result.stats["linear_algebra"]
    report["params"] = result.stats["params"]
    try:
        if fit_only:
            return report
        clock, cpu_clock = time.perf_counter(), cpu()
        similar_path = str(out / "similar_items")
        similar_items(result.item_factors, config).write.mode("overwrite").parquet(similar_path)
        report["similar_items_seconds"] = round(time.perf_counter() - clock, 1)
        report["similar_items_cpu_seconds"] = round(cpu() - cpu_clock, 1)
        report["similar_items_rows"] = spark.read.parquet(similar_path).count()

        # A fixed pseudo-random subset of the sessions with factors (hash order, not id order,
        # so it is not biased to old or new session ids).
        clock, cpu_clock = time.perf_counter(), cpu()
        subset = result.session_factors.select("session").orderBy(F.xxhash64("session"), "session").limit(recommend_sessions)
        recommendations_path = str(out / "session_recommendations")
        recommend_for_sessions(result, subset, config.top_k).write.mode("overwrite").parquet(recommendations_path)
        report["recommend_seconds"] = round(time.perf_counter() - clock, 1)
        report["recommend_cpu_seconds"] = round(cpu() - cpu_clock, 1)
        recommendations = spark.read.parquet(recommendations_path)
        report["recommend_sessions"] = recommendations.select("session").distinct().count()
        report["recommend_rows"] = recommendations.count()
    finally:
        result.release()
        if own_out:
            shutil.rmtree(out, ignore_errors=True)
        report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default=str(DEFAULT_EVENTS), help="events table with week=YYYY-MM-DD folders")
    parser.add_argument("--weeks", nargs="+", default=list(DEFAULT_WEEKS))
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--num-blocks", type=int, default=None, help="ALS user/item blocks (default: cores)")
    parser.add_argument("--storage-level", default="MEMORY_AND_DISK", help="ALS intermediateStorageLevel")
    parser.add_argument("--similarity-blocks", type=int, default=8)
    parser.add_argument("--recommend-sessions", type=int, default=RECOMMEND_SESSIONS)
    parser.add_argument("--shuffle-partitions", default="8")
    parser.add_argument("--fit-only", action="store_true", help="time the fit only (for tuning)")
    parser.add_argument("--workdir", default="/tmp/bench_als")
    args = parser.parse_args()

    events_dir = Path(args.events)
    week_dirs = [events_dir / f"week={week}" for week in args.weeks]
    missing = [str(d) for d in week_dirs if not (d / "_SUCCESS").exists()]
    if missing:
        print(json.dumps({"skipped": "events not found; run bench/bench.py first", "missing": missing}))
        return 0

    # Spark's tasks already use every core; a multi-threaded OpenBLAS inside each task would
    # oversubscribe them (Spark's linear algebra guide recommends one BLAS thread). Must be set
    # before the JVM starts.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from pipelines.spark import build_spark_session

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    spark = build_spark_session(
        args.master,
        {
            "spark.driver.memory": args.driver_memory,
            "spark.ui.enabled": "false",
            "spark.local.dir": str(workdir / "spark-local"),
            "spark.sql.shuffle.partitions": args.shuffle_partitions,
        },
        app_name="session-recsys-bench-als",
    )
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
          f"Spark {spark.version}, master {args.master}", flush=True)
    config = AlsConfig(
        rank=args.rank,
        max_iter=args.max_iter,
        num_blocks=args.num_blocks,
        intermediate_storage_level=args.storage_level,
        similarity_blocks=args.similarity_blocks,
    )
    try:
        events = spark.read.parquet(*[str(d) for d in week_dirs]).select("session", "aid", "ts", "type")
        report = run(spark, events, config, str(workdir / "checkpoints"), out_dir=str(workdir / "out"),
                     recommend_sessions=args.recommend_sessions, fit_only=args.fit_only)
        report["weeks"] = args.weeks
        print(json.dumps(report, indent=2, default=str), flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
