"""Forward score: the model of week W on week W+1's sessions through `recsys predict`, against the
hand rule on the same sessions, per type.

This is the backtest of what production serves: the bundle holds W's source tables and rankers,
W+1's evaluation prefixes go in as OTTO JSONL, and both the model's CSV and the hand rule's CSV
(co-visitation candidates in `baseline_rank` order, built from the same tables) are scored by
`recsys evaluate` against W+1's labels. The lake must hold W's sources, candidates and features
(what `dagster asset materialize` or `bench/bench.py` leave) and W+1's evaluation split.

    python bench/bench_forward.py --lake data/lake --week 2022-08-22 --json data/forward.json
    python bench/bench_forward.py --lake data/lake --week 2022-08-22 --bundle path/to/bundle  # score a saved bundle
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipelines.evaluation import EVAL_LABELS_TABLE, EVAL_SESSIONS_TABLE, labels_long  # noqa: E402
from pipelines.lake import Lake  # noqa: E402
from pipelines.spark import build_spark_session, release_driver_heap  # noqa: E402
from pipelines.config import DEFAULT_TIMEZONE  # noqa: E402
from pipelines.weeks import Week  # noqa: E402

TYPES = ("clicks", "carts", "orders")


def write_otto_sessions(eval_sessions, path: Path) -> int:
    """W+1's evaluation prefixes as the OTTO test file (`{"session", "events"}` per line)."""
    count = 0
    with open(path, "w") as handle:
        for row in eval_sessions.select("session", "prefix").orderBy("session").toLocalIterator():
            events = [{"aid": int(e["aid"]), "ts": int(e["ts"]), "type": e["type"]} for e in row["prefix"]]
            handle.write(json.dumps({"session": int(row["session"]), "events": events}) + "\n")
            count += 1
    return count


def lake_without_als(spark, lake: Lake, week: Week, root: Path) -> Lake:
    """A lake that reads like `lake` except that W's similar-items table is empty and W's candidates
    and features are rebuilt from it: the ablation of the ALS source and its features."""
    from pipelines.als import SIMILAR_ITEMS_TABLE
    from pipelines.candidates import CANDIDATES_TABLE, CandidateConfig, build_candidates
    from pipelines.covisitation import COVISITATION_TABLE
    from pipelines.features import FEATURES_TABLE, ITEM_STATS_TABLE, add_features
    from pipelines.popularity import TOP_SELLERS_TABLE

    ablated = Lake(str(root))
    sources_week = week.shift(-1)  # W's rows come from W-1's sources; W's bundle carries W's
    emptied = {(SIMILAR_ITEMS_TABLE, sources_week.folder), (SIMILAR_ITEMS_TABLE, week.folder),
               (CANDIDATES_TABLE, week.folder), (FEATURES_TABLE, week.folder)}
    for table_dir in Path(lake.root).iterdir():
        if table_dir.is_dir() and not table_dir.name.startswith("_"):
            for partition in table_dir.iterdir():
                link = root / table_dir.name / partition.name
                if (table_dir.name, partition.name) not in emptied and not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(partition.resolve())
    for emptied_week in (sources_week, week):
        similar = lake.read_partition(spark, SIMILAR_ITEMS_TABLE, emptied_week)
        ablated.write_partition(similar.limit(0), SIMILAR_ITEMS_TABLE, emptied_week)
    read = lambda table, at=sources_week: ablated.read_partition(spark, table, at)  # noqa: E731
    eval_sessions = read(EVAL_SESSIONS_TABLE, week)
    config = CandidateConfig()
    ablated.write_partition(build_candidates(eval_sessions, read(COVISITATION_TABLE), read(SIMILAR_ITEMS_TABLE),
                                             read(TOP_SELLERS_TABLE), config), CANDIDATES_TABLE, week)
    ablated.write_partition(add_features(read(CANDIDATES_TABLE, week), eval_sessions.select("session", "prefix"),
                                         read(ITEM_STATS_TABLE)), FEATURES_TABLE, week)
    return ablated


def train_bundle(spark, lake: Lake, week: Week, directory: Path) -> dict:
    """Evaluate the ranker on W's labelled rows (as the `ranker` asset does: the popularity baseline from
    W-1's lists, the rows' sources) and save W's bundle with W's sources."""
    from pipelines.features import source_tables
    from pipelines.model import save_bundle
    from pipelines.ranker import RankerConfig, evaluate_week

    release_driver_heap(spark)
    started = time.perf_counter()
    from pipelines.config import Settings

    config = RankerConfig(use_training_cuts=Settings.from_env().training_cuts > 0)  # as the `ranker` asset does
    evaluation = evaluate_week(spark, lake, week, week.shift(-1), config).evaluation
    evaluation.release()
    seconds = time.perf_counter() - started
    tables_dir = lake.model_tables_dir(f"bench-forward-{week.key}")
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(tables_dir, ignore_errors=True)
    save_bundle(directory, source_tables(spark, lake, week),
                {t: r.model for t, r in evaluation.results.items()},
                {"week": week.key, "sources_week": week.key, "ranker_rounds": {t: r.rounds for t, r in evaluation.results.items()}}, tables_dir)
    ranker = evaluation.metrics["ranker"]
    return {
        "ranker_seconds": round(seconds, 1),
        "ranker_seconds_by_phase": evaluation.timings,
        "out_of_fold": {"score": round(ranker["score"], 4), **{t: round(ranker[f"recall_{t}"], 4) for t in TYPES}},
        "out_of_fold_hand_rule": round(evaluation.metrics["baseline_covisitation"]["score"], 4),
        "boosting_rounds": {t: r.rounds for t, r in evaluation.results.items()},
    }


