"""Publishing a week's tables: read the local tables, upload, verify, manifest, then `_latest.json`."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.publish.layout import (
    LATEST_NAME,
    LEASE_NAME,
    MANIFEST_FORMAT_VERSION,
    ModelInfo,
    PUBLICATIONS_FOLDER,
    PUBLISHED_TABLES,
    PublishConfig,
    PublishError,
    PublishResult,
    TABLE_SCHEMAS,
    manifest_key,
    week_folder,
    week_key,
)
from pipelines.publish.targets import open_target, read_json, sha256_file


@dataclass(frozen=True)
class LocalFile:
    path: Path
    size: int
    sha256: str
    rows: int


def part_files(table_dir: str | Path) -> list[Path]:
    """The Parquet data files Spark wrote into `table_dir` (no `_SUCCESS`, `.crc` or hidden files)."""
    folder = Path(table_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith(".parquet") and not p.name.startswith(("_", "."))
    )


def local_row_counts(table_dirs: Mapping[str, str | Path]) -> dict[str, int]:
    """Rows per table from the Parquet footers (no data read)."""
    import pyarrow.parquet as pq

    return {table: sum(pq.ParquetFile(p).metadata.num_rows for p in part_files(d)) for table, d in table_dirs.items()}


def _schema_problems(table: str, schema) -> list[str]:
    problems = []
    types = {f.name: str(f.type) for f in schema}
    for column, accepted in TABLE_SCHEMAS[table].items():
        actual = types.get(column)
        if actual is None:
            problems.append(f"column {column!r} is missing")
            continue
        # Spark writes list elements as `element`/`item`: compare without the field name.
        normalised = actual.replace("element: ", "").replace("item: ", "").replace(" not null", "")
        if not any(normalised == a or normalised.startswith(a + "[") for a in accepted):
            problems.append(f"column {column!r} is {actual}, expected one of {list(accepted)}")
    return problems


def _describe_schema(schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def _read_local_tables(table_dirs: Mapping[str, str | Path]) -> tuple[dict[str, list[LocalFile]], dict[str, dict[str, str]]]:
    import pyarrow.parquet as pq

    missing = [t for t in PUBLISHED_TABLES if t not in table_dirs]
    unknown = [t for t in table_dirs if t not in PUBLISHED_TABLES]
    if missing or unknown:
        raise PublishError(
            "read local tables",
            ", ".join(missing + unknown),
            f"expected exactly the tables {list(PUBLISHED_TABLES)}; missing {missing}, unknown {unknown}",
        )
    files: dict[str, list[LocalFile]] = {}
    schemas: dict[str, dict[str, str]] = {}
    for table in PUBLISHED_TABLES:
        parts = part_files(table_dirs[table])
        if not parts:
            raise PublishError("read local tables", str(table_dirs[table]), f"no *.parquet files for table {table}")
        files[table] = []
        for path in parts:
            try:
                parquet = pq.ParquetFile(path)
            except Exception as error:  # noqa: BLE001 - any unreadable footer stops the publication
                raise PublishError("read local tables", str(path), f"not a readable Parquet file: {error}") from error
            problems = _schema_problems(table, parquet.schema_arrow)
            if problems:
                raise PublishError("check schema", str(path), f"table {table}: " + "; ".join(problems))
            schemas.setdefault(table, _describe_schema(parquet.schema_arrow))
            files[table].append(LocalFile(path, path.stat().st_size, sha256_file(path), parquet.metadata.num_rows))
    return files, schemas


# --- publishing --------------------------------------------------------------------------


def new_publication_id(now: dt.datetime | None = None) -> str:
    # Sorts in time order to the microsecond: which publications are the newest is read off the ids.
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%f')}Z-{uuid.uuid4().hex[:8]}"


class PublisherBusyError(PublishError):
    """Another publisher holds the root's lease; nothing was written."""


