"""`make bench`: time each Spark stage at 1M sessions and print rows, seconds and peak memory.

Not a test: it prints numbers for the README. The generated raw data is cached under
data/bench/ and reused while the generator parameters are unchanged.

    python bench/bench.py [--sessions 1000000] [--weeks 4] [--driver-memory 12g]
    python bench/bench.py --sessions 200000 --seed 3 --forward --workdir data/bench-200k-3  # + W+1's score

`--forward` generates one week more than `--weeks`; after the timed retrain of week W, W+1's
events, sessions and evaluation split are prepared untimed and `bench/bench_forward.py` scores
the bench's own bundle on W+1 through `recsys predict` against the hand rule (`forward` in the JSON).
The generator spreads `--sessions` over the extra week too, so the timed week is smaller than
without the flag: compare timings only between runs with the same flags.

Spark starts with the project's defaults (pipelines/spark.py: half the machine's memory for the
driver in local mode), like every other entry point; `--driver-memory` overrides them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pipelines.als import SIMILAR_ITEMS_TABLE, AlsConfig, fit_als, similar_items
from pipelines.candidates import (
    CANDIDATES_TABLE,
    MAX_CANDIDATES_PER_QUERY,
    CandidateConfig,
    build_candidates,
    label_hits,
    recall_report,
)
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.covisitation import COVISITATION_TABLE, CovisitationConfig, build_covisitation
from pipelines.evaluation import EVAL_LABELS_TABLE, EVAL_SESSIONS_TABLE, labels_long, split_evaluation_sessions, training_events
from pipelines.events import materialize_events_week
from pipelines.metrics import K, spark_score
from pipelines.popularity import TOP_SELLERS_TABLE, TopSellersConfig, build_top_sellers, popularity_predictions
from pipelines.generate import generate_raw
from pipelines.lake import SESSIONS_TABLE, Lake
from pipelines.raw import stage_raw_week
from pipelines.sessions import materialize_sessions_week
from pipelines.spark import build_spark_session, release_driver_heap
from pipelines.weeks import Week

TIMEZONE = "Europe/Berlin"
START = "2022-08-01"


class PeakMemory:
    """Peak RSS of the Spark driver JVM and of this Python process, resettable per stage.

    Per process: the kernel's high-water mark (VmHWM). Together: the largest sum of the two RSS
    values sampled at the same moment (every 0.1 s by a thread), which is what the machine had to
    hold; the sum of the two high-water marks would overstate it when the peaks fall at different
    times (the JVM's during Spark work, Python's while the ranker fits)."""

    SAMPLE_SECONDS = 0.1

    def __init__(self, jvm_pid: int):
        self.jvm_pid = jvm_pid
        self._peak_sum_kb = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_SECONDS):
            try:
                self._peak_sum_kb = max(self._peak_sum_kb, self._status_kb(self.jvm_pid, "VmRSS") + self._status_kb(os.getpid(), "VmRSS"))
            except (OSError, ValueError):
                pass

    def reset(self) -> None:
        # Writing 5 to clear_refs resets the kernel's peak-RSS counter (VmHWM) of a process.
        for pid in (self.jvm_pid, os.getpid()):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        self._peak_sum_kb = 0

    @staticmethod
    def _status_kb(pid: int, field: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise ValueError(f"no {field} for process {pid}")

    def jvm_rss_mb(self) -> int:
        return round(self._status_kb(self.jvm_pid, "VmRSS") / 1024)

    def read(self) -> dict[str, float]:
        jvm, python = (self._status_kb(pid, "VmHWM") / 1024 for pid in (self.jvm_pid, os.getpid()))
        return {"jvm_peak_mb": round(jvm), "python_peak_mb": round(python), "peak_sum_mb": round(self._peak_sum_kb / 1024)}

    def stop(self) -> None:
        self._stop.set()


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
def stage(name: str, memory: PeakMemory, results: list | None):
    """Times and records the block into `results`; `None`: untimed preparation, not recorded."""
    memory.reset()
    started = time.perf_counter()
    record: dict = {"stage": name}
    yield record
    if results is None:
        return
    record["seconds"] = round(time.perf_counter() - started, 1)
    record.update(memory.read())
    results.append(record)
    print(json.dumps(record), flush=True)


def ingest_week(spark, lake: Lake, raw_dir: Path, week: Week):
    """One week's raw files into the events table, as the `events` asset does."""
    return materialize_events_week(spark, lake, stage_raw_week(str(raw_dir), week, Path(lake.root) / "_raw_staging"))


