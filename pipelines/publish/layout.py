"""The published layout's names, schemas and result types: the contract readers rely on."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import env_or_default
from pipelines.raw import is_s3_uri


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
HASH_CHUNK = 4 * MB

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
            keep_previous=int(env_or_default("RECSYS_PUBLISH_KEEP_PREVIOUS", "1")),
            lease_ttl_seconds=float(env_or_default("RECSYS_PUBLISH_LEASE_TTL_SECONDS", "3600")),
            lease_wait_seconds=float(env_or_default("RECSYS_PUBLISH_LEASE_WAIT_SECONDS", "300")),
            multipart_threshold=int(float(env_or_default("RECSYS_PUBLISH_MULTIPART_THRESHOLD_MB", "64")) * MB),
            multipart_chunksize=int(float(env_or_default("RECSYS_PUBLISH_MULTIPART_CHUNKSIZE_MB", "16")) * MB),
            max_concurrency=int(env_or_default("RECSYS_PUBLISH_MAX_CONCURRENCY", "4")),
            max_attempts=int(env_or_default("RECSYS_PUBLISH_MAX_ATTEMPTS", "5")),
            verify_checksums=env_or_default("RECSYS_PUBLISH_VERIFY_CHECKSUMS", "true").lower() not in ("0", "false", "no", "off"),
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
