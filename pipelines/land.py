"""Split an OTTO session file into the weekly raw layout (`recsys land`).

The OTTO train file is one JSON object per session covering four weeks. The pipeline's
landing zone holds one folder per week instead (`week=YYYY-MM-DD/part-<input>.jsonl`) with,
for each session, only that week's events, so a weekly partition reads only its folder.

The file is streamed line by line (11 GB, 12.9M lines for the real train file) with a bound
on a line's length, so memory stays constant, and at most `MAX_OPEN_FILES` outputs are open
at once. `land` only rejects what it cannot place in a week; everything else (types, aids,
duplicates) is validated by the Spark `events` stage, which quarantines bad records with
reasons of its own.

Landing merges: each input writes one file per week named after the input
(`part-<name>-<hash of its path>.jsonl`), so landing another file into the same `--out` adds
to its weeks and never deletes them, and landing the same input again replaces only its own
files.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from pipelines.config import DEFAULT_TIMEZONE
from pipelines.weeks import WEEK_FOLDER_PREFIX, Week

REJECTED_FOLDER = "_rejected"
MAX_LINE_BYTES = 1 << 20
PROGRESS_EVERY_LINES = 10_000
MAX_OPEN_FILES = 64
MAX_REJECTED_TEXT_CHARS = 4000
# Millisecond timestamps outside [2000-01-01, 2100-01-01) UTC are seconds, negative or garbage.
MIN_PLAUSIBLE_TS_MS = 946_684_800_000
MAX_PLAUSIBLE_TS_MS = 4_102_444_800_000

# Rejection reasons, the keys of the summary's "rejected" count.
INVALID_JSON = "invalid_json"
TOO_DEEP = "too_deep"  # nesting beyond what the JSON parser recurses into
LINE_TOO_LONG = "line_too_long"
NO_EVENTS = "no_events"
BAD_TS = "bad_ts"  # not an integer
IMPLAUSIBLE_TS = "implausible_ts"

_GZIP_MAGIC = b"\x1f\x8b"
_IO_BUFFER_BYTES = 1 << 20


def part_file_name(input_path: str | Path) -> str:
    """The file an input lands as in each week folder: stable for the same input path."""
    resolved = str(Path(input_path).resolve())
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(input_path).name.split(".")[0]).strip("-")[:40] or "input"
    return f"part-{stem}-{hashlib.sha1(resolved.encode()).hexdigest()[:8]}.jsonl"


def land_otto_file(
    input_path: str | Path,
    out_dir: str | Path,
    timezone: str = DEFAULT_TIMEZONE,
    max_line_bytes: int = MAX_LINE_BYTES,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Write every session of an OTTO JSONL file (plain or gzip) into its week folders;
    `progress(bytes)` is told every few thousand lines how many more input bytes were read.

    Each (session, week) becomes one line holding the session's top-level fields and the
    events of that week, in their original order and with their original fields. A line
    is rejected as a whole when it is longer than `max_line_bytes` (`line_too_long`, never
    parsed), is not JSON (`invalid_json`) or nested too deep to parse (`too_deep`), has no
    non-empty `events` list (`no_events`), or has an event whose `ts` is not an integer
    (`bad_ts`) or not a plausible millisecond time (`implausible_ts`): dropping only the bad
    event would silently change the session. Rejected lines go to
    `_rejected/<part file>` as JSON objects `{"line", "reason", "bytes", "text"}` (`text` is
    the line as valid UTF-8, cut to 4,000 characters only when the line was too long).

    Output is written to a hidden staging folder first and moved into place at the end;
    this input's files from an earlier landing are replaced, other files are never touched.

    Returns {"lines", "sessions_landed" (input lines placed in at least one week),
    "events", "weeks": {week key: events}, "rejected": {reason: lines}, "part_file"}.
    """
    locate_week = _WeekLocator(timezone)
    lines = sessions_landed = events_landed = 0
    week_events: dict[str, int] = {}
    rejected: dict[str, int] = {}
    part_name = part_file_name(input_path)

    def reject(reason: str, line_number: int, line: bytes, size: int) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1
        text = line.decode("utf-8", errors="replace")
        if reason == LINE_TOO_LONG:
            text = text[:MAX_REJECTED_TEXT_CHARS]
        record = {"line": line_number, "reason": reason, "bytes": size, "text": text}
        writers.write(REJECTED_FOLDER, json.dumps(record, ensure_ascii=False).encode())

    with merged_layout(out_dir, part_name) as staging, _open_jsonl(input_path) as source, \
            _PartWriters(staging, part_name) as writers:
        unreported_bytes = 0
        for raw_line, size in _bounded_lines(source, max_line_bytes):
            lines += 1
            unreported_bytes += size + 1
            if progress is not None and lines % PROGRESS_EVERY_LINES == 0:
                progress(unreported_bytes)
                unreported_bytes = 0
            if raw_line is None:
                reject(LINE_TOO_LONG, lines, source.last_prefix, size)
                continue
            line = raw_line.rstrip(b"\r\n")
            record, events_by_week, reason = _split_by_week(line, locate_week)
            if reason is not None:
                reject(reason, lines, line, size)
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

    if progress is not None and unreported_bytes:
        progress(unreported_bytes)
    return {
        "lines": lines,
        "sessions_landed": sessions_landed,
        "events": events_landed,
        "weeks": dict(sorted(week_events.items())),
        "rejected": dict(sorted(rejected.items())),
        "part_file": part_name,
    }


