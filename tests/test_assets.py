"""The Dagster layer for ingestion: definitions load, real OTTO sessions flow through, failing checks block."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions

from assets.events import EVENTS_DRIFT_CHECK, EVENTS_QUARANTINE_RATE_CHECK
from assets.partitions import weekly_partitions
from assets.sessions import SESSIONS_CONTRACT_CHECK
from definitions import build_definitions, defs
from jobs import INGEST_JOB_NAME
from pipelines.land import land_otto_file
from pipelines.lake import EVENTS_TABLE, QUARANTINE_TABLE, SESSIONS_TABLE, Lake
from pipelines.weeks import Week
from tests.conftest import TIMEZONE, make_resources

FIXTURE_WEEKS = {"2022-08-01": 339, "2022-08-08": 201, "2022-08-15": 99, "2022-08-22": 223}
LOOSE_DRIFT = {"drift_min_volume_ratio": 0.01, "drift_max_volume_ratio": 100.0, "drift_max_type_share_delta": 1.0}


def run_week(definitions: Definitions, key: str, instance: DagsterInstance, job_name: str = INGEST_JOB_NAME):
    return definitions.resolve_job_def(job_name).execute_in_process(
        partition_key=key, instance=instance, raise_on_error=False
    )


def checks_by_name(result) -> dict:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def materialized(result) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def test_definitions_load():
    Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("weekly_recommender")
    assert job.partitions_def is not None
    assert {"events", "sessions"} <= {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    check_names = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"events_contract", "events_quarantine_rate", "events_drift", "sessions_contract", "sessions_drift"} <= check_names


def test_real_otto_sessions_flow_through_land_events_and_sessions(spark, tmp_path, otto_sample):
    """The only test of real OTTO sessions through `land` and the ingest job's assets and checks, four
    weeks, with each session's history carried across weeks; the unit tests use generated rows."""
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    landed = land_otto_file(otto_sample, raw_dir, timezone=TIMEZONE)
    assert landed["events"] == 862

    definitions = build_definitions(make_resources(str(raw_dir), str(lake_dir), **LOOSE_DRIFT))
    instance = DagsterInstance.ephemeral()
    results = {key: run_week(definitions, key, instance) for key in FIXTURE_WEEKS}

    lake = Lake(str(lake_dir))
    totals: Counter = Counter()
    for key, expected_events in FIXTURE_WEEKS.items():
        result = results[key]
        assert result.success, key
        assert materialized(result) == {"events", "sessions"}
        assert all(evaluation.passed for evaluation in checks_by_name(result).values()), key
        assert len(checks_by_name(result)) == 5
        stats = lake.read_stats(EVENTS_TABLE, Week.parse(key, TIMEZONE))
        assert stats["events"] == expected_events and stats["quarantined"] == 0
        totals.update(stats["events_by_type"])
    assert dict(totals) == {"clicks": 800, "carts": 52, "orders": 10}

    # The last week's sessions carry their whole history from the first week on.
    expected_history = {}
    last_week = Week.parse("2022-08-22", TIMEZONE)
    for line in otto_sample.read_text().splitlines():
        session = json.loads(line)
        if any(last_week.start_ms <= e["ts"] < last_week.end_ms for e in session["events"]):
            expected_history[session["session"]] = [(e["ts"], e["aid"], e["type"]) for e in session["events"]]
    rows = lake.read_partition(spark, SESSIONS_TABLE, last_week).collect()
    assert {row.session for row in rows} == set(expected_history)
    for row in rows:
        history = [(e.ts, e.aid, e.type) for e in row.history]
        assert sorted(history) == sorted(expected_history[row.session])
        assert [ts for ts, _, _ in history] == sorted(ts for ts, _, _ in history)
        assert row.started_in_week is False or row.first_ts >= last_week.start_ms
    metadata = next(
        e for e in results["2022-08-22"].get_asset_materialization_events() if e.asset_key.to_user_string() == "sessions"
    ).materialization.metadata
    assert metadata["dagster/partition_row_count"].value == len(expected_history)
    assert metadata["history_window"].value == list(FIXTURE_WEEKS)
    columns = {column.name: column.type for column in metadata["dagster/column_schema"].schema.columns}
    assert set(columns) >= {"session", "history", "n_events", "started_in_week"} and columns["session"] == "int64"


