"""The raw landing zone: `<RECSYS_RAW_URI>/week=YYYY-MM-DD/…`, local or on S3.

One listing rule for a local folder and an S3 prefix: every file under the week's folder, at any
depth, is either read or reported as skipped with its reason, so nothing is left out silently.
Names are data, never patterns: each file is staged under a generated name (a hard link or copy
locally, a download from S3) and Spark reads only those, so `[`, `*`, `{`, `:` in a raw name mean
nothing to Hadoop. A compressed file that cannot be decompressed to its end is reported as
unreadable (and quarantined by `pipelines.events`) instead of failing the week's Spark job.

Over-long lines are found while staging, by a bounded scan (`long_lines`: chunk by chunk, a line
is never held whole) that applies the rule of Hadoop's line reader, which Spark then tells to skip
those same lines (`LINE_MAX_LENGTH_OPTION`): no executor ever holds an over-long line in memory,
and each one is still quarantined with its first bytes.

Each run stages into a folder of its own (`staged_raw_week`) and removes it when done: two runs of
one week never read or delete each other's copies, and S3 downloads do not pile up.
"""

from __future__ import annotations

import bz2
import gzip
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import numpy as np

from pipelines.lake import STAGING_MAX_AGE_S
from pipelines.weeks import Week

JSON_LINE_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_SUFFIXES = (".gz", ".bz2")
# Why a file under a week folder is not read.
SKIPPED_HIDDEN = "hidden"  # a name (or a folder above it) starting with `_` or `.`: markers, temp files
SKIPPED_UNSUPPORTED = "unsupported_extension"
_DECOMPRESS_CHUNK = 1 << 20


class RawWeekMissingError(FileNotFoundError):
    pass


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/").rstrip("/")


@dataclass(frozen=True)
class RawEntry:
    """One file under a week folder: `source` is what an operator recognises (path or s3:// URI)."""

    source: str
    relative: str
    bytes: int
    s3_key: str | None = None  # the object key as listed (never re-parsed from `source`: `#`, `?` are data)

    @property
    def compression(self) -> str:
        """'' , '.gz' or '.bz2': the codec Spark picks from the staged name."""
        lower = self.relative.lower()
        return next((suffix for suffix in COMPRESSION_SUFFIXES if lower.endswith(suffix)), "")

    @property
    def skip_reason(self) -> str | None:
        parts = PurePosixPath(self.relative).parts
        if any(part.startswith(("_", ".")) for part in parts):
            return SKIPPED_HIDDEN
        stem = self.relative.lower()[: len(self.relative) - len(self.compression)]
        return None if stem.endswith(JSON_LINE_SUFFIXES) else SKIPPED_UNSUPPORTED


# Hadoop's LineRecordReader skips a line whose bytes, terminator included, reach this option: Spark
# passes read options to the Hadoop configuration of a file scan.
LINE_MAX_LENGTH_OPTION = "mapreduce.input.linerecordreader.line.maxlength"


def skipped_line_bytes(max_line_bytes: int) -> int:
    """The reader's threshold for a limit of `max_line_bytes` bytes before the terminator: every
    line within the limit is read, whatever its terminator (`\r\n` takes two bytes); a line one or
    two bytes over it may be read too, and is rejected by its length."""
    return max_line_bytes + 3


@dataclass(frozen=True)
class LongLine:
    line: int  # 1-based, in the decompressed file
    bytes: int  # terminator included
    head: bytes  # its first bytes, for the quarantine


@dataclass(frozen=True)
class RawFile:
    source: str
    path: str  # the staged local copy Spark reads
    bytes: int
    # Lines the reader skips (`skipped_line_bytes`), found while staging.
    long_lines: tuple[LongLine, ...] = ()


@dataclass(frozen=True)
class SkippedRawFile:
    source: str
    reason: str
    bytes: int


@dataclass(frozen=True)
class UnreadableRawFile:
    source: str
    bytes: int
    error: str


