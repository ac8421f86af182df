"""`RECSYS_RAW_URI=s3://bucket/raw`: the `ingest` job reads a landing zone on an S3 protocol server.

The 20 real OTTO sessions are landed into the weekly layout, uploaded to a moto server, and
ingested through the same resources the code location builds (`AWS_ENDPOINT_URL` pointing at
the server); the counts must equal the local-folder run of tests/test_assets.py.
"""

from __future__ import annotations

from collections import Counter

import pytest
from dagster import DagsterInstance

from definitions import build_definitions
from jobs import INGEST_JOB_NAME
from pipelines.land import land_otto_file
from pipelines.lake import EVENTS_TABLE, Lake
from pipelines.raw import list_readable_entries, list_week_entries, raw_week_exists
from pipelines.weeks import Week
from tests.conftest import TIMEZONE, make_resources
from tests.processes import free_port
from tests.test_assets import FIXTURE_WEEKS, LOOSE_DRIFT, checks_by_name, materialized


@pytest.fixture
def moto_env(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    try:
        yield endpoint
    finally:
        server.stop()
        server._server.server_close()


def test_ingest_job_reads_an_s3_landing_zone(spark, tmp_path, otto_sample, moto_env):
    """Raw weeks read from an S3 landing zone (moto's server) through the ingest job: listing, markers and
    sibling prefixes, staging with boto3; `test_real_otto_sessions_flow_through_land_events_and_sessions`
    covers the same job on a folder, so two weeks suffice here."""
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    assert land_otto_file(otto_sample, raw_dir, timezone=TIMEZONE)["events"] == 862

    resources = make_resources("s3://landing/raw", str(lake_dir), **LOOSE_DRIFT)
    s3 = resources["s3"].get_client()
    assert s3.meta.endpoint_url == moto_env and s3.meta.region_name == "us-east-1"
    s3.create_bucket(Bucket="landing")
    uploaded = 0
    for path in sorted(raw_dir.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "landing", f"raw/{path.relative_to(raw_dir).as_posix()}")
            uploaded += 1
    # A marker object and a sibling prefix must not be taken for raw data of a week.
    s3.put_object(Bucket="landing", Key="raw/week=2022-08-01/_SUCCESS", Body=b"")
    s3.put_object(Bucket="landing", Key="raw-old/week=2022-08-01/part-0.jsonl", Body=b"{broken\n")
    weeks = {key: Week.parse(key, TIMEZONE) for key in FIXTURE_WEEKS}
    assert sum(len(list_readable_entries("s3://landing/raw", w, s3)) for w in weeks.values()) == uploaded
    marker = next(e for e in list_week_entries("s3://landing/raw", weeks["2022-08-01"], s3) if e.relative == "_SUCCESS")
    assert marker.skip_reason == "hidden"
    assert not raw_week_exists("s3://landing/raw", Week.parse("2022-08-29", TIMEZONE), s3_client=s3)

    definitions = build_definitions(resources)
    instance = DagsterInstance.ephemeral()
    lake = Lake(str(lake_dir))
    totals: Counter = Counter()
    ingested = dict(list(FIXTURE_WEEKS.items())[:2])
    for key, expected_events in ingested.items():
        result = definitions.resolve_job_def(INGEST_JOB_NAME).execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False
        )
        assert result.success, key
        assert materialized(result) == {"events", "sessions"}
        assert all(evaluation.passed for evaluation in checks_by_name(result).values()), key
        stats = lake.read_stats(EVENTS_TABLE, weeks[key])
        assert stats["events"] == expected_events and stats["quarantined"] == 0, key
        totals.update(stats["events_by_type"])
        events_metadata = next(
            e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "events"
        ).materialization.metadata
        assert events_metadata["raw_files"].value == len(list_readable_entries("s3://landing/raw", weeks[key], s3))
        assert [f["source"] for f in events_metadata["skipped_files"].value] == (
            ["s3://landing/raw/week=2022-08-01/_SUCCESS"] if key == "2022-08-01" else []
        )
    assert sum(totals.values()) == sum(ingested.values())


def test_missing_s3_week_fails_with_the_uri(spark, tmp_path, moto_env):
    # moto keeps its buckets per process: a bucket of its own, with no week in it.
    resources = make_resources("s3://empty-landing/raw", str(tmp_path / "lake"))
    resources["s3"].get_client().create_bucket(Bucket="empty-landing")
    result = build_definitions(resources).resolve_job_def(INGEST_JOB_NAME).execute_in_process(
        partition_key="2022-08-01", instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no raw files for week 2022-08-01 under s3://empty-landing/raw/week=2022-08-01/" in str(failure.event_specific_data.error)
