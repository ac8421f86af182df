"""`top_sellers`: recency-weighted popularity per event type, and trending items.

Popularity is the cold-start fallback of every list and a baseline of its own. An event's
weight halves every `half_life_days` back from the end of the training window, so last
week's bestsellers outrank last month's. Trending compares the window's last week with the
week before it (additively smoothed), among items with enough recent events to matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.vocabulary import DAY_MS, EVENT_TYPES

TOP_SELLERS_TABLE = "top_sellers"
POPULAR = "popular"
TRENDING = "trending"
TOP_SELLERS_COLUMNS = ("list", "type", "rank", "aid", "score", "events")


@dataclass(frozen=True)
class TopSellersConfig:
    top_n: int = 100
    half_life_days: float = 7.0
    trending_min_events: int = 5
    trending_smoothing: float = 5.0


def build_top_sellers(events, reference_ms: int, config: TopSellersConfig):
    """`list` (popular|trending), `type`, `rank` (1 = best), `aid`, `score`, `events` (raw count).

    `reference_ms` is "now" (the end of week W, when the lists start to serve): older events decay
    from there; an event at or after it weighs 1 and counts in the last week.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    age_days = F.greatest(F.lit(0), F.lit(reference_ms) - F.col("ts")) / F.lit(DAY_MS)
    weighted = events.select("aid", "type", "ts", F.pow(F.lit(0.5), age_days / config.half_life_days).alias("w"))
    last_week_start = reference_ms - 7 * DAY_MS
    previous_week_start = reference_ms - 14 * DAY_MS
    per_item = weighted.groupBy("type", "aid").agg(
        F.sum("w").alias("popular_score"),
        F.count(F.lit(1)).alias("events"),
        F.sum((F.col("ts") >= last_week_start).cast("int")).alias("last_week"),
        F.sum(((F.col("ts") >= previous_week_start) & (F.col("ts") < last_week_start)).cast("int")).alias("previous_week"),
    )
    smoothing = F.lit(config.trending_smoothing)
    trending_score = (F.col("last_week") + smoothing) / (F.col("previous_week") + smoothing)
    popular = per_item.select(
        F.lit(POPULAR).alias("list"), "type", "aid", F.col("popular_score").alias("score"), "events"
    )
    trending = per_item.where(F.col("last_week") >= config.trending_min_events).select(
        F.lit(TRENDING).alias("list"), "type", "aid", trending_score.alias("score"), "events"
    )
    ranking = Window.partitionBy("list", "type").orderBy(F.desc("score"), F.asc("aid"))
    return (
        popular.unionByName(trending)
        .withColumn("rank", F.row_number().over(ranking))
        .where(F.col("rank") <= config.top_n)
        .select(*TOP_SELLERS_COLUMNS)
    )


def popularity_predictions(labels, top_sellers, k: int):
    """The popularity baseline: every labelled (session, type) of `labels` gets the type's top `k`
    sellers, as Spark `session, type, aid, rank`. Ranked from the table, not from candidate rows,
    which keep top sellers only where the other sources leave a list short."""
    from pyspark.sql import functions as F

    popular = top_sellers.where((F.col("list") == POPULAR) & (F.col("rank") <= k)).select(
        "type", "aid", F.col("rank").cast("int").alias("rank"))
    return labels.select("session", "type").distinct().join(F.broadcast(popular), "type").select(
        "session", "type", "aid", "rank")


def top_sellers_validation_frame(top_sellers):
    """Per (list, type) row counts and rank/score sanity, one row per list entry, for GE."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    group = Window.partitionBy("list", "type")
    return top_sellers.select(
        "list",
        "type",
        "rank",
        "aid",
        "score",
        F.count(F.lit(1)).over(group).alias("entries_in_list"),
        F.size(F.collect_set("aid").over(group)).alias("distinct_aids_in_list"),
        (~F.isnan("score") & (F.col("score") > 0)).alias("score_positive_finite"),
    )


def types_present(top_sellers) -> dict[str, int]:
    """Popular-list length per event type (zero when a type has no events at all)."""
    from pyspark.sql import functions as F

    counts = {r["type"]: r["n"] for r in top_sellers.where(F.col("list") == POPULAR).groupBy("type").agg(F.count(F.lit(1)).alias("n")).collect()}
    return {event_type: counts.get(event_type, 0) for event_type in EVENT_TYPES}


# What the `top_sellers` stage builds with.
TOP_SELLERS_CONFIG = TopSellersConfig()
