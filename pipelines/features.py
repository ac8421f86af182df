"""Label-free features for every candidate row, in Spark.

Input is what the ranker may know when it scores a session: the session's visible events
(`session, prefix`) and the tables fitted on the training window (co-visitation, ALS similar
items, top sellers, item statistics). Nothing here reads a label, so the same function builds
the training rows of week W (prefixes of its evaluation sessions) and the rows the served model
scores (full histories of any session).

Feature groups (every column is numeric; missing values stay null and LightGBM treats them as
missing):

- candidate: each source's score and rank, the number of sources, the hand-rule rank;
- session: length, duration, events by type, distinct items;
- item: events by type over the window and its last week, click trend, cart and order rates;
- session x item: events by type with the item in the session, plain and decayed by their age at
  the session's last event (half-life one hour), seconds and events since the session last touched it, co-visitation weight summed from the session's items for each matrix and the two-hop clicks list,
  ALS similarity summed from the session's items (built with the candidates, which explode the
  same history and neighbours, and stored in their table).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.candidates import PAIR_FEATURES, SOURCES, CandidateConfig, build_candidates
from pipelines.spark import broadcast_if_small
from pipelines.vocabulary import BUY_TYPES, DAY_MS, EVENT_TYPES

FEATURES_TABLE = "features"
TRAINING_FEATURES_TABLE = "training_features"
ITEM_STATS_TABLE = "item_stats"
# Bumped when the candidate or feature rows change meaning: the `candidates` and `features` assets
# carry it as their Dagster code version, so partitions written by older code show as stale.
# 2: candidates carry the session x item features (PAIR_FEATURES).
# 3: ALS proposes 10, top sellers only fill short lists; co-visitation weights of the latest items.
# 4: rows from week W-1's sources (one fit per week); time-decayed interaction counts per type.
# 5: two-hop clicks co-visitation weight summed from the session's items.
# 6: training-cut queries get feature rows of their own (`training_features`).
FEATURE_CODE_VERSION = "6"
KEY_COLUMNS = ("session", "type", "aid")
TREND_SMOOTHING = 5.0

CANDIDATE_FEATURES = [
    *[f"{source}_{kind}" for source in SOURCES for kind in ("score", "rank")],
    "n_sources",
    "baseline_rank",
]
SESSION_FEATURES = ["session_length", "session_duration_s", "session_unique_aids"] + [
    f"session_{event_type}" for event_type in EVENT_TYPES
]
ITEM_FEATURES = (
    [f"item_{event_type}" for event_type in EVENT_TYPES]
    + [f"item_{event_type}_last_week" for event_type in EVENT_TYPES]
    + ["item_click_trend", "item_cart_rate", "item_order_rate"]
)
# Computed with the candidates (pipelines.candidates) and read from their table.
SESSION_ITEM_FEATURES = PAIR_FEATURES
FEATURE_COLUMNS = CANDIDATE_FEATURES + SESSION_FEATURES + ITEM_FEATURES + SESSION_ITEM_FEATURES


@dataclass(frozen=True)
class SourceTables:
    """What candidates and features are built from: one week's fitted tables (Spark frames)."""

    covisitation: object
    similar_items: object
    top_sellers: object
    item_stats: object


def build_item_stats(events, reference_ms: int):
    """Per item: events by type over the training window and its last week before `reference_ms`,
    the click trend (last week vs the one before, smoothed) and cart/order rates per click.

    `events` are the training window's events (`window_events`), `reference_ms` the end of the
    window: these are week W's item features, which week W+1's labelled rows and W's served model read.
    """
    from pyspark.sql import functions as F

    last_week = F.col("ts") >= reference_ms - 7 * DAY_MS
    previous_week = (F.col("ts") >= reference_ms - 14 * DAY_MS) & ~last_week
    counts = []
    for event_type in EVENT_TYPES:
        is_type = F.col("type") == event_type
        counts += [
            F.sum(is_type.cast("long")).alias(f"item_{event_type}"),
            F.sum((is_type & last_week).cast("long")).alias(f"item_{event_type}_last_week"),
        ]
    counts.append(F.sum(((F.col("type") == "clicks") & previous_week).cast("long")).alias("clicks_previous_week"))
    per_item = events.groupBy("aid").agg(*counts)
    smoothing = F.lit(TREND_SMOOTHING)
    return per_item.select(
        "aid",
        *[f"item_{event_type}" for event_type in EVENT_TYPES],
        *[f"item_{event_type}_last_week" for event_type in EVENT_TYPES],
        ((F.col("item_clicks_last_week") + smoothing) / (F.col("clicks_previous_week") + smoothing)).alias(
            "item_click_trend"
        ),
        (F.col("item_carts") / (F.col("item_clicks") + 1.0)).alias("item_cart_rate"),
        (F.col("item_orders") / (F.col("item_clicks") + 1.0)).alias("item_order_rate"),
    )


