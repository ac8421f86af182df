"""Publishing the weekly recommendation tables for downstream services, atomically.

Layout under `RECSYS_PUBLISH_URI` (a local folder or `s3://bucket/prefix`), the contract
downstream readers rely on:

    week=YYYY-MM-DD/top_sellers/*.parquet                 type, rank, aid, score
    week=YYYY-MM-DD/frequently_bought_together/*.parquet  aid, recs: list<int64>, scores: list<float>
    week=YYYY-MM-DD/similar_items/*.parquet               aid, recs, scores
    week=YYYY-MM-DD/session_recommendations/*.parquet     session, type, recs, scores
    week=YYYY-MM-DD/_manifest.json
    _latest.json                                          {"week": "YYYY-MM-DD", "manifest": "week=YYYY-MM-DD/_manifest.json"}

Every key in `_latest.json` and in a manifest is relative to the publish root, so the same
reader code works for a folder and for a bucket prefix (and a copied tree stays valid).

Readers follow `_latest.json` -> `_manifest.json` -> the files it lists. `publish_week`
keeps that chain consistent at every moment:

1. data files are uploaded under names unique to this publication
   (`part-00000-<publication id>.parquet`), so a rerun never overwrites a file a reader
   of the previous manifest may be reading;
2. every uploaded object is verified (size with `head_object`, sha256 of the stored bytes,
   independent of ETags, which differ for multipart uploads);
3. the week's `_manifest.json` is written;
4. `_latest.json` is written last (and only moves forward in time unless asked to);
5. objects of that week that neither the new manifest nor the `keep_previous` publications
   before it list (older publications, leftovers of a failed attempt) are deleted: a reader
   that fetched the previous manifest a moment ago can still read its files.

At most one publisher works on a publish root at a time: it holds `_publish.lease` (created
only if absent, taken over only when expired and only if unchanged since it was read: S3
conditional writes, a lock file locally). `_latest.json` is replaced by compare-and-swap on
what was read, so it moves only forward even when a publisher's lease expired mid-way.
Every publication's manifest is also kept as `week=…/_publications/<id>.json`, which is how
the previous publications' files are known.

Any failure before step 4 raises `PublishError` naming the step and the object, and leaves
`_latest.json` untouched. On a local folder every file is written to a temporary name,
fsynced and renamed into place, so the manifest and `_latest.json` switch atomically too.

Nothing here imports Dagster: the asset passes a boto3 client (see `s3_client_from_resource`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.raw import is_s3_uri, split_s3_uri

TOP_SELLERS = "top_sellers"
FREQUENTLY_BOUGHT_TOGETHER = "frequently_bought_together"
SIMILAR_ITEMS = "similar_items"
SESSION_RECOMMENDATIONS = "session_recommendations"
PUBLISHED_TABLES = (TOP_SELLERS, FREQUENTLY_BOUGHT_TOGETHER, SIMILAR_ITEMS, SESSION_RECOMMENDATIONS)
# Tables whose rows hold a list of recommended aids with their scores, and the row key.
LIST_TABLE_KEYS: dict[str, tuple[str, ...]] = {
    FREQUENTLY_BOUGHT_TOGETHER: ("aid",),
    SIMILAR_ITEMS: ("aid",),
    SESSION_RECOMMENDATIONS: ("session", "type"),
}

MANIFEST_NAME = "_manifest.json"
LATEST_NAME = "_latest.json"
LEASE_NAME = "_publish.lease"
PUBLICATIONS_FOLDER = "_publications"
MANIFEST_FORMAT_VERSION = 1
WEEK_PREFIX = "week="
MB = 1024 * 1024
_HASH_CHUNK = 4 * MB

# Column -> accepted Arrow types (as `str(pyarrow type)` prefixes) of the published tables.
_INT = ("int64", "int32")
_FLOAT = ("float", "double")
TABLE_SCHEMAS: dict[str, dict[str, tuple[str, ...]]] = {
    TOP_SELLERS: {"type": ("string", "large_string"), "rank": _INT, "aid": ("int64",), "score": _FLOAT},
    FREQUENTLY_BOUGHT_TOGETHER: {"aid": ("int64",), "recs": ("list<int64>",), "scores": ("list<float>", "list<double>")},
    SIMILAR_ITEMS: {"aid": ("int64",), "recs": ("list<int64>",), "scores": ("list<float>", "list<double>")},
    SESSION_RECOMMENDATIONS: {
        "session": ("int64",),
        "type": ("string", "large_string"),
        "recs": ("list<int64>",),
        "scores": ("list<float>", "list<double>"),
    },
}


class PublishError(RuntimeError):
    """A publication failed; `step` and `object` say where. `_latest.json` was not moved."""

    def __init__(self, step: str, obj: str, cause: str, week: str | None = None, latest_note: str | None = None):
        self.step = step
        self.object = obj
        self.cause = cause
        self.week = week
        week_part = f" week {week}" if week else ""
        note = latest_note or "_latest.json was left untouched"
        super().__init__(f"publishing{week_part} failed at step '{step}' on {obj}: {cause}; {note}")


@dataclass(frozen=True)
class ModelInfo:
    """The registered model version (and its MLflow run) the tables come from."""

    name: str
    version: str | int
    run_id: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": str(self.version), "mlflow_run_id": self.run_id}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


@dataclass(frozen=True)
class PublishConfig:
    """Transfer and consistency knobs.

    `max_attempts` (botocore "standard" retry mode) applies to clients built here
    (`make_s3_client`, `s3_client_from_resource`); a client passed in keeps its own retries.
    """

    multipart_threshold: int = 64 * MB
    multipart_chunksize: int = 16 * MB
    max_concurrency: int = 4
    max_attempts: int = 5
    # Re-download every uploaded object and compare its sha256 (else: size only).
    verify_checksums: bool = True
    # Publishing an older week (a backfill) leaves `_latest.json` on the newer week unless set.
    allow_latest_rewind: bool = False
    # Publications of a week kept (besides the new one) so readers of a superseded manifest finish.
    keep_previous: int = 1
    # The publisher lease: how long it is valid, and how long a second publisher waits for it.
    lease_ttl_seconds: float = 3600.0
    lease_wait_seconds: float = 300.0
    lease_poll_seconds: float = 2.0

    @classmethod
    def from_env(cls) -> "PublishConfig":
        return cls(
            keep_previous=int(_env("RECSYS_PUBLISH_KEEP_PREVIOUS", "1")),
            lease_ttl_seconds=float(_env("RECSYS_PUBLISH_LEASE_TTL_SECONDS", "3600")),
            lease_wait_seconds=float(_env("RECSYS_PUBLISH_LEASE_WAIT_SECONDS", "300")),
            multipart_threshold=int(float(_env("RECSYS_PUBLISH_MULTIPART_THRESHOLD_MB", "64")) * MB),
            multipart_chunksize=int(float(_env("RECSYS_PUBLISH_MULTIPART_CHUNKSIZE_MB", "16")) * MB),
            max_concurrency=int(_env("RECSYS_PUBLISH_MAX_CONCURRENCY", "4")),
            max_attempts=int(_env("RECSYS_PUBLISH_MAX_ATTEMPTS", "5")),
            verify_checksums=_env("RECSYS_PUBLISH_VERIFY_CHECKSUMS", "true").lower() not in ("0", "false", "no", "off"),
        )


@dataclass
class PublishResult:
    week: str
    target_uri: str
    publication_id: str
    manifest_key: str
    manifest: dict[str, Any]
    latest_updated: bool
    latest_note: str
    files_uploaded: int
    bytes_uploaded: int
    deleted: list[str] = field(default_factory=list)
    # Stale objects that could not be deleted (the publication itself succeeded; the next one retries).
    cleanup_errors: list[str] = field(default_factory=list)

    @property
    def row_counts(self) -> dict[str, int]:
        return dict(self.manifest["row_counts"])

    @property
    def manifest_uri(self) -> str:
        return join_uri(self.target_uri, self.manifest_key)


@dataclass(frozen=True)
class FileMismatch:
    key: str
    problem: str
    expected: Any = None
    actual: Any = None


@dataclass
class ManifestVerification:
    week: str
    manifest_key: str
    files_checked: int
    mismatches: list[FileMismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "manifest": self.manifest_key,
            "files_checked": self.files_checked,
            "ok": self.ok,
            "mismatches": [asdict(m) for m in self.mismatches],
        }


# --- keys ------------------------------------------------------------------------------


def week_key(week) -> str:
    """A `YYYY-MM-DD` Monday from a string or a `pipelines.weeks.Week`."""
    key = week if isinstance(week, str) else week.key
    if dt.date.fromisoformat(key).weekday() != 0:
        raise ValueError(f"week key {key!r} is not a Monday")
    return key


def week_folder(week) -> str:
    return f"{WEEK_PREFIX}{week_key(week)}"


def manifest_key(week) -> str:
    return f"{week_folder(week)}/{MANIFEST_NAME}"


def join_uri(uri: str, key: str) -> str:
    if is_s3_uri(uri):
        return f"{uri.rstrip('/')}/{key}"
    return str(Path(uri) / key)


# --- targets: a local folder or an S3 prefix, behind the same few operations -------------


class _LocalTarget:
    def __init__(self, root: str):
        self.root = Path(root)
        self.uri = str(self.root)

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def _atomic_write(self, key: str, write) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        _fsync_dir(dest.parent)

    def put_file(self, local: Path, key: str, content_type: str, metadata: dict[str, str]) -> None:
        def copy(handle):
            with open(local, "rb") as source:
                while chunk := source.read(_HASH_CHUNK):
                    handle.write(chunk)

        self._atomic_write(key, copy)

    def put_bytes(self, data: bytes, key: str, content_type: str, cache_control: str | None = None) -> None:
        self._atomic_write(key, lambda handle: handle.write(data))

    @contextmanager
    def _exclusive(self):
        """Serialises compare-and-swap writes of this root across threads and processes."""
        import fcntl

        # Outside the published tree, so readers and listings never see it.
        lock = Path(tempfile.gettempdir()) / f"recsys-publish-{hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:16]}.lock"
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        data = self.get_bytes(key)
        return data, None if data is None else hashlib.sha256(data).hexdigest()

    def put_if(self, data: bytes, key: str, content_type: str, expected_tag: str | None) -> bool:
        """Write `key` only if it still has `expected_tag` (None: only if absent)."""
        with self._exclusive():
            if self.get_versioned(key)[1] != expected_tag:
                return False
            self.put_bytes(data, key, content_type)
            return True

    def delete_if(self, key: str, expected_tag: str) -> bool:
        with self._exclusive():
            if self.get_versioned(key)[1] != expected_tag:
                return False
            (self.root / key).unlink(missing_ok=True)
            return True

    def size(self, key: str) -> int | None:
        path = self.root / key
        return path.stat().st_size if path.is_file() else None

    def sha256(self, key: str) -> str:
        return _sha256_file(self.root / key)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((self.root / key).read_bytes())

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)).replace(os.sep, "/") for p in base.rglob("*") if p.is_file())

    def list_week_folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith(WEEK_PREFIX))

    def delete(self, keys: list[str]) -> dict[str, str]:
        """Delete `keys`; returns the keys that could not be deleted, with the reason."""
        errors = {}
        for key in keys:
            try:
                (self.root / key).unlink(missing_ok=True)
            except OSError as error:
                errors[key] = str(error)
        # Remove folders left empty (a table or a temporary folder of an earlier publication).
        for folder in sorted({(self.root / key).parent for key in keys}, key=lambda p: len(p.parts), reverse=True):
            while folder != self.root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        return errors


class _S3Target:
    def __init__(self, uri: str, client, config: PublishConfig):
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = split_s3_uri(uri)
        self.client = client
        self.config = config

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def put_file(self, local: Path, key: str, content_type: str, metadata: dict[str, str]) -> None:
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=self.config.multipart_threshold,
            multipart_chunksize=self.config.multipart_chunksize,
            max_concurrency=self.config.max_concurrency,
        )
        self.client.upload_file(
            str(local),
            self.bucket,
            self._full(key),
            ExtraArgs={"ContentType": content_type, "Metadata": metadata},
            Config=transfer,
        )

    def put_bytes(self, data: bytes, key: str, content_type: str, cache_control: str | None = None) -> None:
        extra = {"CacheControl": cache_control} if cache_control else {}
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type, **extra)

    def get_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as error:
            if _is_not_found(error):
                return None, None
            raise
        return response["Body"].read(), response["ETag"]

    def put_if(self, data: bytes, key: str, content_type: str, expected_tag: str | None) -> bool:
        """Write `key` only if its ETag is still `expected_tag` (None: only if absent), by an S3
        conditional write; False when another writer got there first."""
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if expected_tag is None else {"IfMatch": expected_tag}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type,
                                   CacheControl="no-cache", **condition)
        except ClientError as error:
            if _is_precondition_failure(error) or (expected_tag is not None and _is_not_found(error)):
                return False
            raise
        return True

    def delete_if(self, key: str, expected_tag: str) -> bool:
        # S3 general-purpose buckets have no conditional delete everywhere: re-read, then delete.
        if self.get_versioned(key)[1] != expected_tag:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        return True

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._full(key))["ContentLength"])
        except ClientError as error:
            if _is_not_found(error):
                return None
            raise

    def sha256(self, key: str) -> str:
        body = self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        digest = hashlib.sha256()
        try:
            for chunk in body.iter_chunks(_HASH_CHUNK):
                digest.update(chunk)
        finally:
            body.close()
        return digest.hexdigest()

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except ClientError as error:
            if _is_not_found(error):
                return None
            raise

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(self.bucket, self._full(key), str(dest))

    def list_keys(self, prefix: str) -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._full(prefix)):
            keys.extend(self._relative(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def list_week_folders(self) -> list[str]:
        folders = []
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root + WEEK_PREFIX, Delimiter="/"):
            folders.extend(p["Prefix"][len(root):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(folders)

    def delete(self, keys: list[str]) -> dict[str, str]:
        """Delete `keys`; returns the keys that could not be deleted, with the reason."""
        errors = {}
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._full(k)} for k in batch], "Quiet": True}
            )
            for error in response.get("Errors", []):
                errors[self._relative(error.get("Key", ""))] = f"{error.get('Code')} {error.get('Message')}"
        return errors


def _is_not_found(error) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _is_precondition_failure(error) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or status in (409, 412)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def make_s3_client(endpoint_url: str | None = None, region_name: str | None = None, max_attempts: int = 5):
    """A boto3 S3 client with botocore "standard" retries; `AWS_ENDPOINT_URL` is honoured by boto3."""
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint_url:
        # S3-compatible servers (MinIO, moto) reject the checksums newer botocore sends by default.
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    region = region_name or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        # total_max_attempts counts the first try too (botocore's `max_attempts` counts retries only).
        config=Config(retries={"mode": "standard", "total_max_attempts": max_attempts}),
    )


def s3_client_from_resource(s3_resource, max_attempts: int | None = None):
    """The boto3 client of a `dagster_aws.s3.S3Resource`, with botocore "standard" retries.

    `max_attempts` counts every try (the first included); None keeps the resource's own setting
    (`S3Resource.max_attempts` counts retries after the first). The resource is duck-typed so
    this module stays free of Dagster imports.
    """
    if getattr(s3_resource, "endpoint_url", None):
        os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    if max_attempts is not None:
        s3_resource = s3_resource.model_copy(update={"max_attempts": max(max_attempts - 1, 0)})
    return s3_resource.get_client()


def _target(uri: str, s3_client=None, config: PublishConfig | None = None):
    config = config or PublishConfig()
    if is_s3_uri(uri):
        return _S3Target(uri, s3_client or make_s3_client(max_attempts=config.max_attempts), config)
    return _LocalTarget(uri)


# --- the local tables --------------------------------------------------------------------


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
            files[table].append(LocalFile(path, path.stat().st_size, _sha256_file(path), parquet.metadata.num_rows))
    return files, schemas


# --- publishing --------------------------------------------------------------------------


def new_publication_id(now: dt.datetime | None = None) -> str:
    # Sorts in time order to the microsecond: which publications are the newest is read off the ids.
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%f')}Z-{uuid.uuid4().hex[:8]}"


def _read_json(target, key: str) -> dict[str, Any] | None:
    data = target.get_bytes(key)
    return None if data is None else json.loads(data)


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
        manifest = _read_json(target, record) or {}
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
    target = _target(target_uri, s3_client, config)
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
        previous_latest = _read_json(target, LATEST_NAME)
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
        previous_manifest = _read_json(target, m_key)
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


# --- reading back ----------------------------------------------------------------------


def read_latest(uri: str, s3_client=None) -> dict[str, Any] | None:
    """`_latest.json` of the publish root, or None when nothing was published yet."""
    return _read_json(_target(uri, s3_client), LATEST_NAME)


def read_manifest(uri: str, week, s3_client=None) -> dict[str, Any]:
    key = manifest_key(week)
    target = _target(uri, s3_client)
    manifest = _read_json(target, key)
    if manifest is None:
        raise FileNotFoundError(f"no manifest for week {week_key(week)} at {target.describe(key)}")
    return manifest


def published_weeks(uri: str, s3_client=None) -> list[str]:
    """Weeks with a manifest, oldest first."""
    target = _target(uri, s3_client)
    weeks = []
    for folder in target.list_week_folders():
        key = folder[len(WEEK_PREFIX):]
        if target.size(f"{folder}/{MANIFEST_NAME}") is not None:
            weeks.append(key)
    return sorted(weeks)


def previous_manifest(uri: str, week, s3_client=None) -> dict[str, Any] | None:
    """The manifest of the newest published week before `week` (what the row-count gate compares with)."""
    key = week_key(week)
    target = _target(uri, s3_client)
    for folder in reversed(target.list_week_folders()):
        if folder[len(WEEK_PREFIX):] < key:
            manifest = _read_json(target, f"{folder}/{MANIFEST_NAME}")
            if manifest is not None:
                return manifest
    return None


def verify_manifest(uri: str, week, s3_client=None) -> ManifestVerification:
    """Re-read the week's manifest from the target and check every listed file's size and sha256."""
    target = _target(uri, s3_client)
    manifest = read_manifest(uri, week, s3_client=getattr(target, "client", None))
    report = ManifestVerification(week_key(week), manifest_key(week), 0)
    folder = week_folder(week)
    for table in PUBLISHED_TABLES:
        entry = manifest.get("tables", {}).get(table)
        if entry is None:
            report.mismatches.append(FileMismatch(table, "table missing from manifest"))
            continue
        if sum(f["rows"] for f in entry["files"]) != entry["rows"] or manifest["row_counts"].get(table) != entry["rows"]:
            report.mismatches.append(
                FileMismatch(table, "row counts inconsistent", entry["rows"], sum(f["rows"] for f in entry["files"]))
            )
        for item in entry["files"]:
            report.files_checked += 1
            if not item["key"].startswith(f"{folder}/"):
                report.mismatches.append(FileMismatch(item["key"], "file outside the week folder"))
                continue
            size = target.size(item["key"])
            if size is None:
                report.mismatches.append(FileMismatch(item["key"], "missing", item["size"], None))
                continue
            if size != item["size"]:
                report.mismatches.append(FileMismatch(item["key"], "size", item["size"], size))
                continue
            digest = target.sha256(item["key"])
            if digest != item["sha256"]:
                report.mismatches.append(FileMismatch(item["key"], "sha256", item["sha256"], digest))
    return report


def download_table(uri: str, week, table: str, dest_dir: str | Path, s3_client=None) -> list[Path]:
    """Download (or copy) the files the week's manifest lists for `table`; returns the local paths."""
    target = _target(uri, s3_client)
    manifest = read_manifest(uri, week, s3_client=getattr(target, "client", None))
    paths = []
    for item in manifest["tables"][table]["files"]:
        dest = Path(dest_dir) / table / item["key"].rsplit("/", 1)[-1]
        target.download(item["key"], dest)
        paths.append(dest)
    return paths


