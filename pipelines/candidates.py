"""Candidate generation for week W's evaluation sessions, and the hand-rule baseline.

Each source proposes a ranked list per (session, type):

- `history`: the session's own prefix items, weighted by recency (later events count
  more, as in the public "candidate rerank" notebook: 2^(0.1..1) - 1 across the prefix)
  and by type (clicks 1, carts 6, orders 3);
- `covisitation`: neighbours of the prefix items, each history item contributing its
  neighbours' weights normalised by its strongest neighbour and scaled by its recency;
  clicks use the time-weighted clicks matrix, carts and orders the carts-orders matrix
  plus buy2buy neighbours of the items already carted or ordered;
- `als`: the session's top items by ALS factor dot product;
- `top_sellers`: the window's most popular items of the type.

The union of the lists is the candidate table, with every source's score and rank as
columns (null when a source did not propose the item). The **hand-rule baseline** ranks
that table like the public rerank: history items first (by history score), then
co-visitation neighbours by summed weight, then top sellers.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import EVENT_TYPES
from pipelines.metrics import K, candidate_recall, score_predictions
from pipelines.popularity import POPULAR

CANDIDATES_TABLE = "candidates"
SOURCES = ("history", "covisitation", "als", "top_sellers")
TYPE_WEIGHTS = {"clicks": 1.0, "carts": 6.0, "orders": 3.0}
BUY_TYPES = ("carts", "orders")


@dataclass(frozen=True)
class CandidateConfig:
    history: int = 30
    covisitation: int = 40
    als: int = 20
    top_sellers: int = 20


def _types_frame(spark, types=EVENT_TYPES):
    return spark.createDataFrame([(t,) for t in types], "type STRING")


def _ranked(frame, score_column: str, limit: int, tie_column: str = "aid"):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("session", "type").orderBy(F.desc(score_column), F.asc(tie_column))
    return frame.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= limit)


def weighted_history(eval_sessions):
    """`session, aid, ts, type, recency` for every prefix event (recency in (0, 1], last event = 1)."""
    from pyspark.sql import functions as F

    exploded = eval_sessions.select("session", "n_prefix", F.posexplode("prefix").alias("position", "e"))
    fraction = F.when(F.col("n_prefix") > 1, F.col("position") / (F.col("n_prefix") - 1)).otherwise(F.lit(1.0))
    return exploded.select(
        "session",
        F.col("e.aid").alias("aid"),
        F.col("e.ts").alias("ts"),
        F.col("e.type").alias("type"),
        (F.pow(F.lit(2.0), F.lit(0.1) + F.lit(0.9) * fraction) - F.lit(1.0)).alias("recency"),
    )


def history_candidates(eval_sessions, limit: int):
    from pyspark.sql import functions as F

    type_weight = F.create_map(*[x for t, w in TYPE_WEIGHTS.items() for x in (F.lit(t), F.lit(w))])
    scored = weighted_history(eval_sessions).groupBy("session", "aid").agg(
        F.sum(F.col("recency") * type_weight[F.col("type")]).alias("score"), F.max("ts").alias("last_ts")
    )
    per_type = scored.crossJoin(_types_frame(eval_sessions.sparkSession))
    return _ranked(per_type, "score", limit).select("session", "type", "aid", "score", "rank")


def _neighbour_scores(sources, covisitation, matrix: str):
    """Sum over source items of recency x (weight / strongest weight of that source item)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    neighbours = covisitation.where(F.col("matrix") == matrix).select("aid", "neighbour", "weight")
    neighbours = neighbours.withColumn("relative", F.col("weight") / F.max("weight").over(Window.partitionBy("aid")))
    return sources.join(neighbours, "aid").groupBy("session", F.col("neighbour").alias("aid")).agg(
        F.sum(F.col("recency") * F.col("relative")).alias("score")
    )


def covisitation_candidates(eval_sessions, covisitation, limit: int):
    from pyspark.sql import functions as F

    history = weighted_history(eval_sessions)
    # One source row per (session, aid): its most recent occurrence sets the recency.
    sources = history.groupBy("session", "aid").agg(F.max("recency").alias("recency"))
    buy_sources = history.where(F.col("type").isin(*BUY_TYPES)).groupBy("session", "aid").agg(
        F.max("recency").alias("recency")
    )
    clicks = _neighbour_scores(sources, covisitation, "clicks").withColumn("type", F.lit("clicks"))
    buys = (
        _neighbour_scores(sources, covisitation, "carts_orders")
        .unionByName(_neighbour_scores(buy_sources, covisitation, "buy2buy"))
        .groupBy("session", "aid")
        .agg(F.sum("score").alias("score"))
        .crossJoin(_types_frame(eval_sessions.sparkSession, BUY_TYPES))
    )
    return _ranked(clicks.unionByName(buys), "score", limit).select("session", "type", "aid", "score", "rank")