class _PrefixKeepingReader:
    """Wraps a binary stream; remembers the first bytes of the last over-long line."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.last_prefix = b""

    def readline(self, limit: int) -> bytes:
        return self._stream.readline(limit)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._stream.close()


def _bounded_lines(source: "_PrefixKeepingReader", max_line_bytes: int):
    """(line, size) per input line; line is None when longer than `max_line_bytes` (its first
    bytes are in `source.last_prefix`, the rest is skipped without being held in memory)."""
    while True:
        line = source.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) <= max_line_bytes or line.endswith(b"\n") and len(line) == max_line_bytes + 1:
            yield line, len(line.rstrip(b"\r\n"))
            continue
        source.last_prefix = line[: MAX_REJECTED_TEXT_CHARS * 4]
        size = len(line)
        while not line.endswith(b"\n"):
            line = source.readline(_IO_BUFFER_BYTES)
            if not line:
                break
            size += len(line)
        yield None, size


@contextlib.contextmanager
def _staging_folder(out_dir: str | Path) -> Iterator[tuple[Path, Path]]:
    """(out, an empty dot-named staging folder inside it); the staging folder goes on failure.
    Spark and Hadoop skip dot names, so a crash never exposes half a week."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield out, staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _is_layout_folder(folder: Path) -> bool:
    """The folders this module owns in an output: `week=*` and `_rejected`."""
    return folder.is_dir() and (folder.name.startswith(WEEK_FOLDER_PREFIX) or folder.name == REJECTED_FOLDER)


@contextlib.contextmanager
def staged_layout(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder inside `out_dir`; on success it replaces the old output.

    For a generated data set (`recsys generate`), which owns its layout: only folders this
    module owns are replaced, so pointing `out_dir` at a folder with other content never
    deletes that content.
    """
    with _staging_folder(out_dir) as (out, staging):
        yield staging
    _swap_in(staging, out)


@contextlib.contextmanager
def merged_layout(out_dir: str | Path, part_name: str) -> Iterator[Path]:
    """Yield a staging folder; on success its `<folder>/<part_name>` files move into `out_dir`,
    replacing this input's earlier files and removing those of weeks it no longer lands in."""
    with _staging_folder(out_dir) as (out, staging):
        yield staging
    landed = {folder.name for folder in staging.iterdir()}
    for new in sorted(staging.iterdir()):
        (out / new.name).mkdir(exist_ok=True)
        (new / part_name).rename(out / new.name / part_name)
    for folder in out.iterdir():
        if folder.name not in landed and _is_layout_folder(folder) and (folder / part_name).exists():
            (folder / part_name).unlink()
    shutil.rmtree(staging)


def _swap_in(staging: Path, out: Path) -> None:
    # Renames within one file system are cheap; the old output is moved aside before the
    # new one moves in so that the gap in which readers see neither is as short as possible.
    retired = Path(tempfile.mkdtemp(prefix=".retired-", dir=out))
    for old in out.iterdir():
        if _is_layout_folder(old):
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
    except RecursionError:
        return None, {}, TOO_DEEP
    events = record.get("events") if isinstance(record, dict) else None
    if not isinstance(events, list) or not events:
        return record, {}, NO_EVENTS
    events_by_week: dict[Week, list] = {}
    for event in events:
        ts = event.get("ts") if isinstance(event, dict) else None
        if type(ts) is not int:  # bool is an int subclass, and floats are not milliseconds
            return record, {}, BAD_TS
        if not MIN_PLAUSIBLE_TS_MS <= ts < MAX_PLAUSIBLE_TS_MS:
            return record, {}, IMPLAUSIBLE_TS
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
    """One `<folder>/<part_name>` per output folder; at most `MAX_OPEN_FILES` open at once
    (the least recently written is closed and reopened for appending when needed again)."""

    def __init__(self, root: Path, part_name: str) -> None:
        self._root = root
        self._part_name = part_name
        self._files: dict[str, IO[bytes]] = {}  # insertion order = least recently written first
        self._created: set[str] = set()

    def write(self, folder: str, line: bytes) -> None:
        handle = self._files.pop(folder, None)
        if handle is None:
            if len(self._files) >= MAX_OPEN_FILES:
                oldest = next(iter(self._files))
                self._files.pop(oldest).close()
            path = self._root / folder / self._part_name
            if folder not in self._created:
                path.parent.mkdir()
                self._created.add(folder)
            handle = open(path, "ab", buffering=_IO_BUFFER_BYTES)
        self._files[folder] = handle
        handle.write(line)
        handle.write(b"\n")

    def __enter__(self) -> "_PartWriters":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._files.values():
            handle.close()


def _open_jsonl(path: str | Path) -> "_PrefixKeepingReader":
    """Open plain or gzip input, recognised by its magic bytes rather than its name."""
    with open(path, "rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    return _PrefixKeepingReader(gzip.open(path, "rb") if is_gzip else open(path, "rb", buffering=_IO_BUFFER_BYTES))


def _count(counts: dict[str, int], key: str, amount: int) -> None:
    counts[key] = counts.get(key, 0) + amount