# --- gates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishGateThresholds:
    min_list_length: int = 1
    max_list_length: int = 20
    # Rows of each table against the previous published week's manifest.
    min_row_ratio: float = 0.5
    max_row_ratio: float = 2.0

    @classmethod
    def from_env(cls) -> "PublishGateThresholds":
        return cls(
            min_list_length=int(_env("RECSYS_PUBLISH_MIN_LIST_LENGTH", str(cls.min_list_length))),
            max_list_length=int(_env("RECSYS_PUBLISH_MAX_LIST_LENGTH", str(cls.max_list_length))),
            min_row_ratio=float(_env("RECSYS_PUBLISH_MIN_ROW_RATIO", str(cls.min_row_ratio))),
            max_row_ratio=float(_env("RECSYS_PUBLISH_MAX_ROW_RATIO", str(cls.max_row_ratio))),
        )


@dataclass
class GateResult:
    """One pre-publication gate: a GE report, or a note saying why it was skipped."""

    name: str
    report: Any = None  # pipelines.quality.ValidationReport
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.success

    @property
    def skipped(self) -> bool:
        return self.report is None

    def summary(self) -> str:
        if self.report is None:
            return f"{self.name}: skipped ({self.note})"
        if self.report.success:
            return f"{self.name}: passed"
        return f"{self.name}: failed: {self.report.failure_summary()}"


