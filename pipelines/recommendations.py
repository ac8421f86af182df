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


SUMMARY_TABLE = "summary"


def write_recommendation_tables(spark, lake, week, bundle, model: dict) -> dict[str, int]:
    """Stage week W's four published tables in the lake, the session lists from `bundle` (the
    champion's `pipelines.model.Bundle`), and their summary (row counts, `model`); returns the row
    counts. The tables are read from the lake week's source tables and sessions."""
    from pipelines.als import SIMILAR_ITEMS_TABLE
    from pipelines.covisitation import COVISITATION_TABLE
    from pipelines.lake import SESSIONS_TABLE
    from pipelines.popularity import TOP_SELLERS_TABLE
    from pipelines.publish import FREQUENTLY_BOUGHT_TOGETHER, SESSION_RECOMMENDATIONS, SIMILAR_ITEMS, TOP_SELLERS

    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    tables = {
        TOP_SELLERS: top_sellers_table(read(TOP_SELLERS_TABLE)),
        FREQUENTLY_BOUGHT_TOGETHER: frequently_bought_together_table(read(COVISITATION_TABLE)),
        SIMILAR_ITEMS: similar_items_table(read(SIMILAR_ITEMS_TABLE)),
        SESSION_RECOMMENDATIONS: bundle.recommend(active_sessions(read(SESSIONS_TABLE))),
    }
    row_counts = {}
    for name, frame in tables.items():
        lake.write_partition(frame, lake_table(name), week)
        row_counts[name] = read(lake_table(name)).count()
    lake.write_document({"row_counts": row_counts, "model": model}, lake_table(SUMMARY_TABLE), week)
    return row_counts