def _write_raw_week(raw_dir, week: Week, lines: list[str]):
    folder = raw_dir / week.folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-00000.jsonl").write_text("\n".join(lines) + "\n")


def _good_lines(week: Week, sessions: int, events_per_session: int = 5) -> list[str]:
    lines = []
    for session in range(sessions):
        events = [
            {"aid": (session * 7 + i) % 50, "ts": week.start_ms + session * 60_000 + i * 1000, "type": "clicks"}
            for i in range(events_per_session)
        ]
        lines.append(json.dumps({"session": session, "events": events}))
    return lines


def test_quarantine_above_threshold_blocks_sessions(tmp_path):
    week = Week.parse("2022-08-01", TIMEZONE)
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    # 100 good events, 2 bad records: a 1.96% quarantine rate against the default 1%.
    _write_raw_week(raw_dir, week, _good_lines(week, 20) + ["{broken", json.dumps({"session": 99, "events": []})])
    definitions = build_definitions(make_resources(str(raw_dir), str(lake_dir)))
    result = run_week(definitions, week.key, DagsterInstance.ephemeral())

    checks = checks_by_name(result)
    assert not checks[EVENTS_QUARANTINE_RATE_CHECK].passed
    failed = checks[EVENTS_QUARANTINE_RATE_CHECK].metadata["failed_expectations"].value
    assert failed[0]["kwargs"]["column"] == "quarantine_rate"
    assert failed[0]["observed"]["partial_unexpected_list"] == [pytest.approx(2 / 102)]
    assert checks[EVENTS_QUARANTINE_RATE_CHECK].metadata["quarantine_by_reason"].value["malformed_json"] == 1
    assert materialized(result) == {"events"}
    assert SESSIONS_CONTRACT_CHECK not in checks
    lake = Lake(str(lake_dir))
    assert not lake.has_partition(SESSIONS_TABLE, week)
    # The blocked week never went live; what it would have been is kept, and the check says where.
    assert not lake.has_partition(EVENTS_TABLE, week) and not lake.has_partition(QUARANTINE_TABLE, week)
    staged = checks[EVENTS_QUARANTINE_RATE_CHECK].metadata["staged_version"].value
    assert Path(staged[QUARANTINE_TABLE]).parent == lake.table_dir(QUARANTINE_TABLE) / "_audit"
    assert (Path(staged[QUARANTINE_TABLE]) / "_SUCCESS").exists()


def test_volume_drift_blocks_sessions(tmp_path):
    """The volume-drift check compares a week with the one before through the assets: two materialized
    weeks are the least that shows it."""
    first, second = Week.parse("2022-08-01", TIMEZONE), Week.parse("2022-08-08", TIMEZONE)
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    _write_raw_week(raw_dir, first, _good_lines(first, 40))
    _write_raw_week(raw_dir, second, _good_lines(second, 10))  # a quarter of last week's volume
    definitions = build_definitions(make_resources(str(raw_dir), str(lake_dir)))
    instance = DagsterInstance.ephemeral()
    assert run_week(definitions, first.key, instance).success
    result = run_week(definitions, second.key, instance)

    drift = checks_by_name(result)[EVENTS_DRIFT_CHECK]
    assert not drift.passed
    assert drift.metadata["drift"].value["volume_ratio"] == pytest.approx(0.25)
    assert materialized(result) == {"events"}
    assert not Lake(str(lake_dir)).has_partition(SESSIONS_TABLE, second)


def test_missing_raw_week_fails_with_a_clear_message(tmp_path):
    definitions = build_definitions(make_resources(str(tmp_path / "raw"), str(tmp_path / "lake")))
    result = run_week(definitions, "2022-08-01", DagsterInstance.ephemeral())
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no raw files for week 2022-08-01" in failure.step_failure_data.user_failure_data.description


