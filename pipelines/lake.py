"""The Parquet lake: one folder per table, one `week=YYYY-MM-DD` folder per partition.

A partition write replaces exactly its own week and is atomic on a local or shared
filesystem: Spark writes to a hidden staging folder which is swapped into place only after
the write succeeded, so a failed run leaves the previous version of the week intact and a
rerun or backfill never duplicates rows.

Write-audit-publish: an asset writes its week through `Lake.audited(week)`. Those writes land in
`<table>/_audit/week=…-<token>`, one folder per audit (invisible to every reader of the live lake, Spark included: `_` folders
are hidden), the asset's blocking checks read them through the same object, and `publish` swaps
them into place only when every check passed. A failed audit leaves the previous live version
untouched and the staged one where it is for inspection; a later publication of the week removes
it once it is older than `staging_max_age_s` (RECSYS_STAGING_MAX_AGE_HOURS, 24 h), and never
touches younger staging, which may be another run's in the middle of its checks.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.weeks import Week

EVENTS_TABLE = "events"
QUARANTINE_TABLE = "events_quarantine"
SESSIONS_TABLE = "sessions"
STAGING_PREFIX = "_staging-"
AUDIT_DIR = "_audit"
LOCKS_DIR = "_locks"
SIDECAR_NAME = "_stats.json"
MODEL_TABLES = "model_tables"
# Spark's marker of a complete write; a partition is live when its folder holds it.
SUCCESS_MARKER = "_SUCCESS"


class MissingPartitionError(RuntimeError):
    pass


# How long a failed audit's staged week stays for inspection (RECSYS_STAGING_MAX_AGE_HOURS).
STAGING_MAX_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class Lake:
    root: str
    staging_max_age_s: float = STAGING_MAX_AGE_S

    def table_dir(self, table: str) -> Path:
        return Path(self.root) / table

    def partition_dir(self, table: str, week: Week) -> Path:
        return self.table_dir(table) / week.folder

    def model_tables_dir(self, model_id: str) -> Path:
        """Where a model's source tables are snapshot (`pipelines.model.save_bundle`): one folder per
        model (its MLflow run id), written once and read by every process that serves the model."""
        return Path(self.root) / MODEL_TABLES / f"run={model_id}"

    def audit_dir(self, table: str, week: Week, token: str) -> Path:
        """Where one audited write of `week` is staged: a folder of its own per audit, so two runs
        of the same week never validate or publish each other's staged data."""
        return self.table_dir(table) / AUDIT_DIR / f"{week.folder}-{token}"

    def audited(self, week: Week) -> "AuditedWeek":
        """A view of the lake whose writes of `week` are staged for audit (see the module docstring)."""
        return AuditedWeek(self.root, self.staging_max_age_s, week, token=uuid.uuid4().hex[:12])

    def has_partition(self, table: str, week: Week) -> bool:
        return (self.partition_dir(table, week) / SUCCESS_MARKER).exists()

    def write_partition(
        self,
        df,
        table: str,
        week: Week,
        num_files: int | None = None,
        stats: Callable[[Any], dict[str, Any]] | None = None,
    ) -> Path:
        """Replace `table`'s `week` with `df`.

        `stats`, if given, is called with the staged (written, not yet visible) frame and its
        result is stored beside the files, so data and summary become visible together.
        """
        target = self.partition_dir(table, week)
        staging = target.parent / f"{STAGING_PREFIX}{week.folder}-{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        # repartition, not coalesce: coalesce would also run everything upstream of the write (a
        # whole week's JSON parse for the quarantine) in `num_files` tasks.
        writer_df = df.repartition(num_files) if num_files else df
        try:
            writer_df.write.mode("overwrite").parquet(str(staging))
            if stats is not None:
                summary = stats(df.sparkSession.read.parquet(str(staging)))
                (staging / SIDECAR_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True))
            self._swap_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _swap_into_place(self, staging: Path, target: Path) -> None:
        """Replace `target` by `staging`. Writers of the same partition take turns (an exclusive
        lock per partition, held only for the two renames), so concurrent runs never interleave
        their renames or leave retired folders behind."""
        retired = target.parent / f"{STAGING_PREFIX}retired-{uuid.uuid4().hex[:8]}"
        with self._partition_lock(target):
            if target.exists():
                target.rename(retired)
            try:
                staging.rename(target)
            except BaseException:
                if retired.exists() and not target.exists():
                    retired.rename(target)  # put the previous version back
                raise
        shutil.rmtree(retired, ignore_errors=True)

    @contextmanager
    def _partition_lock(self, target: Path):
        import fcntl

        lock_path = Path(self.root) / LOCKS_DIR / f"{target.relative_to(self.root)}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # waits for the other writer; released on exit or crash
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_partition(self, spark, table: str, week: Week):
        if not self.has_partition(table, week):
            raise MissingPartitionError(
                f"{table} for week {week.key} is not in the lake at {self.partition_dir(table, week)}; "
                f"materialize (or backfill) {table} for that week first"
            )
        return spark.read.parquet(str(self.partition_dir(table, week)))

    def read_weeks(self, spark, table: str, weeks: list[Week]):
        """Union of several weeks of a table, with a `week` string column naming the partition."""
        from pyspark.sql import functions as F

        frames = [self.read_partition(spark, table, week).withColumn("week", F.lit(week.key)) for week in weeks]
        result = frames[0]
        for frame in frames[1:]:
            result = result.unionByName(frame)
        return result

    def write_document(self, payload: dict[str, Any], table: str, week: Week) -> Path:
        """Replace `table`'s `week` with a JSON document only (a result that is not a frame), read by `read_stats`."""
        target = self.partition_dir(table, week)
        staging = target.parent / f"{STAGING_PREFIX}{week.folder}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            (staging / SIDECAR_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
            (staging / SUCCESS_MARKER).touch()
            self._swap_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def read_stats(self, table: str, week: Week) -> dict[str, Any] | None:
        """The summary written with the partition (drift checks compare it across weeks)."""
        path = self.partition_dir(table, week) / SIDECAR_NAME
        return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True, eq=False)
