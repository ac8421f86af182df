"""The `features` stage: feature rows of the week's candidates and training cuts."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.candidates import CandidateConfig
from pipelines.features import (
    FEATURES_TABLE,
    ITEM_STATS_TABLE,
    TRAINING_FEATURES_TABLE,
    add_features,
    source_tables,
    training_cut_features,
)


@dataclass(frozen=True)
class FeaturesSummary:
    """What `materialize_features_week` wrote for week W."""

    rows: int
    candidate_rows: int
    rows_per_type: dict[str, int]
    training_cut_rows: int
    training_cut_queries: int
    seconds: float


def materialize_features_week(spark, lake, week, sources_week, config: CandidateConfig) -> FeaturesSummary:
    """Replace week W's `features` (every candidate row with its features, from W's `candidates`
    and `sources_week`'s item statistics) and `training_features` (the rows of W's training cuts,
    built with `sources_week`'s tables and `config`, as the candidates were)."""
    import time

    from pipelines.candidates import CANDIDATES_TABLE
    from pipelines.evaluation import EVAL_SESSIONS_TABLE, TRAINING_CUTS_TABLE

    started = time.perf_counter()
    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    candidate_rows = read(CANDIDATES_TABLE)
    table = add_features(candidate_rows, read(EVAL_SESSIONS_TABLE).select("session", "prefix"),
                         lake.read_partition(spark, ITEM_STATS_TABLE, sources_week))
    lake.write_partition(
        table, FEATURES_TABLE, week,
        stats=lambda written: {"rows": written.count(), "candidate_rows": candidate_rows.count(),
                               "rows_per_type": {r["type"]: r["count"] for r in written.groupBy("type").count().collect()}},
    )
    # A week split before training cuts existed has none: it trains without them (the ranker says so).
    if lake.has_partition(TRAINING_CUTS_TABLE, week):
        lake.write_partition(
            training_cut_features(read(TRAINING_CUTS_TABLE), source_tables(spark, lake, sources_week), config),
            TRAINING_FEATURES_TABLE, week,
            stats=lambda written: {"rows": written.count(), "queries": written.select("session").distinct().count()},
        )
    stats = lake.read_stats(FEATURES_TABLE, week)
    training = lake.read_stats(TRAINING_FEATURES_TABLE, week) if lake.has_partition(TRAINING_FEATURES_TABLE, week) \
        else {"rows": 0, "queries": 0}
    return FeaturesSummary(rows=stats["rows"], candidate_rows=stats["candidate_rows"],
                           rows_per_type=stats["rows_per_type"], training_cut_rows=training["rows"],
                           training_cut_queries=training["queries"], seconds=time.perf_counter() - started)