def als_candidates(als_recommendations, limit: int):
    """ALS recommendations (`session, aid, score, rank`) proposed for every type."""
    from pyspark.sql import functions as F

    per_type = als_recommendations.where(F.col("rank") <= limit).crossJoin(_types_frame(als_recommendations.sparkSession))
    return per_type.select("session", "type", "aid", "score", "rank")


def top_seller_candidates(eval_sessions, top_sellers, limit: int):
    from pyspark.sql import functions as F

    popular = top_sellers.where((F.col("list") == POPULAR) & (F.col("rank") <= limit)).select(
        "type", "aid", "score", "rank"
    )
    return eval_sessions.select("session").crossJoin(F.broadcast(popular)).select(
        "session", "type", "aid", "score", "rank"
    )


def build_candidates(eval_sessions, covisitation, als_recommendations, top_sellers, config: CandidateConfig):
    """The union of all sources, one row per (session, type, aid), with per-source score and rank columns."""
    from pyspark.sql import functions as F

    per_source = {
        "history": history_candidates(eval_sessions, config.history),
        "covisitation": covisitation_candidates(eval_sessions, covisitation, config.covisitation),
        "als": als_candidates(als_recommendations, config.als),
        "top_sellers": top_seller_candidates(eval_sessions, top_sellers, config.top_sellers),
    }
    union = None
    for name, frame in per_source.items():
        renamed = frame.select(
            "session", "type", "aid", F.col("score").alias(f"{name}_score"), F.col("rank").alias(f"{name}_rank")
        )
        union = renamed if union is None else union.join(renamed, ["session", "type", "aid"], "full_outer")
    n_sources = sum(F.col(f"{name}_rank").isNotNull().cast("int") for name in SOURCES)
    return with_baseline_rank(union.withColumn("n_sources", n_sources))


def with_baseline_rank(candidates):
    """Hand-rule rerank: history first, then co-visitation by summed weight, then top sellers."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    tier = (
        F.when(F.col("history_rank").isNotNull(), 0)
        .when(F.col("covisitation_rank").isNotNull(), 1)
        .when(F.col("top_sellers_rank").isNotNull(), 2)
        .otherwise(3)
    )
    order = Window.partitionBy("session", "type").orderBy(
        tier,
        F.desc_nulls_last("history_score"),
        F.desc_nulls_last("covisitation_score"),
        F.asc_nulls_last("top_sellers_rank"),
        F.asc("aid"),
    )
    # ALS-only candidates (tier 3) sort last and get no baseline rank: the rule does not use ALS.
    return candidates.withColumn("baseline_rank", F.when(tier < 3, F.row_number().over(order)))


def label_hits(candidates, labels_long):
    """The candidate rows that are labels, as pandas: all any recall needs, and small."""
    return candidates.join(labels_long, ["session", "type", "aid"], "left_semi").toPandas()


def _as_predictions(hits, rank_column: str):
    rows = hits[hits[rank_column].notna()]
    return rows[["session", "type", "aid"]].assign(rank=rows[rank_column].astype("int64"))


def recall_report(hits, labels, k: int = K) -> dict[str, dict[str, float]]:
    """Recall@k and candidate ceiling per source, the union ceiling, and both baselines' scores.

    `hits`: `label_hits(...)`; `labels`: the labels long frame in pandas.
    """
    report: dict[str, dict[str, float]] = {}
    for source in SOURCES:
        predictions = _as_predictions(hits, f"{source}_rank")
        report[source] = {
            **{f"at{k}_{name}": value for name, value in score_predictions(predictions, labels, k).items()
               if name.startswith("recall_") or name == "score"},
            **{f"ceiling_{name}": value for name, value in candidate_recall(predictions, labels, k).items()},
        }
    report["combined"] = {f"ceiling_{name}": value for name, value in candidate_recall(hits, labels, k).items()}
    report["baseline_covisitation"] = score_predictions(_as_predictions(hits, "baseline_rank"), labels, k)
    report["baseline_popularity"] = score_predictions(_as_predictions(hits, "top_sellers_rank"), labels, k)
    return report
