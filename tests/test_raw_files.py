"""Hostile raw files: literal names, every file read or reported, unreadable files quarantined
whole, and line-level faults (pipelines.raw + pipelines.events)."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import events as ev
from pipelines.stages.events import materialize_events_week
from pipelines.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake
from pipelines.raw import (
    SKIPPED_HIDDEN,
    SKIPPED_UNSUPPORTED,
    list_week_entries,
    stage_raw_week,
)
from pipelines.weeks import Week

WEEK = Week.parse("2022-08-01", "Europe/Berlin")
IN_WEEK = WEEK.start_ms + 1_000


def _line(session: int, n_events: int = 1) -> str:
    return json.dumps({"session": session, "events": [{"aid": 100 + i, "ts": IN_WEEK + i, "type": "clicks"} for i in range(n_events)]})


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    if path.name.lower().endswith(".gz"):
        text = gzip.compress(text)
    elif path.name.lower().endswith(".bz2"):
        text = bz2.compress(text)
    path.write_bytes(text)
    return path


def _sessions(spark, raw) -> list[int]:
    parsed = ev.parse_raw_week(spark, raw)
    try:
        return sorted(row.session for row in parsed.events.select("session").distinct().collect())
    finally:
        parsed.release()


def test_raw_names_are_read_literally_not_as_globs_or_uris(spark, tmp_path):
    week_dir = tmp_path / "raw" / WEEK.folder
    names = ["a[1].jsonl", "a1.jsonl", "b*.jsonl", "{x,y}.jsonl", "x.jsonl", "2022-08-01T00:00:00Z.jsonl", "sp ace%20.jsonl"]
    for session, name in enumerate(names, start=1):
        _write(week_dir / name, _line(session) + "\n{broken\n")
    raw = stage_raw_week(str(tmp_path / "raw"), WEEK, tmp_path / "staging")

    assert _sessions(spark, raw) == list(range(1, len(names) + 1))
    parsed = ev.parse_raw_week(spark, raw)
    try:
        broken_sources = sorted(row.source_file for row in parsed.quarantine.collect())
    finally:
        parsed.release()
    assert broken_sources == sorted(str(week_dir / name) for name in names)


def test_every_file_under_the_week_is_read_or_reported_skipped(spark, tmp_path):
    raw_root = tmp_path / "raw"
    week_dir = raw_root / WEEK.folder
    readable = ["PART.JSONL", "part.json", "part.ndjson", "Part.JsonL.Gz", "part.jsonl.bz2", "PART.NDJSON.BZ2", "sub/deeper/part.jsonl"]
    for session, name in enumerate(readable, start=1):
        _write(week_dir / name, _line(session))
    skipped = {"notes.txt": SKIPPED_UNSUPPORTED, "part.jsonl.zip": SKIPPED_UNSUPPORTED, "_SUCCESS": SKIPPED_HIDDEN,
               ".part.jsonl.crc": SKIPPED_HIDDEN, "_temporary/part.jsonl": SKIPPED_HIDDEN}
    for name in skipped:
        _write(week_dir / name, _line(99))

    raw = stage_raw_week(str(raw_root), WEEK, tmp_path / "staging")
    assert _sessions(spark, raw) == list(range(1, len(readable) + 1))
    assert sorted(f.source for f in raw.files) == sorted(str(week_dir / name) for name in readable)
    assert {Path(s.source).relative_to(week_dir).as_posix(): s.reason for s in raw.skipped} == skipped
    reported = {s["source"] for s in raw.as_metadata()["skipped_files"]}
    assert len(raw.files) + len(reported) == len(list_week_entries(str(raw_root), WEEK))


def test_the_s3_listing_follows_the_local_rule(tmp_path):
    import boto3
    from moto import mock_aws

    week_dir = tmp_path / "raw" / WEEK.folder
    for name in ["a.JSONL", "b.ndjson.gz", "sub/c.jsonl", "notes.txt", "_SUCCESS", "_tmp/d.jsonl"]:
        _write(week_dir / name, _line(1))
    local = [(e.relative, e.skip_reason, e.bytes) for e in list_week_entries(str(tmp_path / "raw"), WEEK)]
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="landing")
        for path in week_dir.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "landing", f"raw/{WEEK.folder}/{path.relative_to(week_dir).as_posix()}")
        s3.put_object(Bucket="landing", Key=f"raw/{WEEK.folder}/sub/", Body=b"")  # a console-made folder
        remote = [(e.relative, e.skip_reason, e.bytes) for e in list_week_entries("s3://landing/raw", WEEK, s3)]
    assert remote == local
    assert [r for r, reason, _ in local if reason is None] == ["a.JSONL", "b.ndjson.gz", "sub/c.jsonl"]


def test_an_unreadable_compressed_file_is_quarantined_whole_and_the_others_ingested(spark, tmp_path):
    raw_root = tmp_path / "raw"
    week_dir = raw_root / WEEK.folder
    _write(week_dir / "good.jsonl", _line(1, 3))
    _write(week_dir / "good.jsonl.gz", _line(2, 2))
    truncated = gzip.compress(("\n".join(_line(s, 5) for s in range(10, 60)) + "\n").encode())
    (week_dir / "truncated.jsonl.gz").write_bytes(truncated[: len(truncated) // 2])
    (week_dir / "plain.jsonl.gz").write_bytes((_line(3) + "\n").encode())
    (week_dir / "garbage.jsonl.bz2").write_bytes(b"BZh9 not really bzip2")

    raw = stage_raw_week(str(raw_root), WEEK, tmp_path / "staging")
    assert sorted(Path(f.source).name for f in raw.unreadable) == ["garbage.jsonl.bz2", "plain.jsonl.gz", "truncated.jsonl.gz"]
    lake = Lake(str(tmp_path / "lake"))
    summary = materialize_events_week(spark, lake, raw)

    assert summary.events == 5 and summary.sessions == 2
    assert summary.quarantine_by_reason[ev.UNREADABLE_FILE] == 3
    quarantine = {Path(r.source_file).name: r for r in lake.read_partition(spark, QUARANTINE_TABLE, WEEK).collect()}
    assert f"({len(truncated) // 2} bytes)" in quarantine["truncated.jsonl.gz"].record
    stats = lake.read_stats(EVENTS_TABLE, WEEK)
    assert {f["source"]: f["bytes"] for f in stats["unreadable_files"]}[str(week_dir / "truncated.jsonl.gz")] == len(truncated) // 2


def test_line_level_faults_get_their_own_reasons_and_weights(spark, tmp_path):
    week_dir = tmp_path / "raw" / WEEK.folder
    huge = json.dumps({"session": 7, "events": [{"aid": 1, "ts": IN_WEEK, "type": "clicks"}], "pad": "x" * 5_000})
    lines = [
        _line(1, 2),
        "\t \t",
        huge,
        '{"session": 2, "session": 3, "events": [{"aid": 1, "ts": %d, "type": "clicks"}]}' % IN_WEEK,
        '{"session": 4, "events": [{"aid": 1, "aid": 2, "ts": %d, "type": "clicks"}, {"aid": 5, "ts": %d, "type": "carts"}]}' % (IN_WEEK, IN_WEEK),
        json.dumps({"session": "x9", "events": [{"aid": i, "ts": IN_WEEK, "type": "clicks"} for i in range(4)]}),
    ]
    _write(week_dir / "part.jsonl", "\n".join(lines) + "\n")
    raw = stage_raw_week(str(tmp_path / "raw"), WEEK, tmp_path / "staging")
    parsed = ev.parse_raw_week(spark, raw, max_line_bytes=4_096)
    try:
        rows = parsed.quarantine.collect()
        summary = ev.summarize_parsed_week(parsed, parsed.events)
        kept = sorted((r.session, r.aid) for r in parsed.events.collect())
    finally:
        parsed.release()
    by_reason = {}
    for row in rows:
        by_reason.setdefault(row.reason, []).append(row)

    assert sorted(by_reason) == sorted([ev.BLANK_LINE, ev.LINE_TOO_LONG, ev.MALFORMED_JSON, ev.MALFORMED_EVENT, ev.INVALID_SESSION])
    assert by_reason[ev.MALFORMED_EVENT][0].session == "4" and by_reason[ev.MALFORMED_EVENT][0].event_index == 0
    assert kept == [(1, 100), (1, 101), (4, 5)]
    # The invalid-session line held 4 events and weighs 4; a line whose events are unknown weighs 1.
    assert by_reason[ev.INVALID_SESSION][0].records == 4
    assert summary.quarantine_by_reason[ev.INVALID_SESSION] == 4
    assert summary.quarantined == 1 + 1 + 1 + 1 + 4
    assert summary.quarantine_rate == pytest.approx(8 / (3 + 8))
    assert len(by_reason[ev.LINE_TOO_LONG][0].record) == ev.MAX_RECORD_CHARS


def test_the_quarantine_text_is_valid_utf8(spark, tmp_path):
    week_dir = tmp_path / "raw" / WEEK.folder
    _write(week_dir / "part.jsonl", (_line(1) + "\n").encode() + b'{"session": 2, "events": [\xff\xfe]}\n'
           + b'{"session": "\xc3\x28", "events": [{"aid": 1, "ts": 1, "type": "clicks"}]}\n')
    lake = Lake(str(tmp_path / "lake"))
    materialize_events_week(spark, lake, stage_raw_week(str(tmp_path / "raw"), WEEK, tmp_path / "staging"))

    table = pq.read_table(lake.partition_dir(QUARANTINE_TABLE, WEEK))  # pyarrow rejects invalid UTF-8
    records = table.column("record").to_pylist()
    assert len(records) == 2 and all("\ufffd" in record for record in records)


def test_each_run_stages_raw_files_in_its_own_folder_and_removes_it(tmp_path):
    import os
    import time

    from pipelines.raw import staged_raw_week

    _write(tmp_path / "raw" / WEEK.folder / "part.jsonl", _line(1) + "\n")
    staging = tmp_path / "_raw_staging"
    died_long_ago = staging / "run-deadbeef" / WEEK.folder
    died_long_ago.mkdir(parents=True)
    long_ago = time.time() - 48 * 3600
    os.utime(staging / "run-deadbeef", (long_ago, long_ago))
    with staged_raw_week(str(tmp_path / "raw"), WEEK, staging, max_age_s=24 * 3600) as first:
        assert not (staging / "run-deadbeef").exists(), "a dead run's leftovers older than the age are cleared"
        with staged_raw_week(str(tmp_path / "raw"), WEEK, staging, max_age_s=24 * 3600) as second:
            first_dir, second_dir = (Path(raw.files[0].path).parent for raw in (first, second))
            assert first_dir != second_dir and first_dir.parent.parent == second_dir.parent.parent == staging
        assert not second_dir.parent.exists(), "the second run removed its own copies"
        assert Path(first.files[0].path).read_text().startswith('{"session": 1'), "and left the first run's alone"
    assert list(staging.iterdir()) == []
    try:
        with staged_raw_week(str(tmp_path / "raw"), WEEK, staging):
            raise RuntimeError("the events step failed")
    except RuntimeError:
        pass
    assert list(staging.iterdir()) == [], "a failed run's copies are removed too"


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_over_long_lines_are_quarantined_without_the_reader_holding_them(spark, tmp_path, compressed):
    """Staged with the limit, the reader skips the lines the staging scan found too long (it never
    holds them whole) and the quarantine still has each, as the whole-line read would have it."""
    limit = 4_096

    def padded(session: int, size: int) -> bytes:
        line = json.dumps({"session": session, "events": [{"aid": 1, "ts": IN_WEEK, "type": "clicks"}], "pad": ""})
        return (line[:-2] + "x" * (size - len(line)) + line[-2:]).encode()

    content = b"".join([
        _line(1).encode() + b"\n",
        padded(2, limit) + b"\n",  # exactly the limit: kept
        padded(3, limit) + b"\r\n",  # the limit and a CRLF: kept
        padded(4, limit + 1) + b"\n",  # one byte over: read (bounded), then rejected by its length
        padded(5, 300_000) + b"\r\n",  # far over, CRLF
        _line(6).encode() + b"\r",  # a lone CR ends a line too
        padded(7, 100_000) + b"\r",
        _line(8).encode() + b"\n",
        padded(9, limit + 1),  # over by one, last, no terminator: read, then rejected by its length
    ])
    name = "part.jsonl.gz" if compressed else "part.jsonl"
    _write(tmp_path / "raw" / WEEK.folder / name, content)

    outcomes = {}
    for scanned in (True, False):
        raw = stage_raw_week(str(tmp_path / "raw"), WEEK, tmp_path / f"staging-{scanned}",
                             max_line_bytes=limit if scanned else None)
        read_lengths = [len(row.line) for row in ev._raw_lines(spark, raw).collect()]
        parsed = ev.parse_raw_week(spark, raw, max_line_bytes=limit)
        try:
            quarantine = sorted((row.reason, row.record[:40], len(row.record)) for row in parsed.quarantine.collect())
            summary = ev.summarize_parsed_week(parsed, parsed.events)
            sessions = sorted(row.session for row in parsed.events.collect())
        finally:
            parsed.release()
        outcomes[scanned] = (quarantine, summary.raw_lines, summary.quarantine_by_reason, sessions)
        if scanned:
            assert [found.line for f in raw.files for found in f.long_lines] == [5, 7]
            assert max(read_lengths) == limit + 1, "the reader skipped the long lines"
        else:
            assert max(read_lengths) == 300_000
    assert outcomes[True] == outcomes[False]
    quarantine, raw_lines, by_reason, sessions = outcomes[True]
    assert raw_lines == 9 and sessions == [1, 2, 3, 6, 8]
    assert by_reason[ev.LINE_TOO_LONG] == 4
    assert all(length == ev.MAX_RECORD_CHARS for reason, _, length in quarantine if reason == ev.LINE_TOO_LONG)