class _Lease:
    """The root's publisher lease as held: `confirm` renews it, and fails if another took it over."""

    def __init__(self, target, owner: str, config: PublishConfig, week: str | None, tag: str | None):
        self.target, self.owner, self.config, self.week, self.tag = target, owner, config, week, tag

    def body(self) -> bytes:
        now = time.time()
        return _json_bytes({"owner": self.owner, "week": self.week, "acquired_at": now,
                            "expires_at": now + self.config.lease_ttl_seconds})

    def confirm(self, step: str) -> None:
        """Before a step that changes what readers see: still ours? (renewed by compare-and-swap)."""
        try:
            renewed = self.target.put_if(self.body(), LEASE_NAME, "application/json", self.tag)
            if renewed:
                self.tag = self.target.get_versioned(LEASE_NAME)[1]
        except Exception as error:  # noqa: BLE001
            raise PublishError(step, self.target.describe(LEASE_NAME), f"lease not renewed: {_cause(error)}", self.week) from error
        if not renewed:
            raise PublishError(step, self.target.describe(LEASE_NAME),
                               "the publisher lease expired and was taken over; nothing more is written", self.week)


@contextmanager
def publisher_lease(target, owner: str, config: PublishConfig, week: str | None = None):
    """Hold `_publish.lease` of the target for the block: created only if absent, or taken over
    only when expired and unchanged since read. Waits up to `lease_wait_seconds` for a holder."""
    deadline = time.monotonic() + config.lease_wait_seconds
    lease = _Lease(target, owner, config, week, None)
    while True:
        now = time.time()
        try:
            body, tag = target.get_versioned(LEASE_NAME)
            try:
                held = json.loads(body) if body else None
            except ValueError:  # a corrupt lease is no lease: it is taken over like an expired one
                held = {"owner": None, "expires_at": 0}
            # Expired, or ours: a retry of the same run after a crash takes its own lease back.
            free = held is None or float(held.get("expires_at", 0)) <= now or held.get("owner") == owner
            taken = free and target.put_if(lease.body(), LEASE_NAME, "application/json", tag)
            if taken:
                lease.tag = target.get_versioned(LEASE_NAME)[1]
        except Exception as error:  # noqa: BLE001
            raise PublishError("acquire lease", target.describe(LEASE_NAME), _cause(error), week) from error
        if taken:
            break
        if held is not None and time.monotonic() >= deadline:
            raise PublisherBusyError(
                "acquire lease", target.describe(LEASE_NAME),
                f"held by {held.get('owner')} (week {held.get('week')}) until "
                f"{dt.datetime.fromtimestamp(float(held['expires_at']), dt.timezone.utc).isoformat(timespec='seconds')}",
                week,
            )
        time.sleep(config.lease_poll_seconds)
    try:
        yield lease
    finally:
        try:
            body, tag = target.get_versioned(LEASE_NAME)
            if body and json.loads(body).get("owner") == owner:
                target.delete_if(LEASE_NAME, tag)
        except Exception:  # noqa: BLE001 - the lease expires by itself; never hide the publication's own error
            pass


def _move_latest_forward(target, key: str, m_key: str, allow_rewind: bool, attempts: int = 10) -> tuple[bool, str | None]:
    """Compare-and-swap `_latest.json` to `key` unless it points at a newer week: (moved, week it
    points at when not moved)."""
    for _ in range(attempts):
        body, tag = target.get_versioned(LATEST_NAME)
        latest_week = json.loads(body).get("week") if body else None
        if not (latest_week is None or latest_week <= key or allow_rewind):
            return False, latest_week
        if target.put_if(_json_bytes({"week": key, "manifest": m_key}), LATEST_NAME, "application/json", tag):
            return True, None
    raise RuntimeError(f"_latest.json changed under {attempts} consecutive compare-and-swap attempts")


def _is_newer_publication(key: str, publication_id: str) -> bool:
    """Whether `key` (a data file `part-NNNNN-<id>.parquet` or a record `<id>.json`) belongs to a
    publication named after `publication_id`."""
    name = key.rsplit("/", 1)[-1]
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name[: -len(".json")] if name.endswith(".json") else ""
    other = stem.split("-", 2)[-1] if stem.startswith("part-") else stem
    return bool(other) and other[:1].isdigit() and other > publication_id


def _publication_key(folder: str, publication_id: str) -> str:
    return f"{folder}/{PUBLICATIONS_FOLDER}/{publication_id}.json"


