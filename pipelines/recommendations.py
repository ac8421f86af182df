"""The four published recommendation tables of a week, built in Spark (layout: DESIGN.md, a contract).

- `top_sellers`: type, rank, aid, score: the window's most popular items per event type;
- `frequently_bought_together`: aid, recs, scores: the buy2buy co-visitation neighbours;
- `similar_items`: aid, recs, scores: ALS cosine neighbours;
- `session_recommendations`: session, type, recs, scores: the champion model's top 20 per type
  for every session active in the week, from its full history.

Lists hold at most 20 distinct aids, scores descending.
"""

from __future__ import annotations

from pipelines.metrics import K
from pipelines.popularity import POPULAR

RECOMMENDATION_TABLE_PREFIX = "published_"


def lake_table(published_name: str) -> str:
    """The lake table that stages a published table before upload."""
    return f"{RECOMMENDATION_TABLE_PREFIX}{published_name}"


def top_sellers_table(top_sellers, k: int = K):
    from pyspark.sql import functions as F

    return top_sellers.where((F.col("list") == POPULAR) & (F.col("rank") <= k)).select(
        "type", F.col("rank").cast("int").alias("rank"), F.col("aid").cast("bigint").alias("aid"),
        F.col("score").cast("float").alias("score"),
    )


def ranked_lists(pairs, k: int = K):
    """`aid, neighbour, score` pairs -> `aid, recs, scores`: the k best neighbours, scores descending."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("aid").orderBy(F.desc("score"), F.asc("neighbour"))
    best = pairs.withColumn("position", F.row_number().over(order)).where(F.col("position") <= k)
    grouped = best.groupBy("aid").agg(F.sort_array(F.collect_list(F.struct("position", "neighbour", "score"))).alias("ranked"))
    return grouped.select(
        F.col("aid").cast("bigint").alias("aid"),
        F.transform("ranked", lambda r: r["neighbour"].cast("bigint")).alias("recs"),
        F.transform("ranked", lambda r: r["score"].cast("float")).alias("scores"),
    )


def frequently_bought_together_table(covisitation, k: int = K):
    from pyspark.sql import functions as F

    pairs = covisitation.where(F.col("matrix") == "buy2buy").select("aid", "neighbour", F.col("weight").alias("score"))
    return ranked_lists(pairs, k)


def similar_items_table(similar_items, k: int = K):
    return ranked_lists(similar_items.select("aid", "neighbour", "score"), k)


def active_sessions(sessions):
    """The week's `sessions` table as model input: `session, prefix` (the full capped history)."""
    from pyspark.sql import functions as F

    return sessions.select("session", F.col("history").alias("prefix"))


def catalogue(events):
    """Every aid with an event in `events`: what a published list may name."""
    return events.select("aid").distinct()
