"""Exact versus clustered (inverted-file) similar items on a lake week's ALS item factors.

Prints, for each method, its seconds, then how many of the exact top-k pairs the clustered search
found and the ALS candidate source's recall@20 on the week's evaluation sessions with either
table (what the candidates and features read), so the approximation's cost in quality is
measured where it matters.

    python bench/bench_similar_items.py --lake data/bench/lake --week 2022-08-22 [--probes 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.als import ALS_ITEM_FACTORS_TABLE, AlsConfig, similar_items, similarity_clusters  # noqa: E402
from pipelines.candidates import (  # noqa: E402
    CandidateConfig,
    neighbour_scores,
    neighbour_sources,
    partitioned_by_session,
    similar_item_neighbours,
    weighted_history,
    with_source_rank,
)
from pipelines.evaluation import EVAL_LABELS_TABLE, EVAL_SESSIONS_TABLE, labels_long  # noqa: E402
from pipelines.lake import Lake  # noqa: E402
from pipelines.metrics import spark_score  # noqa: E402
from pipelines.spark import build_spark_session  # noqa: E402
from pipelines.vocabulary import EVENT_TYPES  # noqa: E402
from pipelines.weeks import Week  # noqa: E402


def als_source_recall(spark, eval_sessions, table_dir: str, labels) -> dict:
    """Recall@20 of the ALS candidate source alone (its own top 20) on the evaluation sessions."""
    config = CandidateConfig()
    history = weighted_history(partitioned_by_session(eval_sessions.select("session", "prefix")), config.max_prefix_events)
    from pyspark.sql import functions as F

    scored = neighbour_scores(neighbour_sources(history), similar_item_neighbours(spark.read.parquet(table_dir)))
    ranked = with_source_rank(scored, "als_similarity", "als", config.als).where(F.col("als_rank").isNotNull())
    # The source proposes the same list for every type.
    types = F.broadcast(spark.createDataFrame([(t,) for t in EVENT_TYPES], "type STRING"))
    candidates = ranked.crossJoin(types).select("session", "type", "aid", F.col("als_rank").alias("rank"))
    metrics = spark_score(candidates, labels)
    return {name: round(value, 4) for name, value in metrics.items() if name.startswith("recall_") or name == "score"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", required=True)
    parser.add_argument("--week", required=True)
    parser.add_argument("--probes", type=int, default=AlsConfig.similarity_probes)
    parser.add_argument("--out", default=None, help="folder for the two tables (default: <lake>/_bench_similar_items)")
    args = parser.parse_args()

    spark = build_spark_session("local[*]", {"spark.ui.enabled": "false"}, app_name="bench-similar-items")
    lake, week = Lake(args.lake), Week.parse(args.week, "Europe/Berlin")
    out = Path(args.out or Path(args.lake) / "_bench_similar_items")
    item_factors = lake.read_partition(spark, ALS_ITEM_FACTORS_TABLE, week)
    n_items = item_factors.count()
    report: dict = {"items": n_items, "clusters": similarity_clusters(n_items), "probes": args.probes}
    methods = {
        "exact": replace(AlsConfig(), exact_similarity_max_items=n_items),
        "clustered": replace(AlsConfig(), exact_similarity_max_items=0, similarity_probes=args.probes),
    }
    for name, config in methods.items():
        started = time.perf_counter()
        similar_items(item_factors, config).write.mode("overwrite").parquet(str(out / name))
        report[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps({"method": name, "seconds": report[f"{name}_seconds"]}), flush=True)

    exact, clustered = (spark.read.parquet(str(out / name)) for name in methods)
    report["exact_pairs_found"] = round(
        exact.join(clustered, ["aid", "neighbour"], "left_semi").count() / max(exact.count(), 1), 4)
    eval_sessions = lake.read_partition(spark, EVAL_SESSIONS_TABLE, week)
    labels = labels_long(lake.read_partition(spark, EVAL_LABELS_TABLE, week))
    for name in methods:
        report[f"als_source_recall_{name}"] = als_source_recall(spark, eval_sessions, str(out / name), labels)
    print(json.dumps(report, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
