"""The weekly schedule targets the week that just ended and skips while its raw folder is missing."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pytest
from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)
from dagster_aws.s3 import S3Resource

from jobs import WEEKLY_JOB_NAME
from jobs.schedules import (
    LATE_RAW_SENSOR_NAME,
    SCHEDULE_NAME,
    late_raw_week_sensor,
    late_week_run_requests,
    schedule_default_status,
    week_just_ended,
    weekly_recommender_schedule,
)
from resources import PipelineConfigResource
from tests.conftest import TIMEZONE
from tests.processes import free_port

BERLIN = ZoneInfo(TIMEZONE)


def land_week(raw_dir, key: str, name: str = "part-00000.jsonl") -> None:
    folder = raw_dir / f"week={key}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text('{"session": 1, "events": [{"aid": 1, "ts": 1659312000000, "type": "clicks"}]}\n')


def evaluate(raw_uri: str, when: dt.datetime, s3: S3Resource | None = None):
    resources = {
        "pipeline_config": PipelineConfigResource(raw_uri=raw_uri, timezone=TIMEZONE, partition_start="2022-08-01"),
        "s3": s3 or S3Resource(region_name="us-east-1"),
    }
    with build_schedule_context(scheduled_execution_time=when, resources=resources) as context:
        return weekly_recommender_schedule(context)


def test_schedule_definition():
    assert weekly_recommender_schedule.name == SCHEDULE_NAME
    assert weekly_recommender_schedule.job_name == WEEKLY_JOB_NAME
    assert weekly_recommender_schedule.cron_schedule == "0 3 * * 1"
    assert weekly_recommender_schedule.execution_timezone == TIMEZONE
    assert weekly_recommender_schedule.default_status == DefaultScheduleStatus.RUNNING
    assert late_raw_week_sensor.name == LATE_RAW_SENSOR_NAME
    assert late_raw_week_sensor.default_status == DefaultSensorStatus.STOPPED


@pytest.mark.parametrize("value, status", [("", "RUNNING"), ("on", "RUNNING"), ("off", "STOPPED"), (" Stopped ", "STOPPED")])
def test_default_status_from_the_environment(value, status):
    assert schedule_default_status(value) == DefaultScheduleStatus[status]
    with pytest.raises(ValueError, match="RECSYS_SCHEDULE_DEFAULT"):
        schedule_default_status("sometimes")


def test_week_just_ended_in_the_pipeline_time_zone():
    # Monday 03:00 Berlin is still Sunday 01:00 UTC: the week is that of the Berlin Monday.
    assert week_just_ended(dt.datetime(2022, 8, 8, 3, 0, tzinfo=BERLIN), TIMEZONE).key == "2022-08-01"
    assert week_just_ended(dt.datetime(2022, 8, 8, 1, 0, tzinfo=dt.timezone.utc), TIMEZONE).key == "2022-08-01"
    assert week_just_ended(dt.datetime(2022, 8, 7, 21, 30, tzinfo=dt.timezone.utc), TIMEZONE).key == "2022-07-25"
    # Across the end of summer time.
    assert week_just_ended(dt.datetime(2022, 10, 31, 3, 0, tzinfo=BERLIN), TIMEZONE).key == "2022-10-24"


def test_schedule_targets_the_week_that_just_ended(tmp_path):
    raw_dir = tmp_path / "raw"
    land_week(raw_dir, "2022-08-01")
    land_week(raw_dir, "2022-08-08")

    request = evaluate(str(raw_dir), dt.datetime(2022, 8, 8, 3, 0, tzinfo=BERLIN))
    assert isinstance(request, RunRequest)
    assert request.partition_key == "2022-08-01" and request.run_key == "2022-08-01"

    later = evaluate(str(raw_dir), dt.datetime(2022, 8, 15, 3, 0, tzinfo=BERLIN))
    assert later.partition_key == "2022-08-08"


def test_schedule_skips_when_raw_is_missing(tmp_path):
    raw_dir = tmp_path / "raw"
    land_week(raw_dir, "2022-08-01")
    (raw_dir / "week=2022-08-08").mkdir()  # an empty folder is a missing week
    (raw_dir / "week=2022-08-08" / "_SUCCESS").touch()

    skip = evaluate(str(raw_dir), dt.datetime(2022, 8, 15, 3, 0, tzinfo=BERLIN))
    assert isinstance(skip, SkipReason)
    assert skip.skip_message == f"raw folder for week=2022-08-08 is missing at {raw_dir}"

    before_start = evaluate(str(raw_dir), dt.datetime(2022, 8, 1, 3, 0, tzinfo=BERLIN))
    assert isinstance(before_start, SkipReason) and "before the first partition 2022-08-01" in before_start.skip_message


def test_schedule_checks_an_s3_landing_zone(tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Resource(endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        bucket = f"landing-{uuid.uuid4().hex[:8]}"
        client = s3.get_client()
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="raw/week=2022-08-01/part-0.jsonl.gz", Body=b"...")

        request = evaluate(f"s3://{bucket}/raw", dt.datetime(2022, 8, 8, 3, 0, tzinfo=BERLIN), s3)
        assert isinstance(request, RunRequest) and request.partition_key == "2022-08-01"
        skip = evaluate(f"s3://{bucket}/raw", dt.datetime(2022, 8, 15, 3, 0, tzinfo=BERLIN), s3)
        assert skip.skip_message == f"raw folder for week=2022-08-08 is missing at s3://{bucket}/raw"
    finally:
        server.stop()
        server._server.server_close()


def test_late_raw_sensor_requests_weeks_that_landed_late_and_never_ran(tmp_path):
    raw_dir = tmp_path / "raw"
    config = PipelineConfigResource(raw_uri=str(raw_dir), timezone=TIMEZONE, partition_start="2022-08-01")
    now = dt.datetime(2022, 8, 17, 12, 0, tzinfo=BERLIN)  # a Wednesday: weeks 08-01 and 08-08 have ended
    no_s3 = lambda: None  # noqa: E731 - a local landing zone needs no client

    assert late_week_run_requests(now, config, no_s3, has_run=lambda key: False) == []
    land_week(raw_dir, "2022-08-01")
    land_week(raw_dir, "2022-08-08")
    requests = late_week_run_requests(now, config, no_s3, has_run=lambda key: False)
    assert [(r.partition_key, r.run_key) for r in requests] == [
        ("2022-08-01", "late-raw-2022-08-01"), ("2022-08-08", "late-raw-2022-08-08")
    ]
    ran = {"2022-08-01"}
    assert [r.partition_key for r in late_week_run_requests(now, config, no_s3, has_run=ran.__contains__)] == ["2022-08-08"]


def test_late_raw_sensor_evaluates(tmp_path):
    # Today's recently ended weeks have no raw folder here: the sensor skips, touching only the instance.
    resources = {
        "pipeline_config": PipelineConfigResource(raw_uri=str(tmp_path / "raw"), timezone=TIMEZONE, partition_start="2022-08-01"),
        "s3": S3Resource(region_name="us-east-1"),
    }
    with build_sensor_context(instance=DagsterInstance.ephemeral(), resources=resources) as context:
        result = late_raw_week_sensor(context)
    assert isinstance(result, SkipReason)


def test_definitions_wire_the_schedule_and_sensor():
    from dagster import Definitions

    from definitions import defs

    Definitions.validate_loadable(defs)
    assert defs.resolve_schedule_def(SCHEDULE_NAME).job_name == WEEKLY_JOB_NAME
    assert defs.resolve_sensor_def(LATE_RAW_SENSOR_NAME).job_name == WEEKLY_JOB_NAME
