"""The publish gates: what a week's tables must satisfy before they are published."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import env_or_default
from pipelines.publish.layout import (
    FREQUENTLY_BOUGHT_TOGETHER,
    LIST_TABLE_KEYS,
    PUBLISHED_TABLES,
    SESSION_RECOMMENDATIONS,
    SIMILAR_ITEMS,
    TOP_SELLERS,
)


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
            min_list_length=int(env_or_default("RECSYS_PUBLISH_MIN_LIST_LENGTH", str(cls.min_list_length))),
            max_list_length=int(env_or_default("RECSYS_PUBLISH_MAX_LIST_LENGTH", str(cls.max_list_length))),
            min_row_ratio=float(env_or_default("RECSYS_PUBLISH_MIN_ROW_RATIO", str(cls.min_row_ratio))),
            max_row_ratio=float(env_or_default("RECSYS_PUBLISH_MAX_ROW_RATIO", str(cls.max_row_ratio))),
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
