"""Blocking checks run inside their asset on its staged week (write-audit-publish), and Great
Expectations reports turned into Dagster asset-check results."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MaterializeResult, MetadataValue

from assets.partitions import weekly_partitions
from pipelines.lake import AuditedWeek
from pipelines.quality import ValidationReport


@dataclass(frozen=True)
class StagedLake:
    """What a check receives as `lake`: `.lake` reads the asset's staged week (and the live rest)."""

    lake: AuditedWeek

    @property
    def root(self) -> str:
        return self.lake.root


class AuditedChecks:
    """The blocking checks of one asset. Declared before the asset (its `check_specs`), implemented
    below it with `@CHECKS.implements(NAME)`, and run by the asset with `audit`: the staged week
    becomes live only when none failed at ERROR severity, and downstream assets of a failed check
    do not run (`blocking`).

    A check function takes `context` and any of the asset's resources by name (`spark`, `lake`,
    `pipeline_config`, `s3`, ...); its `lake` is a `StagedLake`.
    """

    def __init__(self, asset_name: str, descriptions: Mapping[str, str]):
        self.asset_name = asset_name
        self.specs = [
            AssetCheckSpec(name, asset=asset_name, blocking=True, description=description, partitions_def=weekly_partitions)
            for name, description in descriptions.items()
        ]
        self._functions: dict[str, Callable[..., AssetCheckResult]] = {}

    def implements(self, name: str):
        if name not in {spec.name for spec in self.specs}:
            raise ValueError(f"{self.asset_name} declares no check {name!r}")

        def register(function):
            self._functions[name] = function
            return function

        return register

    def run_checks(self, context, audited: AuditedWeek, **resources) -> list[AssetCheckResult]:
        staged_lake = StagedLake(audited)
        results = []
        for spec in self.specs:
            function = self._functions[spec.name]
            available = {"context": context, **resources, "lake": staged_lake}
            arguments = {name: available[name] for name in inspect.signature(function).parameters}
            results.append(function(**arguments)._replace(check_name=spec.name))
        return results

    def audit(self, context, audited: AuditedWeek, metadata: Mapping[str, object],
              on_pass: Callable[[], Mapping[str, object]] | None = None, **resources) -> MaterializeResult:
        """Run every check on the staged week; publish it when none failed, else keep it staged.

        `on_pass`: what the asset does only once its outputs passed their audit (the ranker registers
        and gates its version), run before the staged week goes live; it may stage more writes of
        the week and returns metadata to add. A failed audit never calls it."""
        results = self.run_checks(context, audited, **resources)
        failed = [r for r in results if not r.passed and r.severity == AssetCheckSeverity.ERROR]
        staged = audited.staged_paths
        if failed:
            names = ", ".join(r.check_name for r in failed)
            context.log.error(
                f"{self.asset_name} {audited.week.key}: {names} failed; the previous version stays live, "
                f"the new one is kept for inspection at {sorted(staged.values())}"
            )
            results = [
                r if r.passed else r._replace(metadata={**r.metadata, "staged_version": MetadataValue.json(staged)})
                for r in results
            ]
            audit = {"published": False, "failed_checks": [r.check_name for r in failed], "staged": staged}
        else:
            metadata = {**metadata, **(on_pass() if on_pass is not None else {})}
            schema = column_schema(staged.get(self.asset_name))
            if schema is not None:
                metadata = {**metadata, "dagster/column_schema": schema}
            audit = {"published": True, "live": audited.publish()}
        return MaterializeResult(
            metadata={**metadata, "audit": MetadataValue.json(audit), "published_to_lake": not failed},
            check_results=results,
        )


    def warm_up(self, context, audited: AuditedWeek, reason: str, metadata: Mapping[str, object]) -> MaterializeResult:
        """The warm-up week (the first partition: no week before it, so no sources to build labelled
        rows from): the asset writes no table, so there is nothing for its checks to validate. They
        report that, and pass so the week's sources still get published; anything the asset staged
        (the ranker's document saying it trained nothing) becomes live."""
        context.log.info(f"{self.asset_name} {audited.week.key}: {reason}")
        results = [
            AssetCheckResult(check_name=spec.name, passed=True, severity=AssetCheckSeverity.ERROR,
                             description=f"warm-up week: {reason}", metadata={"week": audited.week.key, "warm_up": True})
            for spec in self.specs
        ]
        return MaterializeResult(
            metadata={**metadata, "warm_up": True, "warm_up_reason": reason,
                      "audit": MetadataValue.json({"published": True, "live": audited.publish()})},
            check_results=results,
        )


def column_schema(partition_dir: str | None):
    """The Dagster column schema of a staged Parquet partition (None: no such table, or no files)."""
    from pathlib import Path

    import pyarrow.parquet as pq
    from dagster import TableColumn, TableSchema

    files = sorted(Path(partition_dir).glob("*.parquet")) if partition_dir else []
    if not files:
        return None
    schema = pq.read_schema(files[0])
    return TableSchema(columns=[TableColumn(name=field.name, type=str(field.type)) for field in schema])


def check_result_from_report(report: ValidationReport, **extra_metadata) -> AssetCheckResult:
    """ERROR severity on failure: only that stops downstream assets of a blocking check."""
    return AssetCheckResult(
        passed=report.success,
        severity=AssetCheckSeverity.ERROR,
        description=None if report.success else f"failed: {report.failure_summary()}"[:2000],
        metadata={
            "suite": report.suite,
            "expectations_evaluated": report.as_metadata()["expectations_evaluated"],
            "expectations_failed": len(report.failed),
            "failed_expectations": MetadataValue.json(report.as_metadata()["failed_expectations"]),
            **extra_metadata,
        },
    )


def table_preview(frame, max_rows: int = 20):
    """A small pandas frame as a table the Dagster UI renders (`MetadataValue.table`): numbers stay
    numbers, lists (recommendation lists) show their first ten items as text."""
    import numpy as np
    from dagster import TableColumn, TableRecord, TableSchema

    def cell(value):
        if isinstance(value, (list, tuple, np.ndarray)):
            items = list(value)
            return ", ".join(str(item) for item in items[:10]) + (f", … ({len(items)})" if len(items) > 10 else "")
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return float(value)
        return str(value)

    def column_type(dtype) -> str:
        return {"b": "bool", "i": "int", "u": "int", "f": "float"}.get(dtype.kind, "string")

    shown = frame.head(max_rows)
    schema = TableSchema(columns=[TableColumn(str(name), column_type(dtype)) for name, dtype in shown.dtypes.items()])
    records = [TableRecord({str(name): cell(value) for name, value in row.items()}) for _, row in shown.iterrows()]
    return MetadataValue.table(records, schema=schema)
