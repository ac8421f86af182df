"""Parsing, validation, quarantine and dedup of one raw week (pipelines.events)."""

from __future__ import annotations

import json

import pytest

from pipelines import events as ev
from pipelines.stages.events import materialize_events_week
from pipelines.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake
from pipelines.quality import events_suite, validate
from pipelines.raw import RawWeek
from pipelines.weeks import Week

WEEK = Week.parse("2022-08-01", "Europe/Berlin")
IN_WEEK = WEEK.start_ms + 1_000


def _event(aid=1, ts=IN_WEEK, type_="clicks"):
    return {"aid": aid, "ts": ts, "type": type_}


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


@pytest.fixture()
def corrupted_week(tmp_path):
    """One good session plus exactly one record of every kind of bad input."""
    good = {"session": 1, "events": [_event(10), _event(11, IN_WEEK + 5), _event(10, IN_WEEK + 9, "carts")]}
    lines = [
        good,
        good,  # the whole line again: three exact duplicates
        "{not json",
        "",
        {"session": -4, "events": [_event()]},
        {"session": 2.5, "events": [_event()]},
        {"session": 3, "events": []},
        {"session": 4},
        {"session": 5, "events": [7, _event(-1), _event(1.5), _event(ts="soon"), _event(type_="views"), _event(ts=WEEK.end_ms)]},
        {"session": 6, "events": [_event(ts=WEEK.start_ms - 1), _event(20, WEEK.start_ms)]},
    ]
    return _write(tmp_path / "part-0.jsonl", lines)


def test_each_bad_record_is_quarantined_with_its_reason(spark, corrupted_week):
    parsed = ev.parse_raw_week(spark, RawWeek.of_local_files(WEEK, [corrupted_week]))
    try:
        reasons = sorted(row["reason"] for row in parsed.quarantine.collect())
        rows = sorted((r.session, r.aid, r.ts, r.type) for r in parsed.events.collect())
        summary = ev.summarize_parsed_week(parsed, parsed.events)
    finally:
        parsed.release()

    assert reasons == sorted([
        ev.MALFORMED_JSON, ev.BLANK_LINE, ev.INVALID_SESSION, ev.INVALID_SESSION, ev.EMPTY_EVENTS, ev.EMPTY_EVENTS,
        ev.MALFORMED_EVENT, ev.INVALID_AID, ev.INVALID_AID, ev.INVALID_TS, ev.UNKNOWN_TYPE,
        ev.TS_OUTSIDE_WEEK, ev.TS_OUTSIDE_WEEK,
    ])
    assert rows == [
        (1, 10, IN_WEEK, "clicks"), (1, 10, IN_WEEK + 9, "carts"), (1, 11, IN_WEEK + 5, "clicks"),
        (6, 20, WEEK.start_ms, "clicks"),
    ]
    assert summary.valid_events == 7
    assert summary.events == 4
    assert summary.duplicates_removed == 3
    assert summary.quarantined == 13
    assert summary.raw_lines == 10
    assert summary.quarantine_by_reason[ev.INVALID_AID] == 2
    assert summary.quarantine_by_reason[ev.TS_OUTSIDE_WEEK] == 2
    assert summary.quarantine_rate == pytest.approx(13 / 20)
    assert summary.events_by_type == {"clicks": 3, "carts": 1, "orders": 0}


def test_quarantine_keeps_the_raw_record_and_source(spark, corrupted_week):
    parsed = ev.parse_raw_week(spark, RawWeek.of_local_files(WEEK, [corrupted_week]))
    try:
        by_reason = {row["reason"]: row for row in parsed.quarantine.collect()}
    finally:
        parsed.release()
    assert by_reason[ev.MALFORMED_JSON]["record"] == "{not json"
    assert by_reason[ev.UNKNOWN_TYPE]["session"] == "5"
    assert json.loads(by_reason[ev.UNKNOWN_TYPE]["record"])["type"] == "views"
    assert by_reason[ev.UNKNOWN_TYPE]["event_index"] == 4
    assert by_reason[ev.BLANK_LINE]["source_file"].endswith("part-0.jsonl")


