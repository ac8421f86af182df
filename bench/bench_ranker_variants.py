"""The ranker's out-of-fold score on a prepared lake's week under configuration variants.

Every variant trains and scores the same rows against the same labels (`evaluate_ranker`, as the
`ranker` stage does, without MLflow), so differences come from the variant alone. A bench lake
(`bench/bench.py --workdir DIR`) has the weeks it needs.

    python bench/bench_ranker_variants.py --lake data/bench-200000/lake --week 2022-08-22 \\
        --variants '{"base": {}, "cuts": {"training_cuts": true}, "150 rounds": {"config": {"num_boost_round": 150}}}' \\
        --out data/bench-200000/variants.jsonl

A variant is `{"config": {RankerConfig field: value}, "training_cuts": bool}`; training cuts are
read from the lake (`RECSYS_TRAINING_CUTS` when the weeks were built). One JSON line per variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from pipelines.config import DEFAULT_TIMEZONE  # noqa: E402
from pipelines.evaluation import EVAL_LABELS_TABLE, labels_long  # noqa: E402
from pipelines.features import FEATURES_TABLE  # noqa: E402
from pipelines.lake import Lake  # noqa: E402
from pipelines.popularity import TOP_SELLERS_TABLE  # noqa: E402
from pipelines.ranker import RankerConfig, earlier_labelled_weeks, evaluate_ranker, training_cuts_of_weeks  # noqa: E402
from pipelines.spark import build_spark_session  # noqa: E402
from pipelines.weeks import Week  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--week", required=True, help="the labelled week to score (YYYY-MM-DD)")
    parser.add_argument("--variants", required=True, help="JSON object: name -> variant")
    parser.add_argument("--out", required=True, help="JSON lines, appended")
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE)
    args = parser.parse_args(argv)

    spark = build_spark_session("local[*]", {"spark.ui.enabled": "false"}, app_name="bench-ranker-variants")
    lake = Lake(args.lake)
    week = Week.parse(args.week, args.timezone)
    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    for name, variant in json.loads(args.variants).items():
        config = dataclasses.replace(RankerConfig(), **variant.get("config", {}))
        earlier, _ = earlier_labelled_weeks(spark, lake, week, config)
        cuts = {}
        if variant.get("training_cuts"):
            cuts, _ = training_cuts_of_weeks(spark, lake, [week.shift(-back) for back in range(config.label_weeks)])
        started = time.perf_counter()
        evaluation = evaluate_ranker(read(FEATURES_TABLE), labels_long(read(EVAL_LABELS_TABLE)),
                                     lake.read_partition(spark, TOP_SELLERS_TABLE, week.shift(-1)), config,
                                     earlier_weeks=list(earlier.values()), training_cuts=list(cuts.values()))
        evaluation.release()
        ranker = evaluation.metrics["ranker"]
        row = {"variant": name, "score": round(ranker["score"], 4),
               **{t: round(ranker[f"recall_{t}"], 4) for t in ("clicks", "carts", "orders")},
               "hand_rule": round(evaluation.metrics["baseline_covisitation"]["score"], 4),
               "rounds": {t: r.rounds for t, r in evaluation.results.items()},
               "training_cut_weeks": len(cuts), "seconds": round(time.perf_counter() - started, 1)}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