def write_evaluation_split(spark, lake: Lake, week: Week) -> None:
    """The week's evaluation prefixes and labels, as the `eval_split` asset writes them."""
    eval_sessions, eval_labels = split_evaluation_sessions(lake.read_partition(spark, SESSIONS_TABLE, week), seed=42)
    lake.write_partition(eval_sessions, EVAL_SESSIONS_TABLE, week)
    lake.write_partition(eval_labels, EVAL_LABELS_TABLE, week)


def run_ingest(spark, lake: Lake, raw_dir: Path, weeks: list[Week], memory: PeakMemory, results: list) -> None:
    """A weekly retrain's ingest: the earlier weeks' events are prepared first and not timed (a
    production week finds them in the lake), then the last week's events and sessions are timed."""
    started = time.perf_counter()
    for week in weeks[:-1]:
        ingest_week(spark, lake, raw_dir, week)
    print(json.dumps({"prepared": "events of the earlier weeks (not timed)", "weeks": len(weeks) - 1,
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    with stage("events", memory, results) as record:
        summary = ingest_week(spark, lake, raw_dir, weeks[-1])
        record.update(rows=summary.events, quarantined=summary.quarantined)
    results[-1]["events_per_second"] = round(summary.events / results[-1]["seconds"])

    with stage("sessions (full window)", memory, results) as record:
        summary = materialize_sessions_week(spark, lake, weeks[-1], weeks, 500)
        record.update(rows=summary.sessions, history_events=summary.history_events)
    results[-1]["events_per_second"] = round(summary.history_events / results[-1]["seconds"])


def run_sources(spark, lake: Lake, workdir: Path, weeks: list[Week], memory: PeakMemory, results: list | None,
                reuse: bool = False) -> None:
    """The candidate stages for the last week, as the assets run them (defaults: K=20, AlsConfig).

    `reuse`: keep the tables a previous bench run left in the lake (time only what is missing).
    """
    week, before = weeks[-1], weeks[:-1]
    missing = lambda table: not (reuse and lake.has_partition(table, week))  # noqa: E731
    if missing(EVAL_LABELS_TABLE):
        with stage("eval_split", memory, results) as record:
            write_evaluation_split(spark, lake, week)
            record.update(rows=lake.read_partition(spark, EVAL_SESSIONS_TABLE, week).count())
    eval_sessions = lake.read_partition(spark, EVAL_SESSIONS_TABLE, week)
    train = training_events(spark, lake, before, eval_sessions)
    window_start, window_end = before[0].start_ms if before else week.start_ms, week.end_ms

    if missing(TOP_SELLERS_TABLE):
        with stage("top_sellers", memory, results) as record:
            lake.write_partition(build_top_sellers(train, week.start_ms, TopSellersConfig()), TOP_SELLERS_TABLE, week, num_files=1)
            record.update(rows=lake.read_partition(spark, TOP_SELLERS_TABLE, week).count(), training_events=train.count())

    if missing(COVISITATION_TABLE):
        with stage("covisitation", memory, results) as record:
            lake.write_partition(build_covisitation(train, CovisitationConfig(), window_start, window_end), COVISITATION_TABLE, week)
            written = lake.read_partition(spark, COVISITATION_TABLE, week)
            record.update(rows=written.count(), rows_per_matrix={r["matrix"]: r["count"] for r in written.groupBy("matrix").count().collect()})

    if not missing(SIMILAR_ITEMS_TABLE):
        return
    config = AlsConfig()
    with stage(f"als (fit, rank {config.rank}, {config.max_iter} iterations, sessions with >= {config.min_session_items} items)", memory, results) as record:
        fitted = fit_als(train, config, checkpoint_dir=str(workdir / "checkpoints"))
        lake.write_partition(fitted.item_factors, "als_item_factors", week)
        lake.write_partition(fitted.session_factors, "als_session_factors", week)
        record.update(rows=fitted.stats["n_ratings"], items=fitted.stats["n_items"], sessions=fitted.stats["n_sessions"],
                      timings=fitted.stats["timings"], native_blas=fitted.stats["linear_algebra"].get("uses_native"))
        fitted.release()
    with stage("als similar items (top 20: exact blocked cosine, clustered above 100k items)", memory, results) as record:
        item_factors = lake.read_partition(spark, "als_item_factors", week)
        lake.write_partition(similar_items(item_factors, config), SIMILAR_ITEMS_TABLE, week)
        record.update(rows=lake.read_partition(spark, SIMILAR_ITEMS_TABLE, week).count())


def write_candidates(spark, lake: Lake, week: Week) -> None:
    """The week's candidates, as the `candidates` asset writes them (defaults: K=20)."""
    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    lake.write_partition(build_candidates(read(EVAL_SESSIONS_TABLE), read(COVISITATION_TABLE), read(SIMILAR_ITEMS_TABLE),
                                          read(TOP_SELLERS_TABLE), CandidateConfig()), CANDIDATES_TABLE, week)


def write_features(spark, lake: Lake, weeks: list[Week]) -> None:
    """The last week's item statistics and features, as the `features` asset writes them."""
    from pipelines.features import FEATURES_TABLE, ITEM_STATS_TABLE, add_features, build_item_stats

    week, before = weeks[-1], weeks[:-1]
    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    eval_sessions = read(EVAL_SESSIONS_TABLE)
    lake.write_partition(build_item_stats(training_events(spark, lake, before, eval_sessions), week.start_ms),
                         ITEM_STATS_TABLE, week)
    lake.write_partition(add_features(read(CANDIDATES_TABLE), eval_sessions.select("session", "prefix"), read(ITEM_STATS_TABLE)),
                         FEATURES_TABLE, week)


def prepare_labelled_weeks(spark, lake: Lake, workdir: Path, weeks: list[Week], memory: PeakMemory) -> None:
    """The weeks before the timed one whose labelled sessions the ranker also trains on
    (`RankerConfig.label_weeks`): their sessions, evaluation split, sources, candidates and
    features, as their own weekly runs leave them in the lake (not timed)."""
    from pipelines.ranker import RankerConfig

    started = time.perf_counter()
    history_weeks = Settings.from_env().history_weeks
    prepared = []
    for end in range(max(1, len(weeks) - RankerConfig().label_weeks + 1), len(weeks)):
        window = weeks[:end]
        materialize_sessions_week(spark, lake, window[-1], window[-(history_weeks + 1):], 500)
        run_sources(spark, lake, workdir, window, memory, None)
        write_candidates(spark, lake, window[-1])
        write_features(spark, lake, window)
        prepared.append(window[-1].key)
    print(json.dumps({"prepared": "the earlier labelled weeks' sessions, sources, candidates and features (not timed)",
                      "weeks": prepared, "seconds": round(time.perf_counter() - started, 1)}), flush=True)


def run_ranking(spark, lake: Lake, workdir: Path, weeks: list[Week], memory: PeakMemory, results: list,
                predict_sessions: int) -> None:
    """candidates, features (with their contracts), ranker, the recommendation tables and their
    publication for the last week (needs `sources`), then `recsys predict` throughput."""
    import pandas as pd

    from pipelines.features import FEATURES_TABLE, features_validation_frame, source_tables
    from pipelines.lake import EVENTS_TABLE
    from pipelines.model import Bundle, otto_sessions_to_long, prefixes_from_events, save_bundle
    from pipelines.publish import PUBLISHED_TABLES, ModelInfo, failed_gates, publish_week, run_publish_gates
    from pipelines.quality import candidates_suite, candidates_validation_frame, features_suite, validate
    from pipelines.ranker import RankerConfig, earlier_labelled_weeks, evaluate_ranker
    from pipelines.recommendations import catalogue, lake_table, write_recommendation_tables

    week = weeks[-1]
    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    eval_sessions = read(EVAL_SESSIONS_TABLE)
    with stage("candidates + recall report", memory, results) as record:
        write_candidates(spark, lake, week)
        labels = labels_long(read(EVAL_LABELS_TABLE))
        record["contract_passed"] = validate(
            candidates_validation_frame(read(CANDIDATES_TABLE)), "candidates_contract", candidates_suite(MAX_CANDIDATES_PER_QUERY)
        ).success
        report = recall_report(label_hits(read(CANDIDATES_TABLE), labels), labels.toPandas())
        report["baseline_popularity"] = spark_score(popularity_predictions(labels, read(TOP_SELLERS_TABLE), K), labels)
        record.update(
            rows=read(CANDIDATES_TABLE).count(),
            baseline_covisitation=round(report["baseline_covisitation"]["score"], 4),
            baseline_popularity=round(report["baseline_popularity"]["score"], 4),
            combined_ceiling={k: round(v, 4) for k, v in report["combined"].items()},
        )

    with stage("features (item stats + all feature groups)", memory, results) as record:
        write_features(spark, lake, weeks)
        record.update(rows=read(FEATURES_TABLE).count())
        record["contract_passed"] = validate(
            features_validation_frame(read(FEATURES_TABLE)), "features_contract", features_suite(record["rows"])).success

    with stage("ranker (3 targets x (3 folds + final), OOF scoring)", memory, results) as record:
        record["jvm_rss_mb_before_heap_release"] = memory.jvm_rss_mb()
        release_driver_heap(spark)  # as the ranker asset does (G1 uncommits concurrently, within seconds)
        earlier, _ = earlier_labelled_weeks(spark, lake, week, RankerConfig())
        evaluation = evaluate_ranker(read(FEATURES_TABLE), labels_long(read(EVAL_LABELS_TABLE)), read(TOP_SELLERS_TABLE),
                                     RankerConfig(), earlier_weeks=list(earlier.values()))
        evaluation.release()
        record.update(
            label_weeks=[week.key, *earlier],
            sample_rows={t: r.sample_rows for t, r in evaluation.results.items()},
            train_rows={t: r.train_rows for t, r in evaluation.results.items()},
            seconds_by_phase=evaluation.timings,
            boosting_rounds={t: [f.rounds for f in r.folds] for t, r in evaluation.results.items()},
            scores={name: round(m["score"], 4) for name, m in evaluation.metrics.items()},
            jvm_rss_mb_after_fitting=memory.jvm_rss_mb(),
        )

    bundle_dir = workdir / "bundle"
    shutil.rmtree(bundle_dir, ignore_errors=True)
    shutil.rmtree(lake.model_tables_dir("bench"), ignore_errors=True)
    with stage("model bundle (rankers; the source tables snapshot in the lake)", memory, results) as record:
        save_bundle(bundle_dir, source_tables(spark, lake, week),
                    {t: r.model for t, r in evaluation.results.items()},
                    {"week": week.key, "ranker_rounds": {t: r.rounds for t, r in evaluation.results.items()}},
                    lake.model_tables_dir("bench"))
        record.update({f"{part}_bytes": size for part, size in Bundle(bundle_dir).size_bytes().items()})
    with stage("recommendation tables, publish gates, publish (to a folder)", memory, results) as record:
        model = ModelInfo(name="bench", version="1", run_id="bench")
        row_counts = write_recommendation_tables(spark, lake, week, Bundle(bundle_dir),
                                                 {"name": model.name, "version": model.version, "mlflow_run_id": model.run_id})
        gates = run_publish_gates(
            {name: read(lake_table(name)) for name in PUBLISHED_TABLES},
            catalogue(lake.read_weeks(spark, EVENTS_TABLE, weeks)), read(SESSIONS_TABLE), None,
            current_row_counts=row_counts, warm_up="bench: no previous publication")
        published = publish_week({name: lake.partition_dir(lake_table(name), week) for name in PUBLISHED_TABLES}, week,
                                 model, str(workdir / "published"))
        record.update(row_counts=row_counts, gates_failed=[gate.name for gate in failed_gates(gates)],
                      bytes_published=published.bytes_uploaded)

    with stage(f"predict ({predict_sessions} OTTO sessions through the model bundle)", memory, results) as record:
        sample = eval_sessions.orderBy("session").limit(predict_sessions).toPandas()
        otto = pd.DataFrame({"session": sample["session"],
                             "events": sample["prefix"].map(lambda p: [{"aid": e["aid"], "ts": e["ts"], "type": e["type"]} for e in p])})
        started = time.perf_counter()
        sessions = prefixes_from_events(spark.createDataFrame(otto_sessions_to_long(otto)))
        rows = Bundle(bundle_dir).recommend(sessions).toPandas()
        record.update(rows=len(rows), sessions_per_second=round(len(otto) / (time.perf_counter() - started), 1))


def prepare_next_week(spark, lake: Lake, raw_dir: Path, weeks: list[Week]) -> Week:
    """W+1's events, sessions and evaluation split, as its own assets would write them (not timed)."""
    started = time.perf_counter()
    next_week = weeks[-1].shift(1)
    ingest_week(spark, lake, raw_dir, next_week)
    history_weeks = Settings.from_env().history_weeks
    materialize_sessions_week(spark, lake, next_week, [*weeks, next_week][-(history_weeks + 1):], 500)
    write_evaluation_split(spark, lake, next_week)
    print(json.dumps({"prepared": "W+1's events, sessions and evaluation split (not timed)", "week": next_week.key,
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return next_week


def forward_score(lake_dir: Path, workdir: Path, week: Week) -> dict:
    """The bench's bundle scored on W+1 by `bench/bench_forward.py` (its own Spark and `recsys predict`)."""
    report = workdir / "forward.json"
    subprocess.run([sys.executable, str(Path(__file__).with_name("bench_forward.py")), "--lake", str(lake_dir),
                    "--week", week.key, "--bundle", str(workdir / "bundle"), "--json", str(report)], check=True)
    return json.loads(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--driver-memory", default=None, help="default: the project's Spark defaults")
    parser.add_argument("--workdir", default=str(PROJECT_ROOT / "data" / "bench"))
    parser.add_argument("--stages", default="ingest,sources,ranking", help="comma list of: ingest, sources, ranking")
    parser.add_argument("--predict-sessions", type=int, default=20_000)
    parser.add_argument("--reuse", action="store_true", help="keep source tables a previous run left in the lake")
    parser.add_argument("--forward", action="store_true",
                        help="also score the bundle on the week after the timed one (generates one more week)")
    parser.add_argument("--json", help="write total_seconds, python_peak_mb, jvm_peak_mb and stages to this file")
    args = parser.parse_args()

    if args.forward and not {"ingest", "ranking"} <= set(args.stages.split(",")):
        parser.error("--forward needs the ingest and ranking stages (the extra week's raw files and the bundle)")
    workdir = Path(args.workdir)
    raw_dir, lake_dir = workdir / "raw", workdir / "lake"
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}", flush=True)
    stages = set(args.stages.split(","))
    if "ingest" in stages:
        generation = ensure_raw(raw_dir, args.sessions, args.weeks + int(args.forward), args.seed)
        print(json.dumps({"stage": "generate", "sessions": args.sessions, "events": generation["events"],
                          "seconds": generation.get("bench_seconds", generation.get("seconds"))}), flush=True)
    if "ingest" in stages:
        shutil.rmtree(lake_dir, ignore_errors=True)
    spark = build_spark_session(
        "local[*]",
        {**({"spark.driver.memory": args.driver_memory} if args.driver_memory else {}),
         "spark.ui.enabled": "false", "spark.local.dir": str(workdir / "spark-local")},
        app_name="session-recsys-bench",
    )
    memory = PeakMemory(spark.sparkContext._gateway.proc.pid)
    lake = Lake(str(lake_dir))
    weeks = [Week.parse(START, TIMEZONE).shift(i) for i in range(args.weeks)]
    results: list[dict] = []

    if "ingest" in stages:
        run_ingest(spark, lake, raw_dir, weeks, memory, results)
        prepare_labelled_weeks(spark, lake, workdir, weeks, memory)
    if "sources" in stages:
        run_sources(spark, lake, workdir, weeks, memory, results, reuse=args.reuse)
    if "ranking" in stages:
        run_ranking(spark, lake, workdir, weeks, memory, results, args.predict_sessions)

    memory.stop()
    if args.forward:
        prepare_next_week(spark, lake, raw_dir, weeks)
        release_driver_heap(spark)  # the stopped session's JVM lives on beside the forward run's two
    spark.stop()
    python_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"summary": results, "python_lifetime_peak_mb": round(python_peak)}, indent=2))
    report = bench_report(results, args.sessions)
    if args.json:  # the retrain's numbers first: they stay written if the forward scoring fails
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.forward:
        forward = forward_score(lake_dir, workdir, weeks[-1])
        report["forward"] = {key: forward[key] for key in ("week", "scored_week", "sessions", "forward", "forward_hand_rule", "gain")}
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def bench_report(results: list[dict], sessions: int) -> dict:
    """The bench's JSON contract: the timed stages' total and peaks, and each stage's own numbers.
    The predict stage measures serving throughput and is not part of the retrain's total."""
    stages = {record["stage"]: {key: value for key, value in record.items() if key != "stage"} for record in results}
    return {
        "sessions": sessions,
        "total_seconds": round(sum(record["seconds"] for record in results if not record["stage"].startswith("predict")), 1),
        "python_peak_mb": max((record["python_peak_mb"] for record in results), default=0),
        "jvm_peak_mb": max((record["jvm_peak_mb"] for record in results), default=0),
        "peak_sum_mb": max((record["peak_sum_mb"] for record in results), default=0),
        "stages": stages,
    }


if __name__ == "__main__":
    sys.exit(main())
