"""Materialize the weekly job for every week found in the raw landing zone, oldest first.

`make demo` uses this so a fresh checkout ends with real runs in the local Dagster
instance ($DAGSTER_HOME, default the project's dagster_home/, whose pools every launch shares):
open `dagster dev` afterwards and they are all there. For
launching from the UI or over GraphQL, use a backfill of `weekly_recommender` instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from dagster import DagsterInstance

from assets.partitions import weekly_partitions
from pipelines.config import Settings, with_dagster_home
from pipelines.raw import is_s3_uri, raw_week_exists
from pipelines.weeks import Week


def landed_weeks(settings: Settings, s3_client=None) -> list[str]:
    """Partition keys with raw data, in order."""
    return [
        key for key in weekly_partitions.get_partition_keys()
        if raw_week_exists(settings.raw_uri, Week.parse(key, settings.timezone), s3_client=s3_client)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weeks", nargs="*", help="partition keys (default: every landed week)")
    parser.add_argument(
        "--keep-going", action="store_true",
        help="after a failed week, go on with the next ones (a week's sources read only earlier weeks' events, "
             "not their models); exit 1 only if the last week failed",
    )
    args = parser.parse_args(argv)

    from definitions import defs
    from resources import s3_resource

    settings = Settings.from_env()
    s3_client = s3_resource(settings).get_client() if is_s3_uri(settings.raw_uri) else None
    weeks = args.weeks or landed_weeks(settings, s3_client)
    if not weeks:
        print(f"no landed weeks under {settings.raw_uri}: run `recsys generate` or `recsys land` first", file=sys.stderr)
        return 1
    job = defs.resolve_job_def("weekly_recommender")
    os.environ["DAGSTER_HOME"] = with_dagster_home(dict(os.environ))["DAGSTER_HOME"]
    print(f"Dagster instance: {os.environ['DAGSTER_HOME']}", flush=True)
    instance = DagsterInstance.get()
    failed_weeks = []
    for key in weeks:
        print(f"materializing week {key} ...", flush=True)
        result = job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)
        failed_checks = [
            evaluation.check_name
            for evaluation in result.get_asset_check_evaluations()
            if not evaluation.passed
        ]
        if not result.success or failed_checks:
            print(f"week {key}: run {result.run_id} failed (failed checks: {failed_checks or 'none'}); "
                  "open the Dagster UI for details", file=sys.stderr)
            if not args.keep_going:
                return 1
            failed_weeks.append(key)
            continue
        print(f"week {key}: run {result.run_id} succeeded", flush=True)
    if failed_weeks:
        print(f"failed weeks: {failed_weeks}; the last week {'failed' if weeks[-1] in failed_weeks else 'succeeded'}",
              file=sys.stderr)
    return 1 if weeks[-1] in failed_weeks else 0


if __name__ == "__main__":
    sys.exit(main())