def log_to_mlflow(bundle: Path, tracking_uri: str) -> str:
    import mlflow

    from pipelines.model import log_recommender
    from pipelines.tracking import experiment_id

    with mlflow.start_run(experiment_id=experiment_id(tracking_uri, "bench-forward")):
        return log_recommender(bundle).model_uri


def hand_rule_csv(spark, bundle: Path, next_sessions, path: Path) -> None:
    """The hand rule's lists for the same sessions, from the bundle's own tables (as the warm-up
    week publishes them: `hand_rule_recommendations`)."""
    from pyspark.sql import functions as F

    from pipelines.metrics import spark_write_predictions_csv
    from pipelines.model import Bundle
    from pipelines.recommendations import hand_rule_recommendations

    opened = Bundle(bundle)
    lists = hand_rule_recommendations(next_sessions, opened.tables(spark), opened.candidate_config)
    ranked = lists.select("session", "type", F.posexplode("recs").alias("position", "aid")).select(
        "session", "type", "aid", (F.col("position") + 1).alias("rank"))
    spark_write_predictions_csv(ranked, path)


def recsys(*args: str) -> dict:
    """Run the `recsys` CLI as an operator would; it prints one JSON object."""
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env={**os.environ, "GX_ANALYTICS_ENABLED": "False"})
    if done.returncode != 0:
        raise RuntimeError(f"recsys {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])


def rounded(metrics: dict) -> dict:
    return {"score": round(metrics["score"], 4), **{t: round(metrics[f"recall_{t}"], 4) for t in TYPES}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--week", required=True, help="the training week W (its Monday); W+1 is scored")
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    parser.add_argument("--bundle", default=None, help="score this saved bundle instead of training one on W")
    parser.add_argument("--without-als", action="store_true",
                        help="ablation: W's similar items emptied, its candidates and features rebuilt (in the workdir)")
    parser.add_argument("--workdir", default=None, help="default: <lake>/_bench_forward/<week>")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args()

    lake, week = Lake(args.lake), Week.parse(args.week, args.timezone)
    next_week = week.shift(1)
    workdir = Path(args.workdir or Path(args.lake) / "_bench_forward" / week.key)
    workdir.mkdir(parents=True, exist_ok=True)
    spark = build_spark_session("local[*]", {"spark.ui.enabled": "false"}, app_name="bench-forward")
    report: dict = {"week": week.key, "scored_week": next_week.key, "without_als": args.without_als}
    if args.without_als:
        started = time.perf_counter()
        lake = lake_without_als(spark, lake, week, workdir / "lake")
        report["rebuild_seconds"] = round(time.perf_counter() - started, 1)
    if args.bundle:
        bundle = Path(args.bundle)
    else:
        bundle = workdir / "bundle"
        report.update(train_bundle(spark, lake, week, bundle))
    report["python_peak_mb_through_training"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    next_sessions = lake.read_partition(spark, EVAL_SESSIONS_TABLE, next_week).select("session", "prefix")
    sessions_file, labels_file = workdir / "sessions.jsonl", workdir / "labels.jsonl"
    report["sessions"] = write_otto_sessions(next_sessions, sessions_file)
    from pipelines.metrics import spark_write_labels_jsonl

    spark_write_labels_jsonl(labels_long(lake.read_partition(spark, EVAL_LABELS_TABLE, next_week)), labels_file)
    hand_rule_csv(spark, bundle, next_sessions, workdir / "hand_rule.csv")
    spark.stop()  # `recsys predict` starts its own Spark, as it would on an operator's machine

    model_uri = log_to_mlflow(bundle, f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    started = time.perf_counter()
    predicted = recsys("predict", "--sessions", str(sessions_file), "--out", str(workdir / "model.csv"),
                       "--model-uri", model_uri)
    report["predict_seconds"] = round(time.perf_counter() - started, 1)
    report["predict"] = predicted
    model = recsys("evaluate", "--labels", str(labels_file), "--predictions", str(workdir / "model.csv"))
    hand = recsys("evaluate", "--labels", str(labels_file), "--predictions", str(workdir / "hand_rule.csv"))
    report["forward"] = rounded(model)
    report["forward_hand_rule"] = rounded(hand)
    report["gain"] = {name: round(report["forward"][name] - report["forward_hand_rule"][name], 4)
                      for name in ("score", *TYPES)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
