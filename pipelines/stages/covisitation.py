"""The `covisitation` stage: the co-visitation lists of the training window."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.covisitation import (
    COVISITATION_CONFIG,
    COVISITATION_LISTS,
    COVISITATION_TABLE,
    CovisitationConfig,
    build_covisitation,
)
from pipelines.vocabulary import BUY_TYPES


@dataclass(frozen=True)
class CovisitationSummary:
    """What `materialize_covisitation_week` wrote for week W."""

    rows: dict[str, int]  # per list
    items: dict[str, int]  # items with neighbours, per list
    coverage: dict[str, float]  # share of the window's active items with neighbours, per list
    seconds: float


def materialize_covisitation_week(spark, lake, week, window, config: CovisitationConfig = COVISITATION_CONFIG
                                  ) -> CovisitationSummary:
    """Fit the co-visitation lists on every event of the training `window` (ending with `week`),
    replace the week's `covisitation` partition and report its size and coverage."""
    import time

    from pyspark.sql import functions as F

    from pipelines.evaluation import active_items, item_coverage, window_events

    started = time.perf_counter()
    train = window_events(spark, lake, window)
    table = build_covisitation(train, config, window[0].start_ms, week.end_ms)

    def summarize(written) -> dict:
        per_list = written.groupBy("matrix").agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("aid").alias("items"))
        counts = {r["matrix"]: r for r in per_list.collect()}
        active, active_buys = active_items(train), active_items(train, types=BUY_TYPES)
        return {
            "rows": {m: counts[m]["rows"] if m in counts else 0 for m in COVISITATION_LISTS},
            "items": {m: counts[m]["items"] if m in counts else 0 for m in COVISITATION_LISTS},
            "coverage": {m: item_coverage(written.where(F.col("matrix") == m), active_buys if m == "buy2buy" else active)
                         for m in COVISITATION_LISTS},
        }

    lake.write_partition(table, COVISITATION_TABLE, week, stats=summarize)
    stats = lake.read_stats(COVISITATION_TABLE, week)
    return CovisitationSummary(rows=stats["rows"], items=stats["items"], coverage=stats["coverage"],
                               seconds=time.perf_counter() - started)
