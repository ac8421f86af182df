"""Split an OTTO session file into the weekly raw layout (`recsys land`).

The OTTO train file is one JSON object per session covering four weeks. The pipeline's
landing zone holds one folder per week instead (`week=YYYY-MM-DD/part-00000.jsonl`) with,
for each session, only that week's events, so a weekly partition reads only its folder.

The file is streamed line by line (11 GB, 12.9M lines for the real train file), so memory
stays constant apart from one open output file per week. `land` only rejects what it cannot
place in a week; everything else (types, aids, duplicates) is validated by the Spark
`events` stage, which quarantines bad records with reasons of its own.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pipelines.config import DEFAULT_TIMEZONE
from pipelines.weeks import WEEK_FOLDER_PREFIX, Week

PART_FILE_NAME = "part-00000.jsonl"
REJECTED_FOLDER = "_rejected"

# Rejection reasons, the keys of the summary's "rejected" count.
INVALID_JSON = "invalid_json"
NO_EVENTS = "no_events"
BAD_TS = "bad_ts"

_GZIP_MAGIC = b"\x1f\x8b"
_IO_BUFFER_BYTES = 1 << 20


def land_otto_file(input_path: str | Path, out_dir: str | Path, timezone: str = DEFAULT_TIMEZONE) -> dict:
    """Write every session of an OTTO JSONL file (plain or gzip) into its week folders.

    Each (session, week) becomes one line holding the session's top-level fields and the
    events of that week, in their original order and with their original fields. A line
    is rejected as a whole, and copied unchanged to `_rejected/part-00000.jsonl`, when it
    is not JSON (`invalid_json`), has no non-empty `events` list (`no_events`), or has an
    event without an integer millisecond `ts` that maps to a date (`bad_ts`): dropping
    only the bad event would silently change the session.

    The previous `week=*` and `_rejected` folders of `out_dir` are replaced, not appended
    to: output is written to a hidden staging folder first and swapped in at the end.

    Returns {"lines", "sessions_landed" (input lines placed in at least one week),
    "events", "weeks": {week key: events}, "rejected": {reason: lines}}.
    """
    locate_week = _WeekLocator(timezone)
    lines = sessions_landed = events_landed = 0
    week_events: dict[str, int] = {}
    rejected: dict[str, int] = {}

    with staged_layout(out_dir) as staging, _open_jsonl(input_path) as source, _PartWriters(staging) as writers:
        for raw_line in source:
            lines += 1
            line = raw_line.rstrip(b"\r\n")
            record, events_by_week, reason = _split_by_week(line, locate_week)
            if reason is not None:
                rejected[reason] = rejected.get(reason, 0) + 1
                writers.write(REJECTED_FOLDER, line)
                continue
            sessions_landed += 1
            if len(events_by_week) == 1:
                # The common case: the whole session lies in one week, so the line is
                # already in its final form and need not be serialised again.
                [(week, events)] = events_by_week.items()
                writers.write(week.folder, line)
                _count(week_events, week.key, len(events))
                events_landed += len(events)
                continue
            for week, events in events_by_week.items():
                week_record = {**record, "events": events}
                writers.write(week.folder, json.dumps(week_record, separators=(",", ":"), ensure_ascii=False).encode())
                _count(week_events, week.key, len(events))
                events_landed += len(events)

    return {
        "lines": lines,
        "sessions_landed": sessions_landed,
        "events": events_landed,
        "weeks": dict(sorted(week_events.items())),
        "rejected": dict(sorted(rejected.items())),
    }


@contextlib.contextmanager
def staged_layout(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder inside `out_dir`; on success it replaces the old output.

    Only folders this module owns (`week=*` and `_rejected`) are replaced, so pointing
    `out_dir` at a folder with other content never deletes that content. The staging folder
    starts with a dot, which Spark and Hadoop skip, so a crash never exposes half a week.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, out)


def _swap_in(staging: Path, out: Path) -> None:
    # Renames within one file system are cheap; the old output is moved aside before the
    # new one moves in so that the gap in which readers see neither is as short as possible.
    retired = Path(tempfile.mkdtemp(prefix=".retired-", dir=out))
    for old in out.iterdir():
        if old.is_dir() and (old.name.startswith(WEEK_FOLDER_PREFIX) or old.name == REJECTED_FOLDER):
            old.rename(retired / old.name)
    for new in sorted(staging.iterdir()):
        new.rename(out / new.name)
    staging.rmdir()
    shutil.rmtree(retired)


def _split_by_week(line: bytes, locate_week: "_WeekLocator") -> tuple[Any, dict[Week, list], str | None]:
    """Parse a line and group its events by week, or say why it cannot be placed."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both derive from it
        return None, {}, INVALID_JSON
    events = record.get("events") if isinstance(record, dict) else None
    if not isinstance(events, list) or not events:
        return record, {}, NO_EVENTS
    events_by_week: dict[Week, list] = {}
    for event in events:
        ts = event.get("ts") if isinstance(event, dict) else None
        if type(ts) is not int:  # bool is an int subclass, and floats are not milliseconds
            return record, {}, BAD_TS
        try:
            week = locate_week(ts)
        except (OverflowError, OSError, ValueError):  # beyond what a date can represent
            return record, {}, BAD_TS
        events_by_week.setdefault(week, []).append(event)
    return record, events_by_week, None


class _WeekLocator:
    """`Week.containing_ms` with the last week's bounds cached: consecutive events almost
    always share a week, and a time-zone conversion per event would dominate the run."""

    def __init__(self, timezone: str) -> None:
        self._timezone = timezone
        self._week: Week | None = None
        self._start_ms = 0
        self._end_ms = 0

    def __call__(self, ts_ms: int) -> Week:
        if self._week is None or not self._start_ms <= ts_ms < self._end_ms:
            self._week = Week.containing_ms(ts_ms, self._timezone)
            self._start_ms, self._end_ms = self._week.start_ms, self._week.end_ms
        return self._week


class _PartWriters:
    """One lazily opened `part-00000.jsonl` per output folder."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._files: dict[str, IO[bytes]] = {}

    def write(self, folder: str, line: bytes) -> None:
        handle = self._files.get(folder)
        if handle is None:
            (self._root / folder).mkdir()
            handle = open(self._root / folder / PART_FILE_NAME, "wb", buffering=_IO_BUFFER_BYTES)
            self._files[folder] = handle
        handle.write(line)
        handle.write(b"\n")

    def __enter__(self) -> "_PartWriters":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._files.values():
            handle.close()


def _open_jsonl(path: str | Path) -> IO[bytes]:
    """Open plain or gzip input, recognised by its magic bytes rather than its name."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if is_gzip else open(path, "rb", buffering=_IO_BUFFER_BYTES)


def _count(counts: dict[str, int], key: str, amount: int) -> None:
    counts[key] = counts.get(key, 0) + amount