GATE_TOP_SELLERS = "published_top_sellers"
GATE_FREQUENTLY_BOUGHT_TOGETHER = "published_frequently_bought_together"
GATE_SIMILAR_ITEMS = "published_similar_items"
GATE_SESSION_RECOMMENDATIONS = "published_session_recommendations"
GATE_SESSION_COVERAGE = "published_session_coverage"
GATE_ROW_COUNTS = "published_row_counts"


def row_count_gate(
    current: Mapping[str, int], previous: Mapping[str, Any] | None, thresholds: PublishGateThresholds | None = None,
    warm_up: str | None = None,
) -> GateResult:
    """Rows per table against the previous published manifest (skipped when none exists).

    `warm_up`: why the two weeks are not comparable (one of them learned from a training window
    that was not full yet, so its item tables are legitimately smaller); the ratios are then
    reported but not enforced.
    """
    from pipelines.quality import published_row_counts_frame, published_row_counts_suite, validate

    thresholds = thresholds or PublishGateThresholds()
    if previous is None:
        return GateResult(GATE_ROW_COUNTS, note="nothing was published before this week: row counts not compared",
                          details={"current": dict(current)})
    compared = [t for t in current if t in previous.get("row_counts", {})]
    if not compared:
        return GateResult(GATE_ROW_COUNTS, note=f"the manifest of week {previous.get('week')} has none of these tables",
                          details={"current": dict(current)})
    frame = published_row_counts_frame({t: current[t] for t in compared}, previous["row_counts"])
    details = {
        "previous_week": previous.get("week"),
        "current": dict(current),
        "previous": {t: previous["row_counts"][t] for t in compared},
        "ratios": {c.removesuffix("_row_ratio"): float(frame.iloc[0][c]) for c in frame.columns},
    }
    if warm_up:
        return GateResult(GATE_ROW_COUNTS, note=f"ratios not enforced: {warm_up}", details=details)
    report = validate(
        frame, GATE_ROW_COUNTS, published_row_counts_suite(compared, thresholds.min_row_ratio, thresholds.max_row_ratio)
    )
    return GateResult(GATE_ROW_COUNTS, report, details=details)


