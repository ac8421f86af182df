"""A Dagster instance on PostgreSQL (the compose stack's storage) records a real materialization.

A throwaway PostgreSQL server (`tests/postgres_server.py`: Debian's package, installed if
missing) gets a `dagster` database; the instance uses the `storage:` block of
`docker/dagster.yaml` verbatim, with its `DAGSTER_POSTGRES_*` variables pointing at that
server. The ingest job then materializes the real OTTO fixture's first week through it, and
the run, the materializations and the check evaluations are read back both through the
instance API and straight from the Postgres tables.
"""

from __future__ import annotations

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from definitions import build_definitions
from jobs import INGEST_JOB_NAME
from pipelines.land import land_otto_file
from tests.conftest import REPO_ROOT, TIMEZONE, make_resources
from tests.postgres_server import postgres_server

pytestmark = pytest.mark.postgres

WEEK = "2022-08-01"
WEEK_EVENTS = 339  # events of the OTTO fixture in its first week (tests/test_assets.py)
INGEST_CHECKS = {"events_contract", "events_quarantine_rate", "events_drift", "sessions_contract", "sessions_drift"}
DB, USER, PASSWORD = "dagster", "dagster", "dagster-test"


def write_instance_config(home, server, monkeypatch) -> None:
    """$DAGSTER_HOME/dagster.yaml with the compose stack's storage block; credentials via its env vars."""
    docker_config = yaml.safe_load((REPO_ROOT / "docker" / "dagster.yaml").read_text())
    assert "postgres" in docker_config["storage"]
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "storage": docker_config["storage"],
        "telemetry": {"enabled": False},
    }))
    for name, value in {
        "DAGSTER_POSTGRES_USER": USER, "DAGSTER_POSTGRES_PASSWORD": PASSWORD, "DAGSTER_POSTGRES_HOST": server.host,
        "DAGSTER_POSTGRES_DB": DB, "DAGSTER_POSTGRES_PORT": str(server.port),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))


def test_a_postgres_backed_instance_records_runs_materializations_and_checks(spark, tmp_path, otto_sample, monkeypatch):
    """A Dagster instance on a real PostgreSQL server (the compose stack's storage) records runs,
    materializations and checks; every other test uses SQLite."""
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    land_otto_file(otto_sample, raw_dir, timezone=TIMEZONE)
    definitions = build_definitions(make_resources(str(raw_dir), str(lake_dir)))

    with postgres_server(tmp_path / "logs") as server:
        server.create_database(DB, owner=USER, password=PASSWORD)
        write_instance_config(tmp_path / "dagster_home", server, monkeypatch)

        instance = DagsterInstance.get()
        try:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            result = definitions.resolve_job_def(INGEST_JOB_NAME).execute_in_process(
                partition_key=WEEK, instance=instance, raise_on_error=False
            )
            assert result.success
        finally:
            instance.dispose()

        # A new instance (as the webserver or the daemon would open) sees what the run stored.
        reader = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
        try:
            run = reader.get_run_by_id(result.run_id)
            assert run is not None and run.status == DagsterRunStatus.SUCCESS
            assert run.tags["dagster/partition"] == WEEK
            events = reader.get_latest_materialization_event(AssetKey("events"))
            assert events is not None and events.run_id == result.run_id
            assert events.asset_materialization.partition == WEEK
            assert events.asset_materialization.metadata["dagster/partition_row_count"].value == WEEK_EVENTS
            assert reader.get_latest_materialization_event(AssetKey("sessions")).run_id == result.run_id
        finally:
            reader.dispose()

        # And straight from the tables, as the compose stack's Postgres holds them.
        with server.connect(DB, user=USER, password=PASSWORD) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_id = %s", [result.run_id])
            assert cursor.fetchall() == [("SUCCESS",)]
            cursor.execute(
                "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                [result.run_id, "ASSET_MATERIALIZATION"],
            )
            materializations = sorted(cursor.fetchall())
            assert [(AssetKey.from_db_string(key).to_user_string(), week) for key, week in materializations] == [
                ("events", WEEK), ("sessions", WEEK),
            ]
            cursor.execute(
                "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
                [result.run_id, "ASSET_CHECK_EVALUATION"],
            )
            assert cursor.fetchone() == (len(INGEST_CHECKS),)
            cursor.execute(
                "SELECT check_name, execution_status, partition FROM asset_check_executions WHERE run_id = %s",
                [result.run_id],
            )
            assert sorted(cursor.fetchall()) == sorted((name, "SUCCEEDED", WEEK) for name in INGEST_CHECKS)
        connection.close()
