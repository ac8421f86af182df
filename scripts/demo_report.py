"""Printed at the end of `make demo`: what was built, where it is, how to look at it."""

from __future__ import annotations

import os

from pipelines.config import Settings
from pipelines.lake import EVENTS_TABLE, SESSIONS_TABLE, Lake
from pipelines.weeks import week_of_folder


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
    print(f"Dagster instance : {os.environ.get('DAGSTER_HOME')}")
    print(f"MLflow tracking  : {settings.mlflow_tracking_uri}")
    print("\nOpen the Dagster UI (asset graph, runs, checks, backfills):  make dev        -> http://127.0.0.1:3000")
    print("Open the MLflow UI (runs per week, registered models):       make mlflow-ui  -> http://127.0.0.1:5000")


if __name__ == "__main__":
    main()
