"""Turning Great Expectations reports into Dagster asset-check results."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from assets.partitions import weekly_partitions

from pipelines.quality import ValidationReport


def weekly_blocking_check(*, asset, name: str, description: str):
    """A check per weekly partition that blocks: on failure nothing downstream runs in that run."""
    return asset_check(asset=asset, name=name, description=description, blocking=True, partitions_def=weekly_partitions)


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


def markdown_table(frame, max_rows: int = 20) -> str:
    """A small pandas frame as a Markdown table for `MetadataValue.md` (no tabulate dependency)."""
    if frame is None or len(frame) == 0:
        return "(empty)"
    shown = frame.head(max_rows)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "---|" * len(shown.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