def _tree_digest(folder) -> dict[str, str]:
    import hashlib

    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_blocked_rerun_leaves_the_live_week_and_downstream_untouched(spark, tmp_path):
    """Write-audit-publish: a rerun whose checks fail changes nothing a reader of the lake sees."""
    first, second = Week.parse("2022-08-01", TIMEZONE), Week.parse("2022-08-08", TIMEZONE)
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    _write_raw_week(raw_dir, first, _good_lines(first, 40))
    definitions = build_definitions(make_resources(str(raw_dir), str(lake_dir), **LOOSE_DRIFT))
    instance = DagsterInstance.ephemeral()
    assert run_week(definitions, first.key, instance).success
    lake = Lake(str(lake_dir))
    live_before = {table: _tree_digest(lake.partition_dir(table, first)) for table in (EVENTS_TABLE, QUARANTINE_TABLE, SESSIONS_TABLE)}

    # The same week again, now with a tenth of its lines corrupt: the quarantine-rate check fails.
    _write_raw_week(raw_dir, first, _good_lines(first, 40)[:36] + ["{broken"] * 4)
    blocked = run_week(definitions, first.key, instance)
    checks = checks_by_name(blocked)
    assert not checks[EVENTS_QUARANTINE_RATE_CHECK].passed
    assert materialized(blocked) == {"events"}
    assert {table: _tree_digest(lake.partition_dir(table, first)) for table in live_before} == live_before
    staged_events = checks[EVENTS_QUARANTINE_RATE_CHECK].metadata["staged_version"].value[EVENTS_TABLE]
    assert Path(staged_events).parent == lake.table_dir(EVENTS_TABLE) / "_audit"
    assert spark.read.parquet(str(staged_events)).count() == 36 * 5
    events_metadata = next(e for e in blocked.get_asset_materialization_events()).materialization.metadata
    assert events_metadata["published_to_lake"].value is False

    # The next week reads the live (audited) first week in its history, not the blocked rerun.
    _write_raw_week(raw_dir, second, _good_lines(second, 40))
    assert run_week(definitions, second.key, instance).success
    history_events = sum(len(row.history) for row in lake.read_partition(spark, SESSIONS_TABLE, second).collect())
    assert history_events == 40 * 5 + 40 * 5

    # A passing rerun goes live and clears what the failed audit left once it is older than
    # RECSYS_STAGING_MAX_AGE_HOURS (younger staging may be another run's, mid-audit).
    import os
    import time

    two_days_ago = time.time() - 2 * 86_400
    for staged in (lake.table_dir(EVENTS_TABLE) / "_audit").iterdir():
        os.utime(staged, (two_days_ago, two_days_ago))
    _write_raw_week(raw_dir, first, _good_lines(first, 30))
    assert run_week(definitions, first.key, instance).success
    assert lake.read_stats(EVENTS_TABLE, first)["events"] == 30 * 5
    assert not (lake.table_dir(EVENTS_TABLE) / "_audit").exists()
    assert sorted(p.name for p in lake.table_dir(EVENTS_TABLE).iterdir()) == [first.folder, second.folder]


def test_spark_and_publishing_steps_are_in_pools_the_instance_limits_to_one(tmp_path, monkeypatch):
    """CLI materializations and `jobs.run_weeks` bypass the run queue; the pools still hold them."""
    import shutil

    from assets.pools import PUBLISH_POOL, SPARK_POOL
    from pipelines.config import PROJECT_ROOT

    graph = defs.resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}
    spark_assets = {name for name, node in ((k.to_user_string(), graph.get(k)) for k in graph.get_all_asset_keys())
                    if node.is_materializable and "spark" in node.assets_def.required_resource_keys}
    assert spark_assets >= {"events", "sessions", "als", "ranker", "recommendation_tables"}
    assert all(pools[name] == {SPARK_POOL} for name in spark_assets)
    assert pools["published_recommendations"] == {PUBLISH_POOL}

    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity.value == "op"
        assert config.run_queue_config.max_concurrent_runs == 1
        # A dead run worker is retried once; a failed step or check is not (it would fail again).
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert not instance.run_retries_retry_on_asset_or_op_failure


def test_what_readers_consume_is_due_every_monday_morning():
    from dagster import AssetKey

    policy = defs.resolve_asset_graph().get(AssetKey("published_recommendations")).freshness_policy
    assert policy.deadline_cron == "0 9 * * 1" and policy.timezone == weekly_partitions.timezone
    assert policy.lower_bound_delta.total_seconds() == 6 * 3600