def run_publish_gates(
    frames: Mapping[str, Any],
    catalogue,
    active_sessions,
    previous: Mapping[str, Any] | None,
    thresholds: PublishGateThresholds | None = None,
    current_row_counts: Mapping[str, int] | None = None,
    warm_up: str | None = None,
) -> dict[str, GateResult]:
    """Every pre-publication gate on the Spark frames of the four tables.

    `catalogue`: a frame with the known `aid`s; `active_sessions`: a frame with the week's
    `session`s (each needs recommendations of every type); `previous`: the previous published
    manifest (`previous_manifest(...)`) or None. Row counts come from `current_row_counts`
    (e.g. `local_row_counts` of the written tables) or are counted on the frames; `warm_up`:
    see `row_count_gate`.
    """
    from pipelines.quality import (
        published_lists_suite,
        published_lists_validation_frame,
        published_top_sellers_suite,
        published_top_sellers_validation_frame,
        session_coverage_suite,
        session_coverage_validation_frame,
        validate,
    )

    thresholds = thresholds or PublishGateThresholds()
    lengths = {"min_length": thresholds.min_list_length, "max_length": thresholds.max_list_length}
    results = {
        GATE_TOP_SELLERS: GateResult(
            GATE_TOP_SELLERS,
            validate(
                published_top_sellers_validation_frame(frames[TOP_SELLERS], catalogue),
                GATE_TOP_SELLERS,
                published_top_sellers_suite(thresholds.max_list_length),
            ),
        )
    }
    for table, gate in (
        (FREQUENTLY_BOUGHT_TOGETHER, GATE_FREQUENTLY_BOUGHT_TOGETHER),
        (SIMILAR_ITEMS, GATE_SIMILAR_ITEMS),
        (SESSION_RECOMMENDATIONS, GATE_SESSION_RECOMMENDATIONS),
    ):
        keys = LIST_TABLE_KEYS[table]
        results[gate] = GateResult(
            gate,
            validate(
                published_lists_validation_frame(frames[table], keys, catalogue),
                gate,
                published_lists_suite(keys, **lengths),
            ),
        )
    results[GATE_SESSION_COVERAGE] = GateResult(
        GATE_SESSION_COVERAGE,
        validate(
            session_coverage_validation_frame(frames[SESSION_RECOMMENDATIONS], active_sessions),
            GATE_SESSION_COVERAGE,
            session_coverage_suite(),
        ),
    )
    counts = dict(current_row_counts) if current_row_counts is not None else {t: frames[t].count() for t in PUBLISHED_TABLES}
    results[GATE_ROW_COUNTS] = row_count_gate(counts, previous, thresholds, warm_up)
    return results


def failed_gates(results: Mapping[str, GateResult]) -> list[GateResult]:
    return [result for result in results.values() if not result.passed]

