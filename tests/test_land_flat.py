"""`recsys land --format retailrocket`: a hand-written Retailrocket-layout file with known gaps and
bad rows lands as exact sessions, and the landed weeks go through the pipeline's first stages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipelines import land_flat
from pipelines.land_flat import MINUTE_MS, FlatLayout, land_flat_events, session_id
from pipelines.weeks import Week

TIMEZONE = "Europe/Berlin"
WEEK = Week.parse("2022-08-01", TIMEZONE)
NEXT = WEEK.shift(1)
T0 = WEEK.start_ms + 10 * 3_600_000  # Monday 10:00
MIN = MINUTE_MS

HEADER = "timestamp,visitorid,event,itemid,transactionid"
GOOD_ROWS = [
    # visitor 7: two sessions (a 31-minute gap), rows out of order in the file
    f"{T0 + 5 * MIN},7,addtocart,101,",
    f"{T0},7,view,100,",
    f"{T0 + 37 * MIN},7,view,102,",
    f"{T0 + 6 * MIN},7,transaction,101,9001",
    # visitor 8: a 30-minute gap is not longer than the threshold: one session
    f"{T0},8,view,200,",
    f"{T0 + 30 * MIN},8,view,201,",
    # visitor 9: one session across Sunday midnight, so it reaches two weeks with one id
    f"{NEXT.start_ms - 10 * MIN},9,view,300,",
    f"{NEXT.start_ms + 10 * MIN},9,addtocart,300,",
    # two events of visitor 10 at the same millisecond keep the file's order
    f"{T0},10,view,400,",
    f"{T0},10,addtocart,401,",
]
BAD_ROWS = {
    "bad_timestamp": ["1659,11,view,1,", f"{T0}.5,11,view,1,", ",11,view,1,"],
    "bad_visitorid": [f"{T0},x,view,1,", f"{T0},-3,view,1,", f"{T0},{2**31},view,1,"],
    "unknown_event": [f"{T0},12,like,1,"],
    "bad_itemid": [f"{T0},13,view,abc,"],
    "wrong_column_count": [f"{T0},14,view", f"{T0},14,view,1,,extra"],
}


def _write(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _landed(out: Path) -> dict[str, list[dict]]:
    return {folder.name: [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]
            for folder in sorted(out.glob("week=*"))}


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_retailrocket_file_lands_as_exact_sessions_with_every_bad_row_rejected(tmp_path, suffix):
    bad = [row for rows in BAD_ROWS.values() for row in rows]
    source = _write(tmp_path / f"events{suffix}", [HEADER, *GOOD_ROWS[:5], *bad, *GOOD_ROWS[5:]])
    summary = land_flat_events(source, tmp_path / "out", timezone=TIMEZONE)

    assert summary["rows"] == len(GOOD_ROWS) + len(bad)
    assert summary["rejected"] == {reason: len(rows) for reason, rows in sorted(BAD_ROWS.items())}
    assert (summary["events"], summary["sessions"], summary["visitors"]) == (10, 5, 4)
    assert summary["weeks"] == {WEEK.key: 9, NEXT.key: 1}

    landed = _landed(tmp_path / "out")
    by_session = {}
    for week, lines in landed.items():
        for line in lines:
            by_session.setdefault(line["session"], {})[week] = [(e["aid"], e["ts"], e["type"]) for e in line["events"]]
    assert by_session == {
        session_id(7, T0): {WEEK.folder: [(100, T0, "clicks"), (101, T0 + 5 * MIN, "carts"), (101, T0 + 6 * MIN, "orders")]},
        session_id(7, T0 + 37 * MIN): {WEEK.folder: [(102, T0 + 37 * MIN, "clicks")]},
        session_id(8, T0): {WEEK.folder: [(200, T0, "clicks"), (201, T0 + 30 * MIN, "clicks")]},
        session_id(9, NEXT.start_ms - 10 * MIN): {WEEK.folder: [(300, NEXT.start_ms - 10 * MIN, "clicks")],
                                                   NEXT.folder: [(300, NEXT.start_ms + 10 * MIN, "carts")]},
        session_id(10, T0): {WEEK.folder: [(400, T0, "clicks"), (401, T0, "carts")]},
    }
    rejected = [json.loads(line) for line in next((tmp_path / "out" / "_rejected").glob("*.jsonl")).read_text().splitlines()]
    assert {(r["reason"], r["text"]) for r in rejected} == {(reason, row) for reason, rows in BAD_ROWS.items() for row in rows}
    assert all(r["line"] > 1 for r in rejected)

    # A rerun replaces this input's files with the same ones: ids are stable.
    again = land_flat_events(source, tmp_path / "out", timezone=TIMEZONE)
    assert again == summary and _landed(tmp_path / "out") == landed


def test_another_flat_log_lands_through_its_column_and_event_mapping(tmp_path):
    """`--format events-csv`: other column names in another order, seconds, the shop's own event
    names; the same sessions as the Retailrocket file of the same events."""
    layout = FlatLayout.parse("timestamp=Time,visitor=user,event=action,item=product",
                              "detail=clicks,add=carts,buy=orders,checkout=orders", timestamp_unit="s")
    seconds = lambda ms: ms // 1000  # noqa: E731
    rows = ["product,action,user,Time,channel",
            f"100,detail,7,{seconds(T0)},web", f"101,add,7,{seconds(T0 + 5 * MIN)},web",
            f"101,checkout,7,{seconds(T0 + 6 * MIN)},app", f"102,detail,7,{seconds(T0 + 37 * MIN)},web",
            f"200,wishlist,8,{seconds(T0)},web", f"201,detail,8,{seconds(T0)}"]
    summary = land_flat_events(_write(tmp_path / "log.csv", rows), tmp_path / "out", timezone=TIMEZONE, layout=layout)
    assert summary["format"] == "events-csv" and summary["rejected"] == {"unknown_event": 1, "wrong_column_count": 1}
    assert (summary["events"], summary["sessions"], summary["visitors"]) == (4, 2, 1)
    landed = {line["session"]: [(e["aid"], e["ts"], e["type"]) for e in line["events"]]
              for lines in _landed(tmp_path / "out").values() for line in lines}
    assert landed == {session_id(7, T0): [(100, T0, "clicks"), (101, T0 + 5 * MIN, "carts"), (101, T0 + 6 * MIN, "orders")],
                      session_id(7, T0 + 37 * MIN): [(102, T0 + 37 * MIN, "clicks")]}

    with pytest.raises(ValueError, match="no column action, product, time, user"):
        land_flat_events(_write(tmp_path / "headless.csv", rows[1:]), tmp_path / "out2", timezone=TIMEZONE, layout=layout)
    with pytest.raises(ValueError, match="no column for item"):
        FlatLayout.parse("timestamp=Time,visitor=user,event=action", "detail=clicks")
    with pytest.raises(ValueError, match="clicks, carts, orders"):
        FlatLayout.parse("timestamp=t,visitor=u,event=e,item=i", "detail=likes")
    with pytest.raises(ValueError, match="unknown fields"):
        FlatLayout.parse("timestamp=t,visitor=u,event=e,item=i,price=p", "detail=clicks")


def test_session_ids_are_stable_and_distinct():
    assert session_id(7, T0) == 7 * 2**32 + T0 // MIN
    ids = {session_id(visitor, T0 + k * 31 * MIN) for visitor in (0, 1, 2**31 - 1) for k in range(50)}
    assert len(ids) == 150 and all(0 <= i < 2**63 for i in ids)


def test_a_file_without_header_is_read_in_the_documented_order_and_reported(tmp_path):
    source = _write(tmp_path / "events.csv", GOOD_ROWS)
    summary = land_flat_events(source, tmp_path / "out", timezone=TIMEZONE)
    assert summary["rejected"] == {"header_missing": 1} and summary["events"] == 10


def test_the_gap_is_configurable_and_validated(tmp_path):
    source = _write(tmp_path / "events.csv", [HEADER, *GOOD_ROWS])
    assert land_flat_events(source, tmp_path / "out", timezone=TIMEZONE, session_gap_minutes=60)["sessions"] == 4
    with pytest.raises(ValueError, match="at least 1"):
        land_flat_events(source, tmp_path / "out2", timezone=TIMEZONE, session_gap_minutes=0.5)


def test_many_buckets_give_the_same_landing(tmp_path, monkeypatch):
    source = _write(tmp_path / "events.csv", [HEADER, *GOOD_ROWS])
    one = land_flat_events(source, tmp_path / "one", timezone=TIMEZONE)
    monkeypatch.setattr(land_flat, "BUCKET_ROWS", 1)
    several = land_flat_events(source, tmp_path / "several", timezone=TIMEZONE)
    assert {k: v for k, v in several.items() if k != "part_file"} == {k: v for k, v in one.items() if k != "part_file"}

    def sessions(out):
        return sorted(json.dumps(line, sort_keys=True) for lines in _landed(out).values() for line in lines)

    assert sessions(tmp_path / "several") == sessions(tmp_path / "one")


def test_landed_weeks_materialize_through_events_and_sessions(spark, tmp_path):
    from dagster import AssetSelection, DagsterInstance, define_asset_job, in_process_executor

    from assets.partitions import weekly_partitions
    from definitions import build_definitions
    from tests.conftest import make_resources

    source = _write(tmp_path / "events.csv", [HEADER, *GOOD_ROWS])
    land_flat_events(source, tmp_path / "raw", timezone=TIMEZONE)
    definitions = build_definitions(make_resources(str(tmp_path / "raw"), str(tmp_path / "lake"), max_quarantine_rate=0.0))
    job = define_asset_job("landed", selection=AssetSelection.assets("events", "sessions"),
                           partitions_def=weekly_partitions, executor_def=in_process_executor,
                           ).resolve(asset_graph=definitions.resolve_asset_graph())
    result = job.execute_in_process(partition_key=WEEK.key, instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert result.success, [str(e.message) for e in result.all_events if e.is_failure]
    metadata = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert metadata["events"]["dagster/partition_row_count"].value == 9
    assert metadata["events"]["quarantined"].value == 0
    assert metadata["sessions"]["dagster/partition_row_count"].value == 5


def test_recsys_land_maps_an_events_csv_from_the_command_line(tmp_path, capsys):
    from pipelines.cli import main

    source = _write(tmp_path / "log.csv", ["product,action,user,Time", f"100,detail,7,{T0 // 1000}",
                                           f"101,add,7,{(T0 + MIN) // 1000}"])
    argv = ["land", "--format", "events-csv", "--input", str(source), "--out", str(tmp_path / "out"),
            "--timezone", TIMEZONE, "--columns", "timestamp=Time,visitor=user,event=action,item=product",
            "--events", "detail=clicks,add=carts", "--timestamp-unit", "s"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == 1
    assert main(argv[:-6]) == 2 and "needs --columns and --events" in capsys.readouterr().err