@dataclass(frozen=True)
class RawWeek:
    """A week's raw files, staged for Spark, with everything that will not be parsed and why."""

    week: Week
    files: tuple[RawFile, ...]
    unreadable: tuple[UnreadableRawFile, ...] = ()
    skipped: tuple[SkippedRawFile, ...] = field(default=())
    # The line limit the files' long lines were scanned for; None: not scanned, lines are read whole.
    scanned_max_line_bytes: int | None = None

    @classmethod
    def of_local_files(cls, week: Week, paths: list[str]) -> "RawWeek":
        """Already-safe local files read as they are (tests and benches that write their own files)."""
        return cls(week, tuple(RawFile(str(p), str(p), os.path.getsize(p)) for p in paths))

    def source_of(self) -> dict[str, str]:
        """Staged file name -> source, to name the original file in the quarantine."""
        return {Path(f.path).name: f.source for f in self.files}

    def as_metadata(self) -> dict:
        return {
            "raw_files": len(self.files),
            "raw_bytes": sum(f.bytes for f in self.files),
            "unreadable_files": [{"source": f.source, "bytes": f.bytes, "error": f.error} for f in self.unreadable],
            "skipped_files": [{"source": f.source, "reason": f.reason, "bytes": f.bytes} for f in self.skipped],
        }


def list_week_entries(raw_uri: str, week: Week, s3_client=None) -> list[RawEntry]:
    """Every file under the week's folder or prefix, recursively, in name order."""
    if is_s3_uri(raw_uri):
        if s3_client is None:
            raise ValueError(f"raw URI {raw_uri} is on S3 but no S3 client was given")
        bucket, prefix = split_s3_uri(raw_uri)
        week_prefix = f"{prefix}/{week.folder}/" if prefix else f"{week.folder}/"
        entries = []
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=week_prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # folder placeholders some tools create
                    entries.append(RawEntry(f"s3://{bucket}/{obj['Key']}", obj["Key"][len(week_prefix):], obj["Size"], obj["Key"]))
        return sorted(entries, key=lambda e: e.relative)
    folder = Path(raw_uri) / week.folder
    if not folder.is_dir():
        return []
    entries = []
    for directory, _, names in os.walk(folder):
        for name in names:
            path = Path(directory) / name
            if path.is_file():
                entries.append(RawEntry(str(path), path.relative_to(folder).as_posix(), path.stat().st_size))
    return sorted(entries, key=lambda e: e.relative)


def list_readable_entries(raw_uri: str, week: Week, s3_client=None) -> list[RawEntry]:
    return [entry for entry in list_week_entries(raw_uri, week, s3_client) if entry.skip_reason is None]


def raw_week_exists(raw_uri: str, week: Week, s3_client=None) -> bool:
    return bool(list_readable_entries(raw_uri, week, s3_client))


def decompression_error(path: Path, compression: str) -> str | None:
    """None when the whole file decompresses, else the decoder's complaint."""
    return scan_staged_file(path, compression, None)[0]


def scan_staged_file(path: Path, compression: str, max_line_bytes: int | None,
                     head_bytes: int = 16_000) -> tuple[str | None, tuple[LongLine, ...]]:
    """(the decoder's complaint or None, the lines over `max_line_bytes`) of a staged file, in one
    bounded pass; no line scan when `max_line_bytes` is None."""
    opener = {".gz": gzip.open, ".bz2": bz2.open, "": open}[compression]
    # A decoder's complaint makes the file unreadable; a plain file's I/O error is the step's failure.
    decode_errors = (OSError, EOFError, ValueError, zlib.error) if compression else ()
    try:
        with opener(path, "rb") as stream:
            if max_line_bytes is None:
                while stream.read(_DECOMPRESS_CHUNK):
                    pass
                return None, ()
            return None, tuple(long_lines(stream, skipped_line_bytes(max_line_bytes), head_bytes))
    except decode_errors as error:
        return f"{type(error).__name__}: {error}", ()


