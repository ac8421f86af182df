"""Reading publications back: `_latest.json`, manifests, verification, downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.publish.layout import (
    FileMismatch,
    LATEST_NAME,
    MANIFEST_NAME,
    ManifestVerification,
    PUBLISHED_TABLES,
    WEEK_PREFIX,
    manifest_key,
    week_folder,
    week_key,
)
from pipelines.publish.targets import open_target, read_json


def read_latest(uri: str, s3_client=None) -> dict[str, Any] | None:
    """`_latest.json` of the publish root, or None when nothing was published yet."""
    return read_json(open_target(uri, s3_client), LATEST_NAME)


def read_manifest(uri: str, week, s3_client=None) -> dict[str, Any]:
    key = manifest_key(week)
    target = open_target(uri, s3_client)
    manifest = read_json(target, key)
    if manifest is None:
        raise FileNotFoundError(f"no manifest for week {week_key(week)} at {target.describe(key)}")
    return manifest


def published_weeks(uri: str, s3_client=None) -> list[str]:
    """Weeks with a manifest, oldest first."""
    target = open_target(uri, s3_client)
    weeks = []
    for folder in target.list_week_folders():
        key = folder[len(WEEK_PREFIX):]
        if target.size(f"{folder}/{MANIFEST_NAME}") is not None:
            weeks.append(key)
    return sorted(weeks)


def previous_manifest(uri: str, week, s3_client=None) -> dict[str, Any] | None:
    """The manifest of the newest published week before `week` (what the row-count gate compares with)."""
    key = week_key(week)
    target = open_target(uri, s3_client)
    for folder in reversed(target.list_week_folders()):
        if folder[len(WEEK_PREFIX):] < key:
            manifest = read_json(target, f"{folder}/{MANIFEST_NAME}")
            if manifest is not None:
                return manifest
    return None


def verify_manifest(uri: str, week, s3_client=None) -> ManifestVerification:
    """Re-read the week's manifest from the target and check every listed file's size and sha256."""
    target = open_target(uri, s3_client)
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
    target = open_target(uri, s3_client)
    manifest = read_manifest(uri, week, s3_client=getattr(target, "client", None))
    paths = []
    for item in manifest["tables"][table]["files"]:
        dest = Path(dest_dir) / table / item["key"].rsplit("/", 1)[-1]
        target.download(item["key"], dest)
        paths.append(dest)
    return paths
