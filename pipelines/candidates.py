"""Candidate generation for week W's evaluation sessions, and the hand-rule baseline.

Each source proposes a ranked list per (session, type):

- `history`: the session's own prefix items, weighted by recency (later events count
  more, as in the public "candidate rerank" notebook: 2^(0.1..1) - 1 across the prefix)
  and by type (clicks 1, carts 6, orders 3);
- `covisitation`: neighbours of the prefix items, each history item contributing its
  neighbours' weights normalised by its strongest neighbour and scaled by its recency;
  clicks use the time-weighted clicks matrix, carts and orders the carts-orders matrix
  plus buy2buy neighbours of the items already carted or ordered;
- `als`: ALS similar items (cosine of item factors) of the prefix items, weighted like
  co-visitation neighbours; using item-item similarity, not session factors, lets the served
  model score sessions ALS never saw, exactly as in training;
- `top_sellers`: the window's most popular items of the type.

Every source reads a session as `session, prefix` (its time-ordered events, the visible
prefix in evaluation, the full history in production), capped to the last
`max_prefix_events`. The union of the lists is the candidate table, with every source's score and rank as
columns (null when a source did not propose the item). The **hand-rule baseline** ranks
that table like the public rerank: history items first (by history score), then
co-visitation neighbours by summed weight, then top sellers.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.covisitation import COVISITATION_LISTS, TWO_HOP
from pipelines.metrics import K, candidate_recall, score_predictions
from pipelines.popularity import POPULAR
from pipelines.spark import broadcast_if_small
from pipelines.vocabulary import BUY_TYPES, EVENT_TYPES, INTERACTION_TYPE_WEIGHTS

CANDIDATES_TABLE = "candidates"
# LightGBM LambdaRank needs fewer than 10,000 rows per query.
MAX_CANDIDATES_PER_QUERY = 9_999
SOURCES = ("history", "covisitation", "als", "top_sellers")
ALS_LIST = "als"
# Neighbour list -> the session x item column its weights are summed into: the co-visitation
# matrices (pipelines.covisitation) and ALS similar items.
NEIGHBOUR_WEIGHTS = {
    "clicks": "covisitation_clicks_weight",
    "carts_orders": "covisitation_carts_orders_weight",
    "buy2buy": "covisitation_buy2buy_weight",
    TWO_HOP: "covisitation_clicks_two_hop_weight",
    ALS_LIST: "als_similarity",
}
if set(NEIGHBOUR_WEIGHTS) != {*COVISITATION_LISTS, ALS_LIST}:
    raise ImportError(
        f"NEIGHBOUR_WEIGHTS names {sorted(NEIGHBOUR_WEIGHTS)}, the neighbour lists are {[*COVISITATION_LISTS, ALS_LIST]}")
# buy2buy links bought items to bought items: only the session's own carts and orders lead to it.
BUY_SOURCE_LISTS = ("buy2buy",)
# The lists whose weights are also summed from the session's latest items alone (the events at most
# this many from the end): what a shopper looks at now says more than the whole session.
RECENT_ITEM_LISTS = ("clicks", "carts_orders")
RECENT_ITEMS = {"last_item": 1, "last_3_items": 3}
# Per (session, aid): the session's own events with the item and the neighbour weights summed from
# its items; built with the candidates, from the same exploded history, and kept in their table.
# Interactions decay with the time before the session's last event: a cart an hour ago weighs half.
INTERACTION_HALF_LIFE_SECONDS = 3600.0
PAIR_FEATURES = [f"interaction_{event_type}" for event_type in EVENT_TYPES] + [
    *[f"interaction_{event_type}_decayed" for event_type in EVENT_TYPES],
    "interaction_seconds_since",
    "interaction_events_since",
    "covisitation_clicks_weight",
    "covisitation_carts_orders_weight",
    "covisitation_buy2buy_weight",
    "covisitation_clicks_two_hop_weight",
    "als_similarity",
    *[f"{NEIGHBOUR_WEIGHTS[name]}_{suffix}" for name in RECENT_ITEM_LISTS for suffix in RECENT_ITEMS],
]


@dataclass(frozen=True)
class CandidateConfig:
    history: int = 30
    covisitation: int = 40
    als: int = 10
    # 10, not 20: at 1M sessions 20 top sellers cost 16% more candidate rows for +0.0012 ceiling.
    top_sellers: int = 10
    # Top sellers only fill a (session, type) whose history and co-visitation propose fewer than
    # this many items: past K of those, the hand rule never reaches them, and rows proposed by the
    # top sellers alone were a fifth of all candidate rows.
    top_sellers_fill_below: int = K
    max_prefix_events: int = 100


# What every stage builds candidates with: the week's candidates, the training cuts' rows and the
# served model's (it is saved in each bundle).
CANDIDATE_CONFIG = CandidateConfig()


def weighted_history(sessions, max_prefix_events: int):
    """`session, aid, ts, type, recency, position_from_end, last_ts` for the last `max_prefix_events`
    prefix events (recency in (0, 1], last event = 1; position_from_end 0 for the last event;
    last_ts: the session's last event time)."""
    from pyspark.sql import functions as F

    prefix = last_elements("prefix", max_prefix_events)
    exploded = sessions.select("session", prefix.alias("kept")).select(
        "session", F.size("kept").alias("n_kept"), F.try_element_at("kept", F.lit(-1))["ts"].alias("last_ts"),
        F.posexplode("kept").alias("position", "e"),
    )
    fraction = F.when(F.col("n_kept") > 1, F.col("position") / (F.col("n_kept") - 1)).otherwise(F.lit(1.0))
    return exploded.select(
        "session",
        F.col("e.aid").alias("aid"),
        F.col("e.ts").alias("ts"),
        F.col("e.type").alias("type"),
        (F.pow(F.lit(2.0), F.lit(0.1) + F.lit(0.9) * fraction) - F.lit(1.0)).alias("recency"),
        (F.col("n_kept") - 1 - F.col("position")).alias("position_from_end"),
        "last_ts",
    )


def last_elements(column: str, n: int):
    """The last `n` elements of an array column (Spark's slice with a negative start past the
    beginning returns an empty array, hence the explicit start)."""
    from pyspark.sql import functions as F

    return F.slice(column, F.greatest(F.lit(1), F.size(column) - n + 1), F.lit(n))


def neighbour_sources(history):
    """One source row per (session, aid) of the history: its latest recency, its latest recency
    as a cart or order (`buy_recency`, null when the session never bought it) and how many events
    from the end it last occurs (`position_from_end`, 0 for the last event's item)."""
    from pyspark.sql import functions as F

    return history.groupBy("session", "aid").agg(
        F.max("recency").alias("recency"),
        F.max(F.when(F.col("type").isin(*BUY_TYPES), F.col("recency"))).alias("buy_recency"),
        F.min("position_from_end").alias("position_from_end"),
    )


def covisitation_neighbours(covisitation):
    """`list, aid, neighbour, weight` of every co-visitation list (the list is the table's `matrix`)."""
    from pyspark.sql import functions as F

    return covisitation.where(F.col("matrix").isin(*COVISITATION_LISTS)).select(
        F.col("matrix").alias("list"), "aid", "neighbour", "weight")


def similar_item_neighbours(similar_items):
    """`list, aid, neighbour, weight` from ALS similar items (only positive cosine adds evidence)."""
    from pyspark.sql import functions as F

    return similar_items.where(F.col("score") > 0).select(
        F.lit(ALS_LIST).alias("list"), "aid", "neighbour", F.col("score").alias("weight"))


def neighbour_scores(sources, neighbours):
    """Per (session, neighbour), one column per list of NEIGHBOUR_WEIGHTS: the sum over the session's
    source items of recency x (weight / strongest weight of that item in the list), null where none
    of its items lists it. The buy lists start from the items the session bought (`buy_recency`).
    The RECENT_ITEM_LISTS also sum over the session's latest items alone (`{column}_{RECENT_ITEMS}`).

    Every list in one join and one aggregate: per list, a join and an aggregate of its own would
    explode the sessions' items again and leave a row per list for the merge to shuffle."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    relative = neighbours.withColumn("relative", F.col("weight") / F.max("weight").over(Window.partitionBy("list", "aid")))
    recency = F.when(F.col("list").isin(*BUY_SOURCE_LISTS), F.col("buy_recency")).otherwise(F.col("recency"))
    # A neighbour table is top-K per item: broadcast when it fits, so the session side keeps its
    # partitioning by session and the sum below needs no shuffle.
    contributions = sources.join(broadcast_if_small(relative), "aid").select(
        "session", F.col("neighbour").alias("aid"), "list", "position_from_end",
        (recency * F.col("relative")).alias("contribution"))
    recent = [
        F.sum(F.when((F.col("list") == name) & (F.col("position_from_end") < n_events), F.col("contribution"))).alias(
            f"{NEIGHBOUR_WEIGHTS[name]}_{suffix}")
        for name in RECENT_ITEM_LISTS for suffix, n_events in RECENT_ITEMS.items()
    ]
    return contributions.where(F.col("contribution").isNotNull()).groupBy("session", "aid").agg(*[
        F.sum(F.when(F.col("list") == name, F.col("contribution"))).alias(column)
        for name, column in NEIGHBOUR_WEIGHTS.items()
    ], *recent)


def history_pairs(history, limit: int):
    """Per (session, aid) of the history: the interaction features and the history source's score and
    rank (null below the `limit` best: recency x type weight, summed)."""
    from pyspark.sql import functions as F

    type_weight = F.create_map(*[x for t, w in INTERACTION_TYPE_WEIGHTS.items() for x in (F.lit(t), F.lit(w))])
    decay = F.pow(F.lit(0.5), (F.col("last_ts") - F.col("ts")) / F.lit(1000.0 * INTERACTION_HALF_LIFE_SECONDS))
    per_pair = history.groupBy("session", "aid").agg(
        F.sum(F.col("recency") * type_weight[F.col("type")]).alias("_score"),
        *[F.sum((F.col("type") == event_type).cast("int")).alias(f"interaction_{event_type}") for event_type in EVENT_TYPES],
        *[F.sum(F.when(F.col("type") == event_type, decay).otherwise(F.lit(0.0))).alias(f"interaction_{event_type}_decayed")
          for event_type in EVENT_TYPES],
        ((F.max("last_ts") - F.max("ts")) / 1000.0).alias("interaction_seconds_since"),
        F.min("position_from_end").alias("interaction_events_since"),
    )
    return with_source_rank(per_pair, "_score", "history", limit).drop("_score")


def with_source_rank(pairs, score_column: str, source: str, limit: int):
    """`pairs` (per session, aid) with `{source}_score` and `{source}_rank`: the session's `limit`
    best by `score_column` (descending, ties by aid); null for the others and for a null score."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("session").orderBy(F.desc_nulls_last(score_column), F.asc("aid"))
    rank = F.row_number().over(order)
    proposed = F.col(score_column).isNotNull() & (rank <= limit)
    return pairs.withColumn(f"{source}_rank", F.when(proposed, rank)).withColumn(
        f"{source}_score", F.when(F.col(f"{source}_rank").isNotNull(), F.col(score_column)))


def top_seller_pairs(sessions, top_sellers, limit: int):
    """Every session with each of the `limit` top sellers of each type: `session, aid` and
    `top_sellers_{type}_score/_rank` (null where the aid is not among the type's top sellers)."""
    from pyspark.sql import functions as F

    popular = top_sellers.where((F.col("list") == POPULAR) & (F.col("rank") <= limit))
    per_aid = popular.groupBy("aid").agg(*[
        F.max(F.when(F.col("type") == event_type, F.col(column))).alias(f"top_sellers_{event_type}_{column}")
        for event_type in EVENT_TYPES for column in ("score", "rank")
    ])
    return sessions.select("session").crossJoin(F.broadcast(per_aid))


def build_candidates(sessions, covisitation, similar_items, top_sellers, config: CandidateConfig):
    """The union of all sources for `sessions` (`session, prefix`), one row per (session, type, aid),
    with per-source score and rank columns, the hand-rule rank and the session x item features
    (`PAIR_FEATURES`).

    Plan: everything is computed per (session, aid) from the sessions partitioned once by session:
    the history pairs, every neighbour list's weights summed over the session's items in one join
    (ranked into the co-visitation and ALS sources), the top sellers; one shuffle by session merges them
    (`merge_by_keys`) and the per-type rows, their ranks and the hand rule follow without another.
    The pair features come from the same weights, so the features stage does not explode the
    sessions' neighbours again."""
    from pyspark.sql import functions as F

    sessions = partitioned_by_session(sessions)
    history = weighted_history(sessions, config.max_prefix_events)
    neighbours = covisitation_neighbours(covisitation).unionByName(similar_item_neighbours(similar_items))
    weights = neighbour_scores(neighbour_sources(history), neighbours)
    weights = with_source_rank(weights, "covisitation_clicks_weight", "clicks_covisitation", config.covisitation)
    weights = with_source_rank(weights, "als_similarity", "als", config.als)
    pairs = merge_by_keys([
        history_pairs(history, config.history),
        weights,
        top_seller_pairs(sessions, top_sellers, config.top_sellers),
    ], ["session", "aid"])
    # Carts and orders take co-visitation from the carts-orders matrix plus buy2buy neighbours.
    buys_weight = F.when(
        F.col("covisitation_carts_orders_weight").isNotNull() | F.col("covisitation_buy2buy_weight").isNotNull(),
        F.coalesce("covisitation_carts_orders_weight", F.lit(0.0)) + F.coalesce("covisitation_buy2buy_weight", F.lit(0.0)))
    pairs = with_source_rank(pairs.withColumn("_buys_weight", buys_weight), "_buys_weight", "buys_covisitation",
                             config.covisitation)
    # Per type, each source's score and rank: history and ALS propose the same list for every type.
    source_columns = lambda event_type: {  # noqa: E731
        "history": "history",
        "covisitation": "clicks_covisitation" if event_type == "clicks" else "buys_covisitation",
        "als": "als",
        "top_sellers": f"top_sellers_{event_type}",
    }
    per_type = F.explode(F.array(*[
        F.struct(F.lit(event_type).alias("type"), *[
            F.col(f"{column}_{kind}").cast(cast).alias(f"{source}_{kind}")
            for source, column in source_columns(event_type).items() for kind, cast in (("score", "double"), ("rank", "int"))
        ]) for event_type in EVENT_TYPES
    ])).alias("typed")
    # Only pairs that some source proposes become rows: most neighbour weights are below every cut.
    ranks = {f"{column}_rank" for event_type in EVENT_TYPES for column in source_columns(event_type).values()}
    proposed_pairs = pairs.where(F.greatest(*[F.col(rank).isNotNull() for rank in sorted(ranks)]))
    rows = proposed_pairs.select("session", "aid", *PAIR_FEATURES, per_type).select(
        "session", "typed.*", "aid", *PAIR_FEATURES)
    n_sources = sum(F.col(f"{source}_rank").isNotNull().cast("int") for source in SOURCES)
    rows = without_surplus_top_sellers(rows.withColumn("n_sources", n_sources).where(F.col("n_sources") > 0),
                                       config.top_sellers_fill_below)
    return with_baseline_rank(rows).select(
        "session", "type", "aid", *[f"{source}_{kind}" for source in SOURCES for kind in ("score", "rank")],
        "n_sources", "baseline_rank", *PAIR_FEATURES)


def merge_by_keys(frames, keys: list[str]):
    """Outer merge of frames that each hold at most one row per `keys` (session first) and their
    own value columns, partitioned by session (`partitioned_by_session`).

    A union and one aggregate: one shuffle, where a chain of full outer joins shuffles for every
    join. The union is repartitioned explicitly: its claimed partitioning is not trusted
    (BASE_CONF in pipelines/spark.py), and the per-session windows after the merge reuse this one."""
    from functools import reduce

    from pyspark.sql import functions as F

    values = [column for frame in frames for column in frame.columns if column not in keys]
    union = reduce(lambda left, right: left.unionByName(right, allowMissingColumns=True), frames)
    return partitioned_by_session(union).groupBy(*keys).agg(*[F.max(column).alias(column) for column in values])


def partitioned_by_session(frame):
    """`frame` hash-partitioned by session: the windows and per-session aggregates of the candidate
    and feature plans are keyed by session and reuse this partitioning instead of shuffling again.

    Into `spark.sql.shuffle.partitions` partitions, explicitly: adaptive execution coalesces a shuffle
    by the bytes it moves, and sessions are small while the histories and neighbour pairs exploded
    from them are not, so it would put the exploded work into very few tasks."""
    return frame.repartition(int(frame.sparkSession.conf.get("spark.sql.shuffle.partitions")), "session")


def without_surplus_top_sellers(rows, fill_below: int):
    """`rows` less those only the top sellers propose, in the (session, type)s where history and
    co-visitation already propose `fill_below` items or more.

    The hand rule ranks those after them, so its first `fill_below` are unchanged."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ranked_before = (F.col("history_rank").isNotNull() | F.col("covisitation_rank").isNotNull()).cast("int")
    n_ranked_before = F.sum(ranked_before).over(Window.partitionBy("session", "type"))
    only_top_sellers = (F.col("n_sources") == 1) & F.col("top_sellers_rank").isNotNull()
    return rows.withColumn("_n_ranked_before", n_ranked_before).where(
        ~only_top_sellers | (F.col("_n_ranked_before") < fill_below)).drop("_n_ranked_before")


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
    """Recall@k and candidate ceiling per source, the union ceiling, and the hand rule's score.

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
    return report
