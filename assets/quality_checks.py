"""Turning Great Expectations reports into Dagster asset-check results."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from pipelines.quality import ValidationReport


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