def test_gzip_input_reads_like_plain(spark, tmp_path, corrupted_week):
    import gzip
    import shutil

    gz_path = tmp_path / "part-0.jsonl.gz"
    with open(corrupted_week, "rb") as src, gzip.open(gz_path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    parsed = ev.parse_raw_week(spark, RawWeek.of_local_files(WEEK, [str(gz_path)]))
    try:
        assert parsed.events.count() == 4
        assert parsed.quarantine.count() == 13
    finally:
        parsed.release()


def test_materialize_twice_replaces_the_week(spark, tmp_path, corrupted_week):
    lake = Lake(str(tmp_path / "lake"))
    first = materialize_events_week(spark, lake, RawWeek.of_local_files(WEEK, [corrupted_week]))
    second = materialize_events_week(spark, lake, RawWeek.of_local_files(WEEK, [corrupted_week]))
    assert first == second
    assert lake.read_partition(spark, EVENTS_TABLE, WEEK).count() == 4
    assert lake.read_partition(spark, QUARANTINE_TABLE, WEEK).count() == 13
    assert lake.read_stats(EVENTS_TABLE, WEEK)["events"] == 4
    leftovers = [p.name for p in lake.table_dir(EVENTS_TABLE).iterdir() if p.name != WEEK.folder]
    assert leftovers == []


def test_failed_write_keeps_the_previous_week(spark, tmp_path, corrupted_week):
    lake = Lake(str(tmp_path / "lake"))
    materialize_events_week(spark, lake, RawWeek.of_local_files(WEEK, [corrupted_week]))

    def explode(_frame):
        raise RuntimeError("disk full")

    parsed = ev.parse_raw_week(spark, RawWeek.of_local_files(WEEK, [corrupted_week]))
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            lake.write_partition(parsed.events.limit(1), EVENTS_TABLE, WEEK, stats=explode)
    finally:
        parsed.release()
    assert lake.read_partition(spark, EVENTS_TABLE, WEEK).count() == 4
    assert [p.name for p in lake.table_dir(EVENTS_TABLE).iterdir()] == [WEEK.folder]


def test_events_suite_flags_bad_values(spark):
    frame = spark.createDataFrame(
        [(1, 2, WEEK.start_ms, "clicks"), (1, 2, WEEK.start_ms, "clicks"), (-1, 3, WEEK.end_ms, "views")],
        ev.EVENTS_SPARK_SCHEMA,
    )
    report = validate(frame, "events_contract", events_suite(WEEK))
    failed = {o.expectation for o in report.failed}
    assert not report.success
    assert failed == {
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
        "expect_compound_columns_to_be_unique",
    }
    ts_failure = next(o for o in report.failed if o.kwargs.get("column") == "ts")
    assert ts_failure.observed["unexpected_count"] == 1
    assert WEEK.end_ms in ts_failure.observed["partial_unexpected_list"]


def test_events_suite_passes_clean_events(spark):
    frame = spark.createDataFrame(
        [(1, 2, WEEK.start_ms, "clicks"), (1, 2, WEEK.start_ms, "carts"), (2, 3, WEEK.end_ms - 1, "orders")],
        ev.EVENTS_SPARK_SCHEMA,
    )
    assert validate(frame, "events_contract", events_suite(WEEK)).success


def test_validation_sees_a_rewritten_partition_not_a_cached_one(spark, tmp_path, corrupted_week):
    """GE must not leave validated frames cached: Spark would serve the old files' rows to the next check."""
    lake = Lake(str(tmp_path / "lake"))
    materialize_events_week(spark, lake, RawWeek.of_local_files(WEEK, [corrupted_week]))
    assert validate(lake.read_partition(spark, EVENTS_TABLE, WEEK), "events_contract", events_suite(WEEK)).success

    bad = spark.createDataFrame([(1, 2, WEEK.end_ms + 5, "views")], ev.EVENTS_SPARK_SCHEMA)
    lake.write_partition(bad, EVENTS_TABLE, WEEK)
    assert not validate(lake.read_partition(spark, EVENTS_TABLE, WEEK), "events_contract", events_suite(WEEK)).success
