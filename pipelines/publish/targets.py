"""Where a publication goes: a local folder or an S3 prefix, behind the same few operations."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.raw import is_s3_uri, split_s3_uri
from pipelines.publish.layout import HASH_CHUNK, PublishConfig, WEEK_PREFIX


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
                while chunk := source.read(HASH_CHUNK):
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
        return sha256_file(self.root / key)

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
            for chunk in body.iter_chunks(HASH_CHUNK):
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
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


def open_target(uri: str, s3_client=None, config: PublishConfig | None = None):
    config = config or PublishConfig()
    if is_s3_uri(uri):
        return _S3Target(uri, s3_client or make_s3_client(max_attempts=config.max_attempts), config)
    return _LocalTarget(uri)


def read_json(target, key: str) -> dict[str, Any] | None:
    """The JSON object stored at `key`, or None when there is none."""
    data = target.get_bytes(key)
    return None if data is None else json.loads(data)