def _kept_keys(target, folder: str, current_id: str, keep_previous: int, keys: list[str]) -> set[str]:
    """The week's objects a reader may still need: the newest `keep_previous` publications before
    the current one, their manifests and the files they list."""
    prefix = f"{folder}/{PUBLICATIONS_FOLDER}/"
    previous = sorted(k for k in keys if k.startswith(prefix) and k != _publication_key(folder, current_id))
    kept = set(previous[-keep_previous:]) if keep_previous > 0 else set()
    for record in list(kept):
        manifest = read_json(target, record) or {}
        kept.update(entry["key"] for table in manifest.get("tables", {}).values() for entry in table.get("files", []))
    return kept


def publish_week(
    table_dirs: Mapping[str, str | Path],
    week,
    model: ModelInfo,
    target_uri: str,
    s3_client=None,
    *,
    dagster_run_id: str | None = None,
    config: PublishConfig | None = None,
    publication_id: str | None = None,
) -> PublishResult:
    """Publish the four tables of `week` (local Spark output folders, keyed by table name) to `target_uri`.

    Raises `PublishError` (step, object, cause) on any failure before `_latest.json` is written;
    `_latest.json` is then untouched; `PublisherBusyError` when another publisher held the root's
    lease for longer than `lease_wait_seconds`. See the module docstring for the order of operations.
    """
    config = config or PublishConfig()
    key = week_key(week)
    target = open_target(target_uri, s3_client, config)
    # A Dagster run (and its retries) is one owner; without one, each call is its own.
    owner = dagster_run_id or f"pid-{os.getpid()}-{uuid.uuid4().hex}"
    with publisher_lease(target, owner, config, key) as lease:
        # Read and named once the lease is held: the tables are the ones live now, and ids sort
        # in publication order (keep_previous relies on it).
        files, schemas = _read_local_tables(table_dirs)
        publication_id = publication_id or new_publication_id()
        return _publish_holding_lease(target, files, schemas, key, model, publication_id, dagster_run_id, config, lease)


