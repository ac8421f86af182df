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

from pipelines.publish.layout import (  # noqa: F401
    FREQUENTLY_BOUGHT_TOGETHER,
    FileMismatch,
    HASH_CHUNK,
    LATEST_NAME,
    LEASE_NAME,
    LIST_TABLE_KEYS,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    MB,
    ManifestVerification,
    ModelInfo,
    PUBLICATIONS_FOLDER,
    PUBLISHED_TABLES,
    PublishConfig,
    PublishError,
    PublishResult,
    SESSION_RECOMMENDATIONS,
    SIMILAR_ITEMS,
    TABLE_SCHEMAS,
    TOP_SELLERS,
    WEEK_PREFIX,
    join_uri,
    manifest_key,
    week_folder,
    week_key,
)
from pipelines.publish.targets import (  # noqa: F401
    make_s3_client,
    open_target,
    read_json,
    s3_client_from_resource,
    sha256_file,
)
from pipelines.publish.publishing import (  # noqa: F401
    LocalFile,
    PublisherBusyError,
    local_row_counts,
    new_publication_id,
    part_files,
    publish_week,
    publisher_lease,
)
from pipelines.publish.readback import (  # noqa: F401
    download_table,
    previous_manifest,
    published_weeks,
    read_latest,
    read_manifest,
    verify_manifest,
)
from pipelines.publish.gates import (  # noqa: F401
    GATE_FREQUENTLY_BOUGHT_TOGETHER,
    GATE_ROW_COUNTS,
    GATE_SESSION_COVERAGE,
    GATE_SESSION_RECOMMENDATIONS,
    GATE_SIMILAR_ITEMS,
    GATE_TOP_SELLERS,
    GateResult,
    PublishGateThresholds,
    failed_gates,
    row_count_gate,
    run_publish_gates,
)

__all__ = [
    "FREQUENTLY_BOUGHT_TOGETHER",
    "FileMismatch",
    "HASH_CHUNK",
    "LATEST_NAME",
    "LEASE_NAME",
    "LIST_TABLE_KEYS",
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "MB",
    "ManifestVerification",
    "ModelInfo",
    "PUBLICATIONS_FOLDER",
    "PUBLISHED_TABLES",
    "PublishConfig",
    "PublishError",
    "PublishResult",
    "SESSION_RECOMMENDATIONS",
    "SIMILAR_ITEMS",
    "TABLE_SCHEMAS",
    "TOP_SELLERS",
    "WEEK_PREFIX",
    "join_uri",
    "manifest_key",
    "week_folder",
    "week_key",
    "make_s3_client",
    "open_target",
    "read_json",
    "s3_client_from_resource",
    "sha256_file",
    "LocalFile",
    "PublisherBusyError",
    "local_row_counts",
    "new_publication_id",
    "part_files",
    "publish_week",
    "publisher_lease",
    "download_table",
    "previous_manifest",
    "published_weeks",
    "read_latest",
    "read_manifest",
    "verify_manifest",
    "GATE_FREQUENTLY_BOUGHT_TOGETHER",
    "GATE_ROW_COUNTS",
    "GATE_SESSION_COVERAGE",
    "GATE_SESSION_RECOMMENDATIONS",
    "GATE_SIMILAR_ITEMS",
    "GATE_TOP_SELLERS",
    "GateResult",
    "PublishGateThresholds",
    "failed_gates",
    "row_count_gate",
    "run_publish_gates",
]
