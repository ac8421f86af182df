"""The code location: assets, checks, jobs and the resources of the current environment."""

from __future__ import annotations

from collections.abc import Mapping

from dagster import Definitions, in_process_executor, load_asset_checks_from_modules, load_assets_from_modules

import assets.als
import assets.candidates
import assets.covisitation
import assets.eval_split
import assets.events
import assets.features
import assets.ranker
import assets.recommendations
import assets.sessions
import assets.top_sellers
from jobs import ingest_job, weekly_recommender_job
from jobs.alerts import run_failure_alert
from jobs.schedules import late_raw_week_sensor, weekly_recommender_schedule
from resources import build_resources

STAGE_MODULES = [
    assets.events,
    assets.sessions,
    assets.eval_split,
    assets.top_sellers,
    assets.covisitation,
    assets.als,
    assets.candidates,
    assets.features,
    assets.ranker,
    assets.recommendations,
]


def build_definitions(resources: Mapping[str, object] | None = None) -> Definitions:
    """The whole graph; tests pass their own resources, the code location uses the environment's."""
    return Definitions(
        assets=[assets.events.raw_jsonl, *load_assets_from_modules(STAGE_MODULES)],
        asset_checks=load_asset_checks_from_modules(STAGE_MODULES),
        jobs=[weekly_recommender_job, ingest_job],
        schedules=[weekly_recommender_schedule],
        sensors=[late_raw_week_sensor, run_failure_alert],
        resources=dict(resources) if resources is not None else build_resources(),
        # Also the executor of the implicit asset job that `dagster asset materialize` and the UI's
        # "Materialize selected" run: steps share the run's one Spark driver. The multiprocess
        # default would start a process and a JVM per step, several at once, each sized for the
        # whole machine.
        executor=in_process_executor,
    )


defs = build_definitions()