class AuditedWeek(Lake):
    """The lake as one asset run sees it: its own writes of `week` staged, everything else live."""

    week: Week | None = None
    token: str = ""
    _staged: dict[str, Path] = field(default_factory=dict, repr=False)

    def partition_dir(self, table: str, week: Week) -> Path:
        if week == self.week and table in self._staged:
            return self._staged[table]
        return super().partition_dir(table, week)

    def _stage(self, table: str, week: Week) -> None:
        if week != self.week:
            raise ValueError(f"an audited write of week {self.week.key} cannot write {table} for week {week.key}")
        self._staged[table] = self.audit_dir(table, week, self.token)

    def write_partition(self, df, table: str, week: Week, num_files: int | None = None, stats=None) -> Path:
        self._stage(table, week)
        return super().write_partition(df, table, week, num_files=num_files, stats=stats)

    def write_document(self, payload: dict[str, Any], table: str, week: Week) -> Path:
        self._stage(table, week)
        return super().write_document(payload, table, week)

    @property
    def staged_paths(self) -> dict[str, str]:
        return {table: str(path) for table, path in self._staged.items()}

    def publish(self) -> dict[str, str]:
        """Make every staged table of the week live, one after the other (each swap atomic), and
        clear what failed audits of the week left more than `staging_max_age_s` ago; returns the
        live paths. Younger staging of the week is another run's, perhaps mid-audit: left alone."""
        live = {}
        oldest = time.time() - self.staging_max_age_s
        for table, staged in list(self._staged.items()):
            target = Lake.partition_dir(self, table, self.week)
            self._swap_into_place(staged, target)
            for leftover in staged.parent.glob(f"{self.week.folder}-*"):
                if leftover.stat().st_mtime < oldest:
                    shutil.rmtree(leftover, ignore_errors=True)
            try:
                staged.parent.rmdir()  # the `_audit` folder, once it holds no other week
            except OSError:
                pass
            live[table] = str(target)
            del self._staged[table]
        return live
