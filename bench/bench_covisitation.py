"""Time `build_covisitation` over a three-week training window and print rows and seconds.

Not a test. `run` is what the main bench calls; the script reads the weekly `events`
folders of an existing bench lake (bench/bench.py writes them) or, without one, generates
raw data and parses it first.

    python bench/bench_covisitation.py [--lake data/bench/lake] [--weeks 2022-08-01 2022-08-08 2022-08-15]
        [--shuffle-partitions 16] [--driver-memory 12g] [--stages]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

from pipelines.config import PROJECT_ROOT
from pipelines.covisitation import MATRICES, CovisitationConfig, build_covisitation
from pipelines.spark import build_spark_session
from pipelines.weeks import Week

TIMEZONE = "Europe/Berlin"
DEFAULT_WEEKS = ("2022-08-01", "2022-08-08", "2022-08-15")
DEFAULT_OUT = "/tmp/covisitation_bench"


def run(spark, events, window_start_ms: int, window_end_ms: int, config: CovisitationConfig | None = None,
        out_dir: str = DEFAULT_OUT) -> dict:
    """Build the matrices from `events`, write them to Parquet at `out_dir`, count rows per matrix.

    `seconds` covers the build and the write (the work a pipeline run does); counting reads
    the written files back and is timed apart.
    """
    from pyspark.sql import functions as F

    config = config or CovisitationConfig()
    shutil.rmtree(out_dir, ignore_errors=True)
    started = time.perf_counter()
    build_covisitation(events, config, window_start_ms, window_end_ms).write.mode("overwrite").parquet(out_dir)
    seconds = time.perf_counter() - started

    counted = time.perf_counter()
    written = spark.read.parquet(out_dir)
    per_matrix = {row["matrix"]: row["count"] for row in written.groupBy("matrix").count().collect()}
    items = {
        row["matrix"]: row["items"]
        for row in written.groupBy("matrix").agg(F.countDistinct("aid").alias("items")).collect()
    }
    return {
        "stage": "covisitation",
        "rows": {matrix: per_matrix.get(matrix, 0) for matrix in MATRICES},
        "items": {matrix: items.get(matrix, 0) for matrix in MATRICES},
        "seconds": round(seconds, 1),
        "count_seconds": round(time.perf_counter() - counted, 1),
        "out_dir": out_dir,
    }


def read_lake_events(spark, lake_dir: Path, weeks: list[Week]):
    paths = [str(lake_dir / "events" / week.folder) for week in weeks]
    missing = [p for p in paths if not (Path(p) / "_SUCCESS").exists()]
    if missing:
        raise FileNotFoundError(f"bench lake lacks event weeks {missing}")
    return spark.read.parquet(*paths).select("session", "aid", "ts", "type")


def generated_events(spark, workdir: Path, weeks: list[Week], sessions: int, seed: int):
    """Generate raw JSONL for `weeks` and parse it into Parquet events under `workdir`."""
    from pipelines.events import parse_raw_week
    from pipelines.generate import generate_raw
    from pipelines.raw import stage_raw_week

    raw_dir, events_dir = workdir / "raw", workdir / "events"
    summary = generate_raw(raw_dir, n_sessions=sessions, n_weeks=len(weeks), start=weeks[0].key, seed=seed,
                           timezone=TIMEZONE)
    print(json.dumps({"stage": "generate", **{k: summary[k] for k in ("sessions", "events", "seconds")}}), flush=True)
    for week in weeks:
        parsed = parse_raw_week(spark, stage_raw_week(str(raw_dir), week, workdir / "raw_staging"))
        try:
            parsed.events.write.mode("overwrite").parquet(str(events_dir / week.folder))
        finally:
            parsed.release()
    return spark.read.parquet(*[str(events_dir / week.folder) for week in weeks])


def stage_report(spark, top: int = 12) -> list[dict]:
    """The slowest Spark stages of this application, from the UI's REST API."""
    url = spark.sparkContext.uiWebUrl
    if not url:
        return []
    app_id = spark.sparkContext.applicationId
    with urllib.request.urlopen(f"{url}/api/v1/applications/{app_id}/stages?status=complete") as response:
        stages = json.load(response)
    slowest = sorted(stages, key=lambda s: s.get("executorRunTime", 0), reverse=True)[:top]
    return [
        {
            "stage": s["stageId"],
            "name": s["name"][:60],
            "tasks": s["numTasks"],
            "run_s": round(s.get("executorRunTime", 0) / 1000, 1),
            # CPU time below run time means the tasks waited for a core (other jobs on the machine).
            "cpu_s": round(s.get("executorCpuTime", 0) / 1e9, 1),
            "input_mb": round(s.get("inputBytes", 0) / 2**20),
            "shuffle_read_mb": round(s.get("shuffleReadBytes", 0) / 2**20),
            "shuffle_write_mb": round(s.get("shuffleWriteBytes", 0) / 2**20),
            "spill_mb": round(s.get("diskBytesSpilled", 0) / 2**20),
            "records_written": s.get("shuffleWriteRecords", 0),
        }
        for s in slowest
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default=str(PROJECT_ROOT / "data" / "bench" / "lake"))
    parser.add_argument("--weeks", nargs="+", default=list(DEFAULT_WEEKS))
    parser.add_argument("--sessions", type=int, default=1_000_000, help="sessions to generate when there is no lake")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default="/tmp/covisitation_bench_work")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--driver-memory", default="12g")
    parser.add_argument("--shuffle-partitions", type=int, default=16)
    parser.add_argument("--stages", action="store_true", help="print the slowest stages (enables the Spark UI)")
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()

    weeks = [Week.parse(key, TIMEZONE) for key in args.weeks]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spark = build_spark_session(
        "local[*]",
        {
            "spark.driver.memory": args.driver_memory,
            "spark.sql.shuffle.partitions": str(args.shuffle_partitions),
            "spark.ui.enabled": "true" if args.stages else "false",
            "spark.local.dir": str(workdir / "spark-local"),
        },
        app_name="covisitation-bench",
    )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; spark {spark.version}; "
          f"shuffle partitions {args.shuffle_partitions}", flush=True)
    lake_dir = Path(args.lake)
    if (lake_dir / "events").is_dir():
        events = read_lake_events(spark, lake_dir, weeks)
        source = str(lake_dir)
    else:
        events = generated_events(spark, workdir, weeks, args.sessions, args.seed)
        source = f"generated {args.sessions} sessions"
    if args.explain:
        build_covisitation(events, CovisitationConfig(), weeks[0].start_ms, weeks[-1].end_ms).explain("formatted")

    from pyspark.sql import functions as F

    counted = events.agg(
        F.count(F.lit(1)).alias("events"), F.approx_count_distinct("session").alias("sessions")
    ).first()
    print(json.dumps({"source": source, "weeks": args.weeks, "events": counted["events"],
                      "sessions_approx": counted["sessions"]}), flush=True)
    result = run(spark, events, weeks[0].start_ms, weeks[-1].end_ms, out_dir=args.out)
    print(json.dumps(result), flush=True)
    if args.stages:
        for stage in stage_report(spark):
            print(json.dumps(stage), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
