"""Materialize the Spark stages for a few weeks in a process of their own, with the environment's resources.

Tests run this as a subprocess when they need a SparkContext other than the suite's
session-scoped local one (Spark allows one per process): a standalone cluster, another
master. Configuration comes from the environment exactly as in the code location
(`RECSYS_RAW_URI`, `RECSYS_LAKE_DIR`, `SPARK_MASTER`, `MLFLOW_TRACKING_URI`, ...); extra
Spark settings go through the run config of the `spark` resource, as an operator would
pass them in the launchpad.

    python -m tests.spark_stages --ingest-weeks 2022-08-01 --graph-weeks 2022-08-08 \
        --spark-conf spark.sql.shuffle.partitions=3 --result result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")

INGEST_ASSETS = ["events", "sessions"]
# What a later week's ranker reads of an earlier week (its labelled rows): events through features.
FEATURE_ASSETS = ["events", "sessions", "eval_split", "top_sellers", "covisitation", "als", "candidates", "features"]
# Every asset of the graph, from events to the published tables.
GRAPH_ASSETS = [
    "events", "sessions", "eval_split", "top_sellers", "covisitation", "als", "candidates", "features", "ranker",
    "recommendation_tables", "published_recommendations",
]
# Small and fast: the stage logic is the same at the default rank.
FAST_ALS = {"rank": 8, "max_iter": 4, "similarity_blocks": 2}


def materialize(definitions, plan: list[tuple[str, list[str]]], run_config: dict | None = None,
                instance=None) -> list[dict]:
    """Run each (week, asset names) of `plan` as one in-process Dagster run; returns each run's outcome.

    The assets' blocking checks always run: they are part of each asset (write-audit-publish).
    """
    from dagster import AssetSelection, DagsterInstance, define_asset_job, in_process_executor

    run_config = run_config or {}
    instance = instance or DagsterInstance.ephemeral()
    runs = []
    for week, asset_names in plan:
        job = define_asset_job(
            f"stages_{'_'.join(sorted(asset_names))}",
            selection=AssetSelection.assets(*asset_names),
            executor_def=in_process_executor,
        ).resolve(asset_graph=definitions.resolve_asset_graph())
        # Only selected ops may take config.
        config = {**run_config, "ops": {op: c for op, c in run_config.get("ops", {}).items() if op in asset_names}}
        result = job.execute_in_process(partition_key=week, instance=instance, run_config=config, raise_on_error=False)
        runs.append({
            "week": week,
            "run_id": result.run_id,
            "success": result.success,
            "materialized": sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}),
            "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()},
            "failures": [
                str(e.step_failure_data.error.message if e.step_failure_data.error else e.message)
                for e in result.all_events if e.is_step_failure
            ],
        })
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingest-weeks", nargs="*", default=[], help="weeks to materialize events and sessions for")
    parser.add_argument("--feature-weeks", nargs="*", default=[], help="weeks to materialize events through features for")
    parser.add_argument("--graph-weeks", nargs="*", default=[], help="weeks to materialize every asset for")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help="Spark setting, passed as run config of the `spark` resource")
    parser.add_argument("--result", required=True, help="JSON file to write the runs' outcome to")
    args = parser.parse_args(argv)

    from definitions import build_definitions
    from pipelines.config import Settings
    from resources import build_resources

    settings = Settings.from_env()
    definitions = build_definitions(build_resources(settings))
    # Only `conf`, as an operator would set it in the launchpad: the master comes from SPARK_MASTER.
    spark_config = {"conf": dict(item.split("=", 1) for item in args.spark_conf)}
    run_config = {"ops": {"als": {"config": FAST_ALS}}, "resources": {"spark": {"config": spark_config}}}
    plan = ([(week, INGEST_ASSETS) for week in args.ingest_weeks] + [(week, FEATURE_ASSETS) for week in args.feature_weeks]
            + [(week, GRAPH_ASSETS) for week in args.graph_weeks])
    runs = materialize(definitions, plan, run_config)
    for run in runs:
        print(json.dumps(run), flush=True)
    with open(args.result, "w") as handle:
        json.dump({"spark_master": settings.spark_master, "runs": runs}, handle, indent=2)
    return 0 if all(run["success"] and all(run["checks"].values()) for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
