"""The raw landing zone: `<RECSYS_RAW_URI>/week=YYYY-MM-DD/*.jsonl[.gz]`, local or on S3.

Spark reads local paths only (the pyspark wheel ships no s3a connector), so objects of an
S3 landing zone are staged to a local folder with boto3 first.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from pipelines.weeks import Week

RAW_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


class RawWeekMissingError(FileNotFoundError):
    pass


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/").rstrip("/")


def _is_raw_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(("_", ".")) and base.endswith(RAW_SUFFIXES)


def list_local_week_files(raw_root: str, week: Week) -> list[Path]:
    folder = Path(raw_root) / week.folder
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and _is_raw_file(path.name))


def list_s3_week_keys(s3_client, raw_uri: str, week: Week) -> list[str]:
    bucket, prefix = split_s3_uri(raw_uri)
    week_prefix = f"{prefix}/{week.folder}/" if prefix else f"{week.folder}/"
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=week_prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []) if _is_raw_file(obj["Key"]))
    return sorted(keys)


def raw_week_exists(raw_uri: str, week: Week, s3_client=None) -> bool:
    if is_s3_uri(raw_uri):
        return bool(list_s3_week_keys(s3_client, raw_uri, week))
    return bool(list_local_week_files(raw_uri, week))


def resolve_raw_week(raw_uri: str, week: Week, staging_dir: str | Path, s3_client=None) -> list[str]:
    """Local paths of the week's raw files; S3 objects are downloaded into `staging_dir` first."""
    if not is_s3_uri(raw_uri):
        files = list_local_week_files(raw_uri, week)
        if not files:
            raise RawWeekMissingError(f"no raw files for week {week.key} under {Path(raw_uri) / week.folder}")
        return [str(path) for path in files]

    if s3_client is None:
        raise ValueError(f"raw URI {raw_uri} is on S3 but no S3 client was given")
    keys = list_s3_week_keys(s3_client, raw_uri, week)
    bucket, _ = split_s3_uri(raw_uri)
    if not keys:
        raise RawWeekMissingError(f"no raw objects for week {week.key} under {raw_uri.rstrip('/')}/{week.folder}/")
    target = Path(staging_dir) / week.folder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    local_paths = []
    for index, key in enumerate(keys):
        # Index prefix keeps distinct objects with the same base name apart.
        local = target / f"{index:05d}-{key.rsplit('/', 1)[-1]}"
        s3_client.download_file(bucket, key, str(local))
        local_paths.append(str(local))
    return local_paths