def _publish_holding_lease(target, files, schemas, key: str, model: ModelInfo, publication_id: str,
                           dagster_run_id: str | None, config: PublishConfig, lease: _Lease) -> PublishResult:
    folder = week_folder(key)

    try:
        previous_latest = read_json(target, LATEST_NAME)
    except Exception as error:  # noqa: BLE001
        raise PublishError("read _latest.json", target.describe(LATEST_NAME), _cause(error), key) from error
    latest_note = _latest_note(previous_latest)

    uploaded: list[str] = []
    manifest_files: dict[str, list[dict[str, Any]]] = {}

    def fail(step: str, obj_key: str, error: Exception, cleanup: bool) -> PublishError:
        if cleanup:
            # Unreferenced by any manifest (the failed object may exist too): remove them, best
            # effort; the next publication of the week deletes whatever is left.
            try:
                target.delete(sorted({*uploaded, obj_key}))
            except Exception:  # noqa: BLE001
                pass
        return PublishError(step, target.describe(obj_key), _cause(error), key, f"_latest.json was left untouched ({latest_note})")

    # 1. Data files, under names unique to this publication.
    for table in PUBLISHED_TABLES:
        manifest_files[table] = []
        for index, local in enumerate(files[table]):
            object_key = f"{folder}/{table}/part-{index:05d}-{publication_id}.parquet"
            try:
                target.put_file(
                    local.path,
                    object_key,
                    "application/vnd.apache.parquet",
                    {"sha256": local.sha256, "publication-id": publication_id},
                )
            except Exception as error:  # noqa: BLE001
                raise fail("upload", object_key, error, cleanup=True) from error
            uploaded.append(object_key)
            manifest_files[table].append({"key": object_key, "size": local.size, "sha256": local.sha256, "rows": local.rows})

    # 2. Verify what the target holds now, independent of ETags.
    for table in PUBLISHED_TABLES:
        for entry in manifest_files[table]:
            try:
                size = target.size(entry["key"])
                if size != entry["size"]:
                    raise _Mismatch(f"size is {size}, expected {entry['size']}")
                if config.verify_checksums:
                    digest = target.sha256(entry["key"])
                    if digest != entry["sha256"]:
                        raise _Mismatch(f"sha256 is {digest}, expected {entry['sha256']}")
            except Exception as error:  # noqa: BLE001
                raise fail("verify", entry["key"], error, cleanup=True) from error

    # 3. The manifest.
    row_counts = {table: sum(f["rows"] for f in manifest_files[table]) for table in PUBLISHED_TABLES}
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "week": key,
        "partition_key": key,
        "publication_id": publication_id,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model.as_json(),
        "mlflow_run_id": model.run_id,
        "dagster_run_id": dagster_run_id,
        "row_counts": row_counts,
        "tables": {
            table: {
                "rows": row_counts[table],
                "bytes": sum(f["size"] for f in manifest_files[table]),
                "schema": schemas[table],
                "files": manifest_files[table],
            }
            for table in PUBLISHED_TABLES
        },
    }
    m_key = manifest_key(key)
    lease.confirm("write manifest")
    try:
        previous_manifest = read_json(target, m_key)
        if previous_manifest and previous_manifest.get("publication_id"):
            # Publications from before records were kept: record it so its files count as previous.
            record = _publication_key(folder, previous_manifest["publication_id"])
            if target.size(record) is None:
                target.put_bytes(_json_bytes(previous_manifest), record, "application/json")
        target.put_bytes(_json_bytes(manifest), _publication_key(folder, publication_id), "application/json")
        target.put_bytes(_json_bytes(manifest), m_key, "application/json", cache_control="no-cache")
    except Exception as error:  # noqa: BLE001
        # The manifest may have been stored despite the error: keep the files it would list.
        raise fail("write manifest", m_key, error, cleanup=False) from error

    # 4. `_latest.json`, last, by compare-and-swap; it only moves forward unless a rewind is allowed.
    lease.confirm("write _latest.json")
    try:
        move_latest, newer_week = _move_latest_forward(target, key, m_key, config.allow_latest_rewind)
    except Exception as error:  # noqa: BLE001
        raise PublishError(
            "write _latest.json",
            target.describe(LATEST_NAME),
            _cause(error),
            key,
            f"the week's manifest is written; _latest.json may still be the previous one ({latest_note})",
        ) from error
    if move_latest:
        note = f"_latest.json now points to week {key}"
    else:
        note = f"_latest.json stays on the newer week {newer_week} (allow_latest_rewind to move it back)"

    # 5. Drop the week's objects that neither this publication nor the kept previous ones list.
    keep = {m_key, _publication_key(folder, publication_id), *uploaded}
    deleted: list[str] = []
    cleanup_errors: list[str] = []
    try:
        lease.confirm("clean up")
        keys = target.list_keys(f"{folder}/")
        keep |= _kept_keys(target, folder, publication_id, config.keep_previous, keys)
        # Never what a later publication wrote (one that took over an expired lease, say).
        stale = [k for k in keys if k not in keep and not _is_newer_publication(k, publication_id)]
        if stale:
            failed = target.delete(stale)
            deleted = [k for k in stale if k not in failed]
            cleanup_errors = [f"{target.describe(k)}: {reason}" for k, reason in failed.items()]
    except Exception as error:  # noqa: BLE001 - published already; leftovers go with the next publication
        cleanup_errors.append(f"listing or deleting stale objects under {target.describe(folder + '/')}: {_cause(error)}")

    return PublishResult(
        week=key,
        target_uri=target.uri,
        publication_id=publication_id,
        manifest_key=m_key,
        manifest=manifest,
        latest_updated=move_latest,
        latest_note=note,
        files_uploaded=len(uploaded),
        bytes_uploaded=sum(f.size for fs in files.values() for f in fs),
        deleted=deleted,
        cleanup_errors=cleanup_errors,
    )


class _Mismatch(Exception):
    pass


def _cause(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if not isinstance(error, _Mismatch) else str(error)


def _latest_note(latest: dict[str, Any] | None) -> str:
    return f"still week {latest['week']}" if latest and latest.get("week") else "no week was published before"


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()
