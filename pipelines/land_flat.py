"""Land a flat event log (one row per event, keyed by visitor) into the weekly raw layout.

Many shops log events, not sessions. The public Retailrocket data set is the common example:
`events.csv` with `timestamp` (ms), `visitorid`, `event` (`view`, `addtocart`, `transaction`),
`itemid`, `transactionid`. `recsys land --format retailrocket` turns it into what the pipeline
reads (`week=YYYY-MM-DD/part-<input>.jsonl`, one OTTO session per line and week, as
`pipelines.land` writes it):

- a visitor's events, in time order, are split into sessions at every gap longer than
  `session_gap_minutes` (default 30);
- `view` -> `clicks`, `addtocart` -> `carts`, `transaction` -> `orders`;
- a session's id is `visitorid * 2**32 + the minute its first event falls in` (minutes since
  1970-01-01 UTC). The same events give the same ids on every run and in every week a session
  reaches; two sessions of one visitor start at least one gap apart, so at different minutes, and
  other visitors' ids differ in the high bits: no collisions. Visitor ids must be below 2**31.

Rows that cannot be placed (a wrong number of columns, an unknown event, a visitor or item that is
not a non-negative integer, a timestamp that is missing, not an integer or not plausible
milliseconds) are written to `_rejected/<part file>` with their line number and reason, and
counted in the summary. A file without the header row is read in the documented column order and
reported as `header_missing`.

Other flat logs (`recsys land --format events-csv --columns ... --events ...`) are read the same
way through a `FlatLayout`: which header columns hold the time, the visitor, the event and the
item, which event names are clicks, carts and orders (other names are rejected `unknown_event`),
and whether times are milliseconds or seconds. Their header row is required (the columns are
found by name); visitor and item ids must be non-negative integers.

Memory stays bounded whatever the file's size: the rows are streamed into per-visitor buckets on
disk (four int64 columns each, `BUCKET_ROWS` rows per bucket at most on average), and each bucket
is sorted and cut into sessions on its own.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import tempfile
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.config import DEFAULT_TIMEZONE
from pipelines.land import (
    MAX_PLAUSIBLE_TS_MS,
    MAX_REJECTED_TEXT_CHARS,
    MIN_PLAUSIBLE_TS_MS,
    REJECTED_FOLDER,
    _PartWriters,
    merged_layout,
    part_file_name,
)
from pipelines.vocabulary import EVENT_TYPES
from pipelines.weeks import Week

RETAILROCKET = "retailrocket"
EVENTS_CSV = "events-csv"
RETAILROCKET_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")
RETAILROCKET_EVENTS = {"view": "clicks", "addtocart": "carts", "transaction": "orders"}
FLAT_FIELDS = ("timestamp", "visitor", "event", "item")


@dataclass(frozen=True)
class FlatLayout:
    """Where a flat event log keeps each field (header names) and what its event names mean."""

    name: str
    columns: Mapping[str, str]  # FLAT_FIELDS -> header name
    events: Mapping[str, str]  # the log's event name -> clicks, carts or orders
    timestamp_ms: int = 1  # milliseconds per unit of the timestamp column (1000: seconds)
    # Without a header row the columns are read in this order (None: a header is required).
    positional: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        missing = [name for name in FLAT_FIELDS if not self.columns.get(name)]
        if missing:
            raise ValueError(f"the flat layout names no column for {', '.join(missing)} (need {', '.join(FLAT_FIELDS)})")
        unknown = sorted(set(self.events.values()) - set(EVENT_TYPES))
        if unknown or not self.events:
            raise ValueError(f"events must map the log's names to {', '.join(EVENT_TYPES)}; got {dict(self.events)}")
        if self.timestamp_ms not in (1, 1000):
            raise ValueError("timestamps are milliseconds (1) or seconds (1000)")

    @classmethod
    def parse(cls, columns: str, events: str, timestamp_unit: str = "ms") -> "FlatLayout":
        """From the command line: `timestamp=ts,visitor=user_id,event=action,item=product_id` and
        `view=clicks,cart=carts,buy=orders`."""
        def pairs(text: str, what: str) -> dict[str, str]:
            parsed = {}
            for item in filter(None, (part.strip() for part in text.split(","))):
                key, sep, value = item.partition("=")
                if not sep or not key.strip() or not value.strip():
                    raise ValueError(f"{what}: expected name=value pairs separated by commas, got {item!r}")
                parsed[key.strip()] = value.strip()
            return parsed

        column_map = pairs(columns, "--columns")
        unknown = sorted(set(column_map) - set(FLAT_FIELDS))
        if unknown:
            raise ValueError(f"--columns: unknown fields {unknown}; the fields are {', '.join(FLAT_FIELDS)}")
        if timestamp_unit not in ("ms", "s"):
            raise ValueError(f"--timestamp-unit is ms or s, not {timestamp_unit!r}")
        return cls(EVENTS_CSV, {k: v.lower() for k, v in column_map.items()}, pairs(events, "--events"),
                   timestamp_ms=1 if timestamp_unit == "ms" else 1000)


RETAILROCKET_LAYOUT = FlatLayout(
    RETAILROCKET, {"timestamp": "timestamp", "visitor": "visitorid", "event": "event", "item": "itemid"},
    RETAILROCKET_EVENTS, positional=RETAILROCKET_COLUMNS)
DEFAULT_SESSION_GAP_MINUTES = 30.0
MAX_VISITOR_ID = 2**31 - 1
MINUTE_MS = 60_000
# Rows per bucket file, on average: bounds what one sort holds (four int64 columns: 32 bytes a row).
BUCKET_ROWS = 4_000_000
# A CSV row of this layout takes about 40 bytes: sizes the bucket count before reading.
ROW_BYTES_ESTIMATE = 40

# Rejection reasons, the keys of the summary's "rejected" count.
WRONG_COLUMN_COUNT = "wrong_column_count"
UNKNOWN_EVENT = "unknown_event"
BAD_VISITOR = "bad_visitorid"
BAD_ITEM = "bad_itemid"
BAD_TIMESTAMP = "bad_timestamp"
HEADER_MISSING = "header_missing"


def session_id(visitor: int, first_event_ms: int) -> int:
    """The id of the session of `visitor` whose first event is at `first_event_ms` (module docstring)."""
    return (visitor << 32) | (first_event_ms // MINUTE_MS)


def _parse_int(text: str) -> int | None:
    text = text.strip()
    if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())):
        return None
    return int(text)


def _open_text(path: str | Path) -> io.TextIOBase:
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if is_gzip else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def land_flat_events(
    input_path: str | Path,
    out_dir: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    session_gap_minutes: float = DEFAULT_SESSION_GAP_MINUTES,
    progress: Callable[[int], object] | None = None,
    layout: FlatLayout = RETAILROCKET_LAYOUT,
) -> dict:
    """Land a flat event log CSV (plain or gzip; the Retailrocket layout unless `layout` says
    otherwise) into `out_dir`'s weekly layout.

    Returns {"format", "rows", "events", "sessions", "visitors", "weeks": {week key: events},
    "rejected": {reason: rows}, "part_file", "session_gap_minutes"}. `progress(rows)` is told
    every 100,000 rows how many more were read.
    """
    if not session_gap_minutes >= 1:
        raise ValueError(f"--session-gap-minutes must be at least 1 (ids count minutes), got {session_gap_minutes}")
    gap_ms = int(session_gap_minutes * MINUTE_MS)
    part_name = part_file_name(input_path)
    n_buckets = max(1, math.ceil(os.path.getsize(input_path) / ROW_BYTES_ESTIMATE / BUCKET_ROWS))
    rejected: dict[str, int] = {}
    rows = 0
    type_codes = {name: EVENT_TYPES.index(kind) for name, kind in layout.events.items()}

    with merged_layout(out_dir, part_name) as staging, _PartWriters(staging, part_name) as writers, \
            tempfile.TemporaryDirectory(prefix=".buckets-", dir=staging.parent) as bucket_dir:

        def reject(reason: str, line_number: int, text: str) -> None:
            rejected[reason] = rejected.get(reason, 0) + 1
            record = {"line": line_number, "reason": reason, "text": text[:MAX_REJECTED_TEXT_CHARS]}
            writers.write(REJECTED_FOLDER, json.dumps(record, ensure_ascii=False).encode())

        buckets = [Path(bucket_dir) / f"{index:05d}.bin" for index in range(n_buckets)]
        pending = [array("q") for _ in buckets]

        def flush(index: int) -> None:
            with open(buckets[index], "ab") as handle:
                pending[index].tofile(handle)
            pending[index] = array("q")

        with _open_text(input_path) as text:
            reader = csv.reader(text)
            wanted = [layout.columns[name].lower() for name in FLAT_FIELDS]
            positions = {name: position for position, name in enumerate(layout.positional or ())}
            width = len(layout.positional or ())
            columns = None
            for row in reader:
                if reader.line_num == 1:
                    header = [cell.strip().lower() for cell in row]
                    if set(wanted) <= set(header):
                        positions, width = {name: header.index(name) for name in header}, len(header)
                        continue
                    if layout.positional is None:
                        missing = sorted(set(wanted) - set(header))
                        raise ValueError(f"{input_path}: the header row has no column {', '.join(missing)} "
                                         f"(found: {', '.join(header)})")
                    reject(HEADER_MISSING, 1, ",".join(row))
                if columns is None:  # from the header row, or the documented order without one
                    columns = {name: positions[layout.columns[name].lower()] for name in FLAT_FIELDS}
                rows += 1
                line_number = reader.line_num
                if len(row) != width:
                    reject(WRONG_COLUMN_COUNT, line_number, ",".join(row))
                    continue
                ts = _parse_int(row[columns["timestamp"]])
                ts = None if ts is None else ts * layout.timestamp_ms
                if ts is None or not MIN_PLAUSIBLE_TS_MS <= ts < MAX_PLAUSIBLE_TS_MS:
                    reject(BAD_TIMESTAMP, line_number, ",".join(row))
                    continue
                visitor = _parse_int(row[columns["visitor"]])
                if visitor is None or not 0 <= visitor <= MAX_VISITOR_ID:
                    reject(BAD_VISITOR, line_number, ",".join(row))
                    continue
                code = type_codes.get(row[columns["event"]].strip())
                if code is None:
                    reject(UNKNOWN_EVENT, line_number, ",".join(row))
                    continue
                aid = _parse_int(row[columns["item"]])
                if aid is None or aid < 0:
                    reject(BAD_ITEM, line_number, ",".join(row))
                    continue
                index = visitor % n_buckets
                pending[index].extend((visitor, ts, line_number, aid * 4 + code))
                if len(pending[index]) >= 4 * 65_536:
                    flush(index)
                if progress is not None and rows % 100_000 == 0:
                    progress(100_000)
            if progress is not None:
                progress(rows % 100_000)
        for index in range(n_buckets):
            flush(index)

        events = sessions = visitors = 0
        week_events: dict[str, int] = {}
        for bucket in buckets:
            found = _land_bucket(bucket, gap_ms, timezone, writers, week_events)
            events, sessions, visitors = events + found[0], sessions + found[1], visitors + found[2]

    return {
        "format": layout.name,
        "rows": rows,
        "events": events,
        "sessions": sessions,
        "visitors": visitors,
        "weeks": dict(sorted(week_events.items())),
        "rejected": dict(sorted(rejected.items())),
        "part_file": part_name,
        "session_gap_minutes": session_gap_minutes,
    }


def _land_bucket(bucket: Path, gap_ms: int, timezone: str, writers: _PartWriters,
                 week_events: dict[str, int]) -> tuple[int, int, int]:
    """Sort one bucket's rows by visitor and time (file order breaks ties), cut them into
    sessions, and write each (session, week) as one OTTO line. Returns (events, sessions, visitors)."""
    if not bucket.exists() or bucket.stat().st_size == 0:
        return 0, 0, 0
    data = np.fromfile(bucket, dtype=np.int64).reshape(-1, 4)
    order = np.lexsort((data[:, 2], data[:, 1], data[:, 0]))
    visitor, ts, item_and_type = data[order, 0], data[order, 1], data[order, 3]
    new_visitor = np.ones(len(visitor), bool)
    new_visitor[1:] = visitor[1:] != visitor[:-1]
    new_session = new_visitor.copy()
    new_session[1:] |= (ts[1:] - ts[:-1]) > gap_ms
    session_start = np.maximum.accumulate(np.where(new_session, np.arange(len(ts)), 0))
    # Weeks by their start in the time zone (a week is not always 7 x 24 h: daylight saving time).
    weeks = [Week.containing_ms(int(ts.min()), timezone)]
    while weeks[-1].end_ms <= int(ts.max()):
        weeks.append(weeks[-1].shift(1))
    week_of = np.searchsorted(np.array([week.start_ms for week in weeks]), ts, side="right") - 1
    new_line = new_session.copy()
    new_line[1:] |= week_of[1:] != week_of[:-1]
    line_starts = np.flatnonzero(new_line)
    line_ends = np.append(line_starts[1:], len(ts))
    type_names = [json.dumps(name) for name in EVENT_TYPES]
    texts = [f'{{"aid":{code >> 2},"ts":{when},"type":{type_names[code & 3]}}}'
             for code, when in zip(item_and_type.tolist(), ts.tolist())]
    ids = [session_id(v, t) for v, t in zip(visitor[session_start].tolist(), ts[session_start].tolist())]
    folders = [week.folder for week in weeks]
    for start, end, week in zip(line_starts.tolist(), line_ends.tolist(), week_of[line_starts].tolist()):
        writers.write(folders[week], f'{{"session":{ids[start]},"events":[{",".join(texts[start:end])}]}}'.encode())
    for week, count in zip(weeks, np.bincount(week_of, minlength=len(weeks)).tolist()):
        if count:
            week_events[week.key] = week_events.get(week.key, 0) + count
    return len(ts), int(new_session.sum()), int(new_visitor.sum())