def session_features(sessions):
    """`session` + SESSION_FEATURES from the whole visible prefix."""
    from pyspark.sql import functions as F

    count_type = lambda name: F.size(F.filter("prefix", lambda e: e["type"] == name))  # noqa: E731
    return sessions.select(
        "session",
        F.size("prefix").alias("session_length"),
        ((F.try_element_at("prefix", F.lit(-1))["ts"] - F.try_element_at("prefix", F.lit(1))["ts"]) / 1000.0).alias("session_duration_s"),
        F.size(F.array_distinct(F.transform("prefix", lambda e: e["aid"]))).alias("session_unique_aids"),
        *[count_type(event_type).alias(f"session_{event_type}") for event_type in EVENT_TYPES],
    )


def source_tables(spark, lake, week) -> SourceTables:
    """Week W's fitted tables: what candidates and features are built from, and what a bundle carries."""
    from pipelines.als import SIMILAR_ITEMS_TABLE
    from pipelines.covisitation import COVISITATION_TABLE
    from pipelines.popularity import TOP_SELLERS_TABLE

    read = lambda table: lake.read_partition(spark, table, week)  # noqa: E731
    return SourceTables(
        covisitation=read(COVISITATION_TABLE),
        similar_items=read(SIMILAR_ITEMS_TABLE),
        top_sellers=read(TOP_SELLERS_TABLE),
        item_stats=read(ITEM_STATS_TABLE),
    )


def add_features(candidates, sessions, item_stats):
    """`candidates` (from `build_candidates`, which carry the session x item features) with the
    session and item features, every FEATURE_COLUMNS column as a 32-bit float: what the ranker reads
    (LightGBM bins float32), at half the bytes of doubles in the lake and in memory.

    Both tables hold one row per session or item: broadcast when they fit."""
    from pyspark.sql import functions as F

    missing = [name for name in PAIR_FEATURES if name not in candidates.columns]
    if missing:
        raise ValueError(f"the candidates lack the session x item features {missing}: they were written by an older "
                         "build_candidates; materialize the week's candidates again")
    with_features = candidates.join(broadcast_if_small(session_features(sessions)), "session", "left").join(
        broadcast_if_small(item_stats), "aid", "left")
    return with_features.select(*KEY_COLUMNS, *[F.col(name).cast("float").alias(name) for name in FEATURE_COLUMNS])


def candidate_features(sessions, tables: SourceTables, config: CandidateConfig):
    """Candidates and features in one go: what the served model computes for new sessions."""
    candidates = build_candidates(sessions, tables.covisitation, tables.similar_items, tables.top_sellers, config)
    return add_features(candidates, sessions, tables.item_stats)


def training_cut_features(cuts, tables: SourceTables, config: CandidateConfig):
    """The feature rows of week W's training cuts (`split_training_cuts`), built like the
    evaluation rows (same sources, same candidates) for the buy types they were kept for."""
    from pyspark.sql import functions as F

    rows = candidate_features(cuts.select("session", "prefix"), tables, config)
    return rows.where(F.col("type").isin(*BUY_TYPES))


def features_validation_frame(features):
    """A one-row pandas summary of what the features contract checks: rows, rows sharing a
    (session, type, aid) key with another, NaN or infinite feature values, rows without session
    features.

    Two Spark jobs compute every count and GE then checks the numbers (GE on the row frame would
    run a Spark job per expectation over every row). Finiteness is summed per column in a job
    without a shuffle: one OR across every column per row makes an expression too large for
    Spark's generated code, and the interpreted fallback is several times slower."""
    import pandas as pd
    from pyspark.sql import functions as F

    # NaN compares above infinity in Spark, so `abs < inf` is false for NaN and both infinities.
    not_finite = [F.sum((~F.coalesce(F.abs(name) < float("inf"), F.lit(True))).cast("long")).alias(name)
                  for name in FEATURE_COLUMNS]
    per_column = features.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("session_length").isNull().cast("long")).alias("rows_without_session_features"),
        *not_finite,
    ).first()
    distinct_keys = features.select(*KEY_COLUMNS).distinct().count()
    rows = int(per_column["rows"])
    return pd.DataFrame([{
        "rows": rows,
        "duplicate_key_rows": rows - distinct_keys,
        "values_not_finite": sum(int(per_column[name] or 0) for name in FEATURE_COLUMNS),
        "rows_without_session_features": int(per_column["rows_without_session_features"] or 0),
    }])
