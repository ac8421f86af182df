"""`land`: splitting an OTTO session file into the weekly raw layout."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipelines import land as land_module
from pipelines.land import land_otto_file, part_file_name
from pipelines.weeks import Week

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "otto_sample_sessions.jsonl"
TIMEZONE = "Europe/Berlin"

# Local Berlin midnight at the start of Monday 2022-08-08, in UTC milliseconds (CEST = UTC+2).
MONDAY_2022_08_08_MS = 1659909600000


def read_lines(root: Path) -> dict[str, list[dict]]:
    return {
        folder.name: [json.loads(line) for path in sorted(folder.glob("part-*.jsonl")) for line in path.open()]
        for folder in sorted(root.glob("week=*"))
    }


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_fixture_lands_in_its_four_weeks(tmp_path):
    summary = land_otto_file(FIXTURE, tmp_path)

    assert summary == {
        "lines": 20,
        "sessions_landed": 20,
        "events": 862,
        "weeks": {"2022-08-01": 339, "2022-08-08": 201, "2022-08-15": 99, "2022-08-22": 223},
        "rejected": {},
        "part_file": part_file_name(FIXTURE),
    }
    lines_by_week = read_lines(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "week=2022-08-01",
        "week=2022-08-08",
        "week=2022-08-15",
        "week=2022-08-22",
    ]
    types = Counter(event["type"] for lines in lines_by_week.values() for line in lines for event in line["events"])
    assert types == {"clicks": 800, "carts": 52, "orders": 10}
    sessions = {line["session"] for lines in lines_by_week.values() for line in lines}
    assert len(sessions) == 20


def test_each_week_holds_only_its_events_in_the_original_order(tmp_path):
    land_otto_file(FIXTURE, tmp_path)
    landed: dict[int, list[dict]] = defaultdict(list)
    for folder, lines in read_lines(tmp_path).items():
        week = Week.parse(folder.removeprefix("week="), TIMEZONE)
        sessions = [line["session"] for line in lines]
        assert len(sessions) == len(set(sessions)), "one line per session and week"
        for line in lines:
            assert all(week.start_ms <= event["ts"] < week.end_ms for event in line["events"])
            landed[line["session"]].extend(line["events"])
    original = {record["session"]: record["events"] for record in map(json.loads, FIXTURE.open())}
    assert landed == original


def test_lines_within_one_week_are_copied_verbatim(tmp_path):
    land_otto_file(FIXTURE, tmp_path)
    landed = {line for folder in tmp_path.glob("week=*") for line in (folder / part_file_name(FIXTURE)).read_text().splitlines()}
    single_week = [
        line
        for line in FIXTURE.read_text().splitlines()
        if len({Week.containing_ms(event["ts"], TIMEZONE) for event in json.loads(line)["events"]}) == 1
    ]
    assert single_week, "the fixture has sessions within one week"
    assert set(single_week) <= landed


def test_split_lines_keep_all_fields_and_the_event_order(tmp_path):
    before_monday = MONDAY_2022_08_08_MS - 1
    record = {
        "session": 5,
        "source": "app",
        "events": [
            {"aid": 1, "ts": MONDAY_2022_08_08_MS, "type": "clicks"},
            {"aid": 2, "ts": before_monday, "type": "clicks", "extra": [1, 2]},
            {"aid": 3, "ts": MONDAY_2022_08_08_MS + 5, "type": "carts"},
        ],
    }
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(record)])
    summary = land_otto_file(source, tmp_path / "out")
    assert summary["weeks"] == {"2022-08-01": 1, "2022-08-08": 2}
    lines = read_lines(tmp_path / "out")
    assert lines["week=2022-08-01"] == [{"session": 5, "source": "app", "events": [record["events"][1]]}]
    assert lines["week=2022-08-08"] == [
        {"session": 5, "source": "app", "events": [record["events"][0], record["events"][2]]}
    ]


def test_unplaceable_lines_are_rejected_unchanged_with_reasons(tmp_path):
    good = json.dumps({"session": 1, "events": [{"aid": 1, "ts": MONDAY_2022_08_08_MS, "type": "clicks"}]})
    bad = [
        ('{"session": 2, "events": [', "invalid_json"),
        ("", "invalid_json"),
        ('{"session": 3}', "no_events"),
        ('{"session": 4, "events": []}', "no_events"),
        ('{"session": 5, "events": {"aid": 1}}', "no_events"),
        ("[1, 2, 3]", "no_events"),
        ('{"session": 6, "events": [{"aid": 1, "type": "clicks"}]}', "bad_ts"),
        ('{"session": 7, "events": [{"aid": 1, "ts": "1659909600000", "type": "clicks"}]}', "bad_ts"),
        ('{"session": 8, "events": [{"aid": 1, "ts": 1659909600000.5, "type": "clicks"}]}', "bad_ts"),
        ('{"session": 9, "events": [{"aid": 1, "ts": true, "type": "clicks"}]}', "bad_ts"),
        ('{"session": 10, "events": [{"aid": 1, "ts": 10000000000000000000, "type": "clicks"}]}', "implausible_ts"),
        ('{"session": 14, "events": [{"aid": 1, "ts": 1659909600, "type": "clicks"}]}', "implausible_ts"),  # seconds
        ('{"session": 15, "events": [{"aid": 1, "ts": -1659909600000, "type": "clicks"}]}', "implausible_ts"),
        ("[" * 100_000 + "]" * 100_000, "too_deep"),
        ('{"session": 11, "events": [42]}', "bad_ts"),
        # One bad event rejects the whole session rather than silently shortening it.
        (
            '{"session": 12, "events": [{"aid": 1, "ts": 1659909600000, "type": "clicks"}, {"aid": 2, "type": "clicks"}]}',
            "bad_ts",
        ),
    ]
    source = write_jsonl(tmp_path / "in.jsonl", [good] + [line for line, _ in bad] + [good.replace('"session": 1', '"session": 13')])

    summary = land_otto_file(source, tmp_path / "out")

    assert summary["lines"] == 2 + len(bad)
    assert summary["sessions_landed"] == 2
    assert summary["events"] == 2
    assert summary["weeks"] == {"2022-08-08": 2}
    assert summary["rejected"] == dict(Counter(reason for _, reason in bad))
    rejected = [json.loads(line) for line in (tmp_path / "out" / "_rejected" / part_file_name(source)).open()]
    assert [(r["text"], r["reason"]) for r in rejected] == bad
    assert [r["line"] for r in rejected] == list(range(2, 2 + len(bad)))


def test_gzip_input_lands_like_plain_input(tmp_path):
    compressed = tmp_path / "otto.jsonl.gz"
    with FIXTURE.open("rb") as plain, gzip.open(compressed, "wb") as packed:
        shutil.copyfileobj(plain, packed)

    plain_summary = land_otto_file(FIXTURE, tmp_path / "plain")
    gzip_summary = land_otto_file(compressed, tmp_path / "gzip")

    assert {**gzip_summary, "part_file": None} == {**plain_summary, "part_file": None}
    for folder in (tmp_path / "plain").glob("week=*"):
        assert (tmp_path / "gzip" / folder.name / part_file_name(compressed)).read_bytes() == (
            folder / part_file_name(FIXTURE)
        ).read_bytes()


def test_landing_merges_and_a_rerun_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "out"
    land_otto_file(FIXTURE, out)
    fixture_weeks = read_lines(out)
    (out / "notes.txt").write_text("not ours")
    only_week_two = json.dumps({"session": 1, "events": [{"aid": 1, "ts": MONDAY_2022_08_08_MS, "type": "clicks"}]})
    second = write_jsonl(tmp_path / "second.jsonl", [only_week_two, only_week_two, "not json"])

    summary = land_otto_file(second, out)
    summary_again = land_otto_file(second, out)

    assert summary == summary_again
    merged = read_lines(out)
    assert merged["week=2022-08-08"] == fixture_weeks["week=2022-08-08"] + [json.loads(only_week_two)] * 2
    assert {k: v for k, v in merged.items() if k != "week=2022-08-08"} == {k: v for k, v in fixture_weeks.items() if k != "week=2022-08-08"}
    assert (out / "notes.txt").read_text() == "not ours"

    # The same input, now landing elsewhere: its old week file goes, the other input's stay.
    write_jsonl(second, [only_week_two.replace(str(MONDAY_2022_08_08_MS), str(MONDAY_2022_08_08_MS + 7 * 86_400_000))])
    land_otto_file(second, out)
    after = read_lines(out)
    assert after["week=2022-08-08"] == fixture_weeks["week=2022-08-08"]
    assert len(after["week=2022-08-15"]) == len(fixture_weeks["week=2022-08-15"]) + 1
    assert not (out / "_rejected" / part_file_name(second)).exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_huge_line_is_rejected_without_holding_it(tmp_path):
    good = json.dumps({"session": 1, "events": [{"aid": 1, "ts": MONDAY_2022_08_08_MS, "type": "clicks"}]})
    huge = json.dumps({"session": 2, "events": [{"aid": 1, "ts": MONDAY_2022_08_08_MS, "type": "clicks"}], "pad": "x" * 50_000})
    source = write_jsonl(tmp_path / "in.jsonl", [good, huge, good])
    summary = land_otto_file(source, tmp_path / "out", max_line_bytes=10_000)
    assert summary["rejected"] == {"line_too_long": 1} and summary["sessions_landed"] == 2
    [rejected] = [json.loads(line) for line in (tmp_path / "out" / "_rejected" / part_file_name(source)).open()]
    assert rejected["line"] == 2 and rejected["bytes"] == len(huge) + 1
    assert rejected["text"] == huge[: land_module.MAX_REJECTED_TEXT_CHARS]


def test_more_weeks_than_open_files_land(tmp_path, monkeypatch):
    monkeypatch.setattr(land_module, "MAX_OPEN_FILES", 2)
    week_ms = 7 * 86_400_000
    lines = [json.dumps({"session": s, "events": [{"aid": 1, "ts": MONDAY_2022_08_08_MS + (s % 5) * week_ms, "type": "clicks"}]})
             for s in range(20)]
    summary = land_otto_file(write_jsonl(tmp_path / "in.jsonl", lines), tmp_path / "out")
    assert summary["weeks"] == {week: 4 for week in ["2022-08-08", "2022-08-15", "2022-08-22", "2022-08-29", "2022-09-05"]}
    assert sum(len(v) for v in read_lines(tmp_path / "out").values()) == 20


def test_failure_keeps_the_previous_output_and_leaves_no_staging_behind(tmp_path):
    land_otto_file(FIXTURE, tmp_path)
    before = sorted(path.name for path in tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):
        land_otto_file(tmp_path / "missing.jsonl", tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == before


def test_weeks_follow_local_time(tmp_path):
    # Sunday 23:59:59.999 Berlin is still the first week; 00:00 Monday starts the next.
    events = [
        {"aid": 1, "ts": MONDAY_2022_08_08_MS - 1, "type": "clicks"},
        {"aid": 2, "ts": MONDAY_2022_08_08_MS, "type": "clicks"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps({"session": 0, "events": events})])
    assert land_otto_file(source, tmp_path / "out", timezone=TIMEZONE)["weeks"] == {"2022-08-01": 1, "2022-08-08": 1}
    assert land_otto_file(source, tmp_path / "utc", timezone="UTC")["weeks"] == {"2022-08-01": 2}


def test_progress_is_told_every_byte_read(tmp_path, monkeypatch):
    lines = [json.dumps({"session": s, "events": [{"aid": 1, "ts": 1659304800000 + s, "type": "clicks"}]})
             for s in range(25)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    reported = []
    monkeypatch.setattr(land_module, "PROGRESS_EVERY_LINES", 10)
    land_otto_file(source, tmp_path / "out", progress=reported.append)
    assert len(reported) == 3  # after lines 10 and 20, and the rest at the end
    assert sum(reported) == source.stat().st_size