def long_lines(stream, min_bytes: int, head_bytes: int, chunk_bytes: int = _DECOMPRESS_CHUNK) -> list[LongLine]:
    """The lines of a binary stream taking `min_bytes` or more, terminator included, read
    `chunk_bytes` at a time. Terminators as Hadoop's line reader has them: `\n`, `\r\n`, a lone `\r`."""
    found: list[LongLine] = []
    line_number, line_bytes, head, carry = 1, 0, bytearray(), b""
    while True:
        chunk = stream.read(chunk_bytes)
        data, final = carry + chunk, not chunk
        carry = b""
        if not final and data.endswith(b"\r"):  # maybe half of a \r\n: decided with the next chunk
            carry, data = b"\r", data[:-1]
        codes = np.frombuffer(data, np.uint8)
        line_feed, carriage_return = codes == 10, codes == 13
        lone_return = carriage_return.copy()
        lone_return[:-1] &= ~line_feed[1:]
        ends = np.flatnonzero(line_feed | lone_return)
        if len(ends):
            sizes = np.diff(ends, prepend=-1)
            sizes[0] += line_bytes
            for index in np.flatnonzero(sizes >= min_bytes):
                start = 0 if index == 0 else int(ends[index - 1]) + 1
                line_head = (bytes(head) if index == 0 else b"") + data[start:start + head_bytes]
                found.append(LongLine(line_number + int(index), int(sizes[index]), line_head[:head_bytes]))
            line_number += len(ends)
            rest = int(ends[-1]) + 1
            line_bytes, head = len(data) - rest, bytearray(data[rest:rest + head_bytes])
        else:
            line_bytes += len(data)
            head += data[:max(0, head_bytes - len(head))]
        if final:
            if line_bytes >= min_bytes:
                found.append(LongLine(line_number, line_bytes, bytes(head)))
            return found


def _stage_local(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copyfile(source, target)


def stage_raw_week(raw_uri: str, week: Week, staging_dir: str | Path, s3_client=None,
                   max_line_bytes: int | None = None) -> RawWeek:
    """List, classify and stage the week's raw files under generated names in `staging_dir`;
    with `max_line_bytes`, each file's longer lines are found (`scan_staged_file`) for the reader
    to skip and the quarantine to keep."""
    entries = list_week_entries(raw_uri, week, s3_client)
    skipped = tuple(SkippedRawFile(e.source, e.skip_reason, e.bytes) for e in entries if e.skip_reason)
    readable = [entry for entry in entries if entry.skip_reason is None]
    location = f"{raw_uri.rstrip('/')}/{week.folder}/"
    if not readable:
        detail = f" ({len(skipped)} files skipped: {', '.join(f'{s.source} ({s.reason})' for s in skipped[:5])})" if skipped else ""
        raise RawWeekMissingError(f"no raw files for week {week.key} under {location}{detail}")

    target = Path(staging_dir) / week.folder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    bucket = split_s3_uri(raw_uri)[0] if is_s3_uri(raw_uri) else None
    files, unreadable = [], []
    for index, entry in enumerate(readable):
        staged = target / f"{index:06d}.jsonl{entry.compression}"
        if bucket is not None:
            s3_client.download_file(bucket, entry.s3_key, str(staged))
        else:
            _stage_local(Path(entry.source), staged)
        if entry.compression or max_line_bytes is not None:
            error, found = scan_staged_file(staged, entry.compression, max_line_bytes)
        else:
            error, found = None, ()
        if error is not None:
            staged.unlink()
            unreadable.append(UnreadableRawFile(entry.source, entry.bytes, error))
        else:
            files.append(RawFile(entry.source, str(staged), entry.bytes, found))
    return RawWeek(week, tuple(files), tuple(unreadable), skipped, scanned_max_line_bytes=max_line_bytes)


@contextmanager
def staged_raw_week(raw_uri: str, week: Week, staging_root: str | Path, s3_client=None,
                    max_age_s: float = STAGING_MAX_AGE_S, max_line_bytes: int | None = None) -> Iterator[RawWeek]:
    """`stage_raw_week` into this run's own folder under `staging_root` (`run-<random>/week=...`),
    removed when the block ends, whatever happens in it. Leftovers of runs that died more than
    `max_age_s` ago are cleared first; younger ones may be another run's, in use: left alone."""
    root = Path(staging_root)
    clear_stale_raw_staging(root, max_age_s)
    own = root / f"run-{uuid.uuid4().hex[:12]}"
    try:
        yield stage_raw_week(raw_uri, week, own, s3_client=s3_client, max_line_bytes=max_line_bytes)
    finally:
        shutil.rmtree(own, ignore_errors=True)


def clear_stale_raw_staging(staging_root: Path, max_age_s: float) -> list[Path]:
    """Remove the entries of `staging_root` last modified more than `max_age_s` ago; returns them."""
    if not staging_root.is_dir():
        return []
    oldest = time.time() - max_age_s
    stale = [entry for entry in staging_root.iterdir() if entry.stat().st_mtime < oldest]
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    return stale

