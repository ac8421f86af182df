"""The four published recommendation tables of a week, built in Spark (layout: docs/design.md, a contract).

- `top_sellers`: type, rank, aid, score: the window's most popular items per event type;
- `frequently_bought_together`: aid, recs, scores: the buy2buy co-visitation neighbours;
- `similar_items`: aid, recs, scores: ALS cosine neighbours;
- `session_recommendations`: session, type, recs, scores: the champion's boosters' top 20 per type
  for every session active in the week, from its full history (the hand rule in the warm-up week).

Every table is built from week W's sources, fitted on every event through the end of W.

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


def neighbour_lists(pairs, k: int = K):
    """`aid, neighbour, score` pairs -> `aid, recs, scores`: the k best neighbours, scores descending."""
    from pyspark.sql import functions as F

    from pipelines.model.bundle import top_k_lists

    lists = top_k_lists(pairs, k, keys=("aid",), item="neighbour")
    return lists.select(F.col("aid").cast("bigint").alias("aid"), F.col("recs").cast("array<bigint>").alias("recs"), "scores")


def frequently_bought_together_table(covisitation, k: int = K):
    from pyspark.sql import functions as F

    pairs = covisitation.where(F.col("matrix") == "buy2buy").select("aid", "neighbour", F.col("weight").alias("score"))
    return neighbour_lists(pairs, k)


def similar_items_table(similar_items, k: int = K):
    return neighbour_lists(similar_items.select("aid", "neighbour", "score"), k)


def active_sessions(sessions):
    """The week's `sessions` table as model input: `session, prefix` (the full capped history)."""
    from pyspark.sql import functions as F

    return sessions.select("session", F.col("history").alias("prefix"))


def catalogue(events):
    """Every aid with an event in `events`: what a published list may name."""
    return events.select("aid").distinct()


SUMMARY_TABLE = "summary"
HAND_RULE_MODEL = "hand-rule"


def hand_rule_recommendations(sessions, tables, config, k: int = K):
    """The co-visitation hand rule's top k per (session, type) as `session, type, recs, scores`
    (score 1 / rank): what the warm-up week publishes, before any ranker exists."""
    from pyspark.sql import functions as F

    from pipelines.candidates import build_candidates
    from pipelines.model.bundle import top_k_lists

    rows = build_candidates(sessions, tables.covisitation, tables.similar_items, tables.top_sellers, config)
    ranked = rows.where(F.col("baseline_rank").isNotNull()).select(
        "session", "type", "aid", (F.lit(1.0) / F.col("baseline_rank")).alias("score"))
    return top_k_lists(ranked, k)


# Each published table's key. Files are cut by a hash of it and rows ordered by it, so a rerun with
# the same inputs, model and shuffle partitions writes the same bytes (the manifest's sha256s).
PUBLISHED_KEYS = {
    "top_sellers": ("type", "rank"),
    "frequently_bought_together": ("aid",),
    "similar_items": ("aid",),
    "session_recommendations": ("session", "type"),
}


# Which registered version a week publishes with (`model_for_week`): this one means the alias as it is now.
USE_CURRENT_CHAMPION = "champion"


def model_for_week(mlflow_tracking, ranker_summary: dict | None, model_version: str):
    """The version a week publishes with: by default the one that was champion right after the
    week's own ranker gate, so a rerun or backfill of the week gives the same lists whatever the
    alias points at today. `model_version` overrides it ("champion" or a version number). None, with
    the reason, when there is no such version: in the warm-up week (its ranker trained nothing) and
    until a version passes the gate; the hand rule then writes the session lists."""
    if model_version == USE_CURRENT_CHAMPION:
        return mlflow_tracking.load_champion(), "the current champion (explicit override)"
    if model_version:
        return mlflow_tracking.load_version(model_version), f"version {model_version} (explicit override)"
    if (ranker_summary or {}).get("warm_up"):
        return None, ranker_summary["warm_up"]
    if ranker_summary is None or "gate" not in ranker_summary:
        raise LookupError("this week's ranker left no summary in the lake: materialize the week's ranker first")
    chosen = ranker_summary["gate"].get("champion_after")
    if chosen is None:
        return None, ("no version has passed the champion gate yet (this week's: "
                      f"{ranker_summary['gate'].get('reason', 'no reason recorded')})")
    return mlflow_tracking.load_version(str(chosen)), "the champion after this week's ranker gate"


def row_count_warm_up(pipeline_config, week: str, previous_week: str | None) -> str | None:
    """Why this week's row counts cannot be held against the previous published week's, if they cannot:
    item tables grow with the training window until it is full (the first weeks after the partition start)."""
    if previous_week is None:
        return None
    partial = {
        key: len(weeks) for key in (week, previous_week)
        if len(weeks := pipeline_config.training_window(key)) < pipeline_config.training_weeks
    }
    if not partial:
        return None
    return "training window not full yet (" + ", ".join(
        f"week {key} learned from {n} of {pipeline_config.training_weeks} weeks" for key, n in sorted(partial.items())) + ")"
