"""The `recommendation_tables` stage: the week's four published tables, staged in the lake."""

from __future__ import annotations

from pipelines.recommendations import (
    PUBLISHED_KEYS,
    SUMMARY_TABLE,
    active_sessions,
    frequently_bought_together_table,
    hand_rule_recommendations,
    lake_table,
    similar_items_table,
    top_sellers_table,
)


def write_recommendation_tables(spark, lake, week, bundle, model: dict) -> dict[str, int]:
    """Stage week W's four published tables in the lake and their summary (row counts, `model`);
    returns the row counts. Every table comes from week W's own sources (fitted through the end of
    W), the session lists from `bundle`'s boosters (the champion's `pipelines.model.Bundle`) on
    those sources, or from the hand rule when `bundle` is None (the warm-up week)."""
    from pipelines.candidates import CandidateConfig
    from pipelines.features import source_tables
    from pipelines.lake import SESSIONS_TABLE
    from pipelines.publish import FREQUENTLY_BOUGHT_TOGETHER, SESSION_RECOMMENDATIONS, SIMILAR_ITEMS, TOP_SELLERS

    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    sources = source_tables(spark, lake, week)
    sessions = active_sessions(read(SESSIONS_TABLE))
    tables = {
        TOP_SELLERS: top_sellers_table(sources.top_sellers),
        FREQUENTLY_BOUGHT_TOGETHER: frequently_bought_together_table(sources.covisitation),
        SIMILAR_ITEMS: similar_items_table(sources.similar_items),
        SESSION_RECOMMENDATIONS: (
            hand_rule_recommendations(sessions, sources, CandidateConfig()) if bundle is None
            else bundle.recommend(sessions, tables=sources)),
    }
    row_counts = {}
    for name, frame in tables.items():
        keys = PUBLISHED_KEYS[name]
        files = int(spark.conf.get("spark.sql.shuffle.partitions")) if name == SESSION_RECOMMENDATIONS else 1
        lake.write_partition(frame.repartition(files, *keys).sortWithinPartitions(*keys), lake_table(name), week)
        row_counts[name] = read(lake_table(name)).count()
    lake.write_document({"row_counts": row_counts, "model": model}, lake_table(SUMMARY_TABLE), week)
    return row_counts
