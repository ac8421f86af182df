"""Printed at the end of `make demo`: what was built, where it is, how to look at it."""

from __future__ import annotations

import os
import tempfile

from pipelines.config import Settings
from pipelines.lake import EVENTS_TABLE, SESSIONS_TABLE, Lake
from pipelines.weeks import week_of_folder


def print_models_and_publication(settings: Settings, lake: Lake) -> None:
    import pandas as pd

    from pipelines.publish import PUBLISHED_TABLES, download_table, read_latest, read_manifest
    from resources import s3_resource

    ranker_dir = lake.table_dir("ranker")
    print("\nweekly evaluation (OTTO score of out-of-fold predictions; baselines on the same sessions):")
    for folder in sorted(ranker_dir.iterdir()) if ranker_dir.is_dir() else []:
        week = week_of_folder(folder.name, settings.timezone)
        stats = lake.read_stats("ranker", week) if week else None
        if not stats:
            continue
        metrics, gate = stats["metrics"], stats["gate"]
        print(f"  {week.key}: ranker {metrics['ranker']['score']:.4f}  hand-rule {metrics['baseline_covisitation']['score']:.4f}"
              f"  popularity {metrics['baseline_popularity']['score']:.4f}  -> {stats['model_name']} v{stats['model_version']}"
              f" {'promoted to champion' if gate['promoted'] else 'rejected: ' + gate['reason']}")
    s3_client = s3_resource(settings).get_client() if settings.publish_uri.startswith("s3://") else None
    latest = read_latest(settings.publish_uri, s3_client)
    print(f"\npublished tables : {settings.publish_uri}")
    if latest is None:
        print("  nothing published yet")
        return
    manifest = read_manifest(settings.publish_uri, latest["week"], s3_client)
    print(f"  _latest.json -> week {latest['week']} ({latest['manifest']}), model {manifest['model']['name']} "
          f"v{manifest['model']['version']}")
    pd.set_option("display.width", 160)
    pd.set_option("display.max_colwidth", 70)
    with tempfile.TemporaryDirectory() as scratch:
        for table in PUBLISHED_TABLES:
            files = download_table(settings.publish_uri, latest["week"], table, f"{scratch}/{table}", s3_client)
            frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            print(f"\n  {table} ({manifest['row_counts'][table]} rows), first rows:")
            print("    " + frame.head(3).to_string(index=False).replace("\n", "\n    "))


def main() -> None:
    settings = Settings.from_env()
    lake = Lake(settings.lake_dir)
    print("\n=== session-recsys demo: outputs ===")
    print(f"raw landing zone : {settings.raw_uri}")
    print(f"lake             : {settings.lake_dir}")
    for table in (EVENTS_TABLE, SESSIONS_TABLE):
        table_dir = lake.table_dir(table)
        folders = sorted(table_dir.iterdir()) if table_dir.is_dir() else []
        weeks = [week for week in (week_of_folder(p.name, settings.timezone) for p in folders) if week]
        for week in weeks:
            stats = lake.read_stats(table, week) or {}
            if table == EVENTS_TABLE:
                detail = (f"{stats.get('events')} events, {stats.get('sessions')} sessions, "
                          f"{stats.get('quarantined')} quarantined, {stats.get('duplicates_removed')} duplicates removed")
            else:
                detail = (f"{stats.get('sessions')} sessions ({stats.get('sessions_started_in_week')} new), "
                          f"{stats.get('history_events')} history events, {stats.get('trimmed_events')} trimmed")
            print(f"  {table:<9} {week.key}: {detail}  -> {lake.partition_dir(table, week)}")
    print_models_and_publication(settings, lake)
    print(f"Dagster instance : {os.environ.get('DAGSTER_HOME')}")
    print(f"MLflow tracking  : {settings.mlflow_tracking_uri}")
    print("\nOpen the Dagster UI (asset graph, runs, checks, backfills):  make dev        -> http://127.0.0.1:3000")
    print("Open the MLflow UI (runs per week, registered models):       make mlflow-ui  -> http://127.0.0.1:5000")


if __name__ == "__main__":
    main()
