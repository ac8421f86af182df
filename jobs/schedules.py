"""The weekly schedule of `weekly_recommender`, and a sensor for raw weeks that land late.

Every Monday at 03:00 in the pipeline's time zone (`RECSYS_TIMEZONE`, the zone weekly
partitions start in) the schedule requests the partition of the week that just ended: on
Monday 2022-08-08 03:00 it runs week 2022-08-01. When that week's raw folder is not in the
landing zone (`RECSYS_RAW_URI`, a folder or `s3://bucket/prefix`) the tick is skipped with
`raw folder for week=YYYY-MM-DD is missing at <raw uri>` instead of starting a run that
would fail in `events`.

The schedule starts RUNNING when the code location loads. To turn it off, toggle it in the
UI (Automation -> weekly_recommender_schedule), or set `RECSYS_SCHEDULE_DEFAULT=off` in the
code location's environment (the UI toggle, once used, wins over the default).

`late_raw_week_sensor` (STOPPED by default; turn it on in the UI where raw data may land
after Monday 03:00) checks every hour whether the raw folder of a recently ended week has
appeared while no run of any job exists for that partition yet, and requests the weekly job
for it. It looks back `LATE_RAW_LOOKBACK_WEEKS` weeks.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from zoneinfo import ZoneInfo

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SkipReason,
    schedule,
    sensor,
)
from dagster_aws.s3 import S3Resource

from assets.partitions import SETTINGS
from jobs import weekly_recommender_job
from pipelines.raw import is_s3_uri, raw_week_exists
from pipelines.weeks import Week
from resources import PipelineConfigResource

SCHEDULE_NAME = "weekly_recommender_schedule"
LATE_RAW_SENSOR_NAME = "late_raw_week_sensor"
# Mondays 03:00 in the pipeline's time zone.
SCHEDULE_CRON = "0 3 * * 1"
SCHEDULE_DEFAULT_ENV = "RECSYS_SCHEDULE_DEFAULT"
LATE_RAW_LOOKBACK_WEEKS = 2
PARTITION_TAG = "dagster/partition"
TRIGGER_TAG = "recsys/trigger"

_ON = ("", "on", "running", "true", "1", "yes")
_OFF = ("off", "stopped", "false", "0", "no")


def schedule_default_status(value: str | None = None) -> DefaultScheduleStatus:
    """RUNNING unless `RECSYS_SCHEDULE_DEFAULT` (or `value`) is off/stopped/false/0/no."""
    setting = (os.environ.get(SCHEDULE_DEFAULT_ENV, "") if value is None else value).strip().lower()
    if setting in _ON:
        return DefaultScheduleStatus.RUNNING
    if setting in _OFF:
        return DefaultScheduleStatus.STOPPED
    raise ValueError(f"{SCHEDULE_DEFAULT_ENV}={setting!r}: expected 'on' or 'off'")


def week_just_ended(moment: dt.datetime, timezone: str) -> Week:
    """The week before the one `moment` falls in, weeks starting Monday 00:00 in `timezone`."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    local = moment.astimezone(ZoneInfo(timezone))
    return Week(local.date() - dt.timedelta(days=local.weekday()), timezone).shift(-1)


def raw_missing_reason(raw_uri: str, week: Week, s3_client_factory: Callable[[], object]) -> str | None:
    """None when the week's raw folder holds raw files, else why the week cannot run."""
    client = s3_client_factory() if is_s3_uri(raw_uri) else None
    if raw_week_exists(raw_uri, week, s3_client=client):
        return None
    return f"raw folder for {week.folder} is missing at {raw_uri}"


@schedule(
    name=SCHEDULE_NAME,
    job=weekly_recommender_job,
    cron_schedule=SCHEDULE_CRON,
    execution_timezone=SETTINGS.timezone,
    default_status=schedule_default_status(),
    description=(
        "Mondays 03:00 (RECSYS_TIMEZONE): the weekly job for the week that just ended; skipped while its "
        "raw folder is missing. Off: toggle in the UI or RECSYS_SCHEDULE_DEFAULT=off."
    ),
)
def weekly_recommender_schedule(
    context: ScheduleEvaluationContext, pipeline_config: PipelineConfigResource, s3: S3Resource
):
    moment = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
    week = week_just_ended(moment, pipeline_config.timezone)
    first = pipeline_config.first_week
    if week.monday < first.monday:
        return SkipReason(f"week {week.key} is before the first partition {first.key} (RECSYS_PARTITION_START)")
    reason = raw_missing_reason(pipeline_config.raw_uri, week, s3.get_client)
    if reason:
        return SkipReason(reason)
    return RunRequest(run_key=week.key, partition_key=week.key, tags={TRIGGER_TAG: "schedule"})


def late_week_run_requests(
    now: dt.datetime,
    pipeline_config: PipelineConfigResource,
    s3_client_factory: Callable[[], object],
    has_run: Callable[[str], bool],
    lookback_weeks: int = LATE_RAW_LOOKBACK_WEEKS,
) -> list[RunRequest]:
    """Run requests for recently ended weeks whose raw data is there but which never ran."""
    latest = week_just_ended(now, pipeline_config.timezone)
    first = pipeline_config.first_week
    requests = []
    for offset in range(lookback_weeks - 1, -1, -1):
        week = latest.shift(-offset)
        if week.monday < first.monday or has_run(week.key):
            continue
        if raw_missing_reason(pipeline_config.raw_uri, week, s3_client_factory) is None:
            requests.append(
                RunRequest(run_key=f"late-raw-{week.key}", partition_key=week.key, tags={TRIGGER_TAG: LATE_RAW_SENSOR_NAME})
            )
    return requests


@sensor(
    name=LATE_RAW_SENSOR_NAME,
    job=weekly_recommender_job,
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        f"Hourly: runs the weekly job for a week of the last {LATE_RAW_LOOKBACK_WEEKS} whose raw folder landed "
        "after the schedule skipped it (no run of that partition yet)."
    ),
)
def late_raw_week_sensor(context: SensorEvaluationContext, pipeline_config: PipelineConfigResource, s3: S3Resource):
    def has_run(key: str) -> bool:
        return context.instance.get_runs_count(RunsFilter(tags={PARTITION_TAG: key})) > 0

    requests = late_week_run_requests(dt.datetime.now(dt.timezone.utc), pipeline_config, s3.get_client, has_run)
    if not requests:
        return SkipReason("no recently ended week with newly landed raw data and no run")
    return requests
