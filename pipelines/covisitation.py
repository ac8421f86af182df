"""`covisitation`: item-to-item co-visitation matrices over a training window, top-K per item.

The three matrices of the best public OTTO solutions (Chris Deotte's "candidate rerank"):

- `clicks`: pairs of events less than `clicks_window_ms` apart, weighted by when they
  happened (linearly from `clicks_time_weight_min` at the window start to
  `clicks_time_weight_max` at its end), so recent co-visits count more.
- `carts_orders`: pairs less than `carts_orders_window_ms` apart, weighted by the type of
  the *neighbour's* event (`type_weights`: a neighbour that was carted says more than
  one that was clicked).
- `buy2buy`: pairs of cart/order events less than `buy2buy_window_ms` apart, weight 1:
  "frequently bought together".

Definitions, applied identically by the tests' brute-force reference:

1. Every matrix reads one event set per session. Exact repeats of (session, aid, type)
   are collapsed to their latest occurrence first: re-clicking an item adds no new
   information to a co-visit, and without the collapse repeats would fill the cap and
   push distinct items out of it. Then only the `max_events_per_session` most recent
   events are kept (ts descending; ties: orders before carts before clicks, then aid
   ascending), so a few very long sessions cannot blow up the self-join.
   `clicks` and `carts_orders` use all event types; `buy2buy` keeps carts and orders
   *before* collapsing and capping (as Deotte does), so a long browsing session does
   not push its purchases out of the cap.
2. A pair (x, y) is two events of one session with x.aid != y.aid and |x.ts - y.ts| <
   the matrix's window. Pairs are directed; both (x, y) and (y, x) exist.
3. Per session a pair is counted once: per (aid_x, aid_y) for `clicks` (with the time
   weight of the qualifying occurrence with the latest x.ts) and `buy2buy`; per
   (aid_x, aid_y, type_y) for `carts_orders`. Weights are summed over sessions; a
   carts_orders pair whose summed weight is 0 (only zero-weight neighbour types) is dropped.
4. Each item keeps its `top_k` neighbours by weight, ties broken by neighbour id
   ascending; `rank` runs 1..k.

The table also holds a derived list, `clicks_two_hop`: the items two steps away in the kept
clicks lists (a -> j -> k, k != a), weighted by the sum over the paths of
(w(a, j) / a's strongest w) x (w(j, k) / j's strongest w), top `top_k` per item, same tie rule.
It reaches the items a shopper browses *after* the session's neighbours, which the one-step
lists miss; the ranker reads it as a feature (no candidate source proposes from it).

How it stays cheap: after collapsing, an item has at most one event per type in a
session, so events are pivoted to one row per (session, aid) holding the three
timestamps. The self-join then yields each (session, aid_x, aid_y) exactly once, and the
per-session dedup of rule 3 becomes plain column arithmetic instead of an aggregation
over every raw pair. Everything before the join is partitioned by session once, so the
join itself needs no further shuffle. The browse pairs (clicks and carts_orders share
them) and the buy pairs are shuffled once, by item, and aggregated and ranked in place.

Where this departs from Deotte's notebook: he does not collapse repeated events before
the cap, and his carts_orders keeps one neighbour type per (session, aid_x, aid_y) (the
first after his sort) where this counts each neighbour type once.

Weights are accumulated as exact integers (pair counts per neighbour type, summed
millisecond offsets) and turned into doubles once per (aid, neighbour): floating-point
sums depend on the order Spark happens to add rows in, and a last-bit difference would
make ties, and therefore the ranking, differ from run to run.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.vocabulary import BUY_TYPES, DAY_MS, EVENT_TYPES, TYPE_ORDER

COVISITATION_TABLE = "covisitation"
MATRICES = ("clicks", "carts_orders", "buy2buy")
TWO_HOP = "clicks_two_hop"
# What the table holds: the counted matrices, then the list derived from the clicks matrix.
COVISITATION_LISTS = (*MATRICES, TWO_HOP)
COVISITATION_COLUMNS = ("matrix", "aid", "neighbour", "weight", "rank")
COVISITATION_SCHEMA = "matrix STRING, aid BIGINT, neighbour BIGINT, weight DOUBLE, rank INT"


@dataclass(frozen=True)
class CovisitationConfig:
    top_k: int = 20  # neighbours kept per item
    max_events_per_session: int = 30  # most recent events kept per session before the self-join
    clicks_window_ms: int = DAY_MS
    carts_orders_window_ms: int = DAY_MS
    buy2buy_window_ms: int = 14 * DAY_MS
    clicks_time_weight_min: float = 1.0  # weight rises linearly from min at window start to max at window end
    clicks_time_weight_max: float = 4.0
    type_weights: tuple[tuple[str, float], ...] = (("clicks", 1.0), ("carts", 6.0), ("orders", 3.0))

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_events_per_session < 2:
            raise ValueError("top_k must be at least 1 and max_events_per_session at least 2")
        if min(self.clicks_window_ms, self.carts_orders_window_ms, self.buy2buy_window_ms) <= 0:
            raise ValueError("co-visitation windows must be positive")
        if not 0 < self.clicks_time_weight_min <= self.clicks_time_weight_max:
            raise ValueError("clicks time weights need 0 < min <= max")
        unknown = {name for name, _ in self.type_weights} - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"type_weights name unknown event types {sorted(unknown)}; known: {EVENT_TYPES}")
        if any(weight < 0 for _, weight in self.type_weights):
            raise ValueError("type_weights must not be negative (0 ignores a neighbour type)")

    def type_weight(self, event_type: str) -> float:
        """Weight of a neighbour event of `event_type` in `carts_orders` (0 when unlisted)."""
        return dict(self.type_weights).get(event_type, 0.0)


def build_covisitation(events, config: CovisitationConfig, window_start_ms: int, window_end_ms: int):
    """The three matrices and their two-hop clicks list stacked in one frame of COVISITATION_SCHEMA
    (lazy; the two-hop list reuses the matrices' shuffle).

    `events`: `session, aid, ts, type` rows of the training window; `window_start_ms` and
    `window_end_ms` anchor the clicks time weight (the weight is min at the start, max at
    the end).
    """
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if window_end_ms <= window_start_ms:
        raise ValueError(f"empty training window: [{window_start_ms}, {window_end_ms})")

    events = events.select("session", "aid", "ts", "type")
    browse_items = _capped_session_items(events, config.max_events_per_session)
    buy_items = _capped_session_items(events.where(F.col("type").isin(*BUY_TYPES)), config.max_events_per_session)
    pairs = _browse_pairs(browse_items, config, window_start_ms).unionByName(
        _buy_pairs(buy_items, config), allowMissingColumns=True
    )

    # Shuffled by item alone: the aggregation by (aid, neighbour) and the ranking by item
    # both reuse this partitioning, so the pair rows cross the network once and the
    # aggregated rows not at all. (A map-side partial aggregation would only merge about a
    # third of the pair rows, as most pairs occur in few sessions.)
    totals = pairs.repartition("aid").groupBy("aid", "neighbour").agg(
        F.count("clicks_offset_ms").alias("clicks_sessions"),
        F.sum("clicks_offset_ms").alias("clicks_offset_ms"),
        *[F.count(f"co_{t}").alias(f"co_{t}") for t in EVENT_TYPES],
        F.count("buy2buy").alias("buy2buy_sessions"),
    )
    span_ms = float(window_end_ms - window_start_ms)
    slope = float(config.clicks_time_weight_max) - float(config.clicks_time_weight_min)
    # Sum of min + slope * offset / span over the sessions, from the exact integer sums.
    clicks_weight = F.col("clicks_sessions") * float(config.clicks_time_weight_min) + F.col(
        "clicks_offset_ms"
    ) * slope / span_ms
    carts_orders_weight = sum(
        (F.col(f"co_{t}") * float(config.type_weight(t)) for t in EVENT_TYPES[1:]),
        F.col(f"co_{EVENT_TYPES[0]}") * float(config.type_weight(EVENT_TYPES[0])),
    )
    matrix_weights = {
        "clicks": (F.col("clicks_sessions") > 0, clicks_weight),
        "carts_orders": (carts_orders_weight > 0, carts_orders_weight),
        "buy2buy": (F.col("buy2buy_sessions") > 0, F.col("buy2buy_sessions").cast("double")),
    }
    stacked = totals.select(
        "aid",
        "neighbour",
        F.inline(F.array(*[_matrix_entry(index, *matrix_weights[name]) for index, name in enumerate(MATRICES)])),
    ).where(F.col("matrix_index").isNotNull())

    # The matrix is ranked as a small integer after the item: sorting on a leading string
    # with three values would leave the sort prefix useless.
    ranking = Window.partitionBy("aid", "matrix_index").orderBy(F.col("weight").desc(), F.col("neighbour").asc())
    matrix_name = F.create_map(*[item for index, name in enumerate(MATRICES) for item in (F.lit(index), F.lit(name))])
    counted = (
        stacked.withColumn("rank", F.row_number().over(ranking))
        .where(F.col("rank") <= config.top_k)
        .select(matrix_name[F.col("matrix_index")].alias("matrix"), "aid", "neighbour", "weight", "rank")
    )
    # Cached: the two-hop list is built from the ranked matrices, and without the cache the union's
    # second branch would recount every pair (about three times the time at 250k sessions). The
    # run's Spark session ends with the run, and the cache with it.
    counted = counted.persist(StorageLevel.MEMORY_AND_DISK)
    return counted.unionByName(two_hop_list(counted, config.top_k))


def two_hop_list(covisitation, top_k: int):
    """The `TWO_HOP` rows of COVISITATION_SCHEMA from the table's clicks matrix (module docstring).

    Each pair's path products are summed in ascending order: a sum in the order Spark happens to
    gather them could differ in the last bit from run to run, and so could the ranking."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    clicks = covisitation.where(F.col("matrix") == "clicks")
    relative = clicks.select(
        "aid", "neighbour", (F.col("weight") / F.max("weight").over(Window.partitionBy("aid"))).alias("relative"))
    first = relative.select("aid", F.col("neighbour").alias("via"), F.col("relative").alias("first"))
    second = relative.select(F.col("aid").alias("via"), "neighbour", F.col("relative").alias("second"))
    paths = first.join(second, "via").where(F.col("aid") != F.col("neighbour"))
    products = paths.groupBy("aid", "neighbour").agg(
        F.array_sort(F.collect_list(F.col("first") * F.col("second"))).alias("products"))
    summed = products.select(
        "aid", "neighbour", F.aggregate("products", F.lit(0.0), lambda total, x: total + x).alias("weight"))
    ranking = Window.partitionBy("aid").orderBy(F.col("weight").desc(), F.col("neighbour").asc())
    return (
        summed.withColumn("rank", F.row_number().over(ranking))
        .where(F.col("rank") <= top_k)
        .select(F.lit(TWO_HOP).alias("matrix"), "aid", "neighbour", "weight", "rank")
    )


def _matrix_entry(matrix_index: int, present, weight):
    from pyspark.sql import functions as F

    entry_type = "struct<matrix_index:tinyint,weight:double>"
    entry = F.struct(F.lit(matrix_index).cast("tinyint").alias("matrix_index"), weight.alias("weight"))
    return F.when(present, entry).otherwise(F.lit(None).cast(entry_type))


def _capped_session_items(events, max_events: int):
    """One row per (session, aid) of the session's capped events: `ts_<type>` is the latest
    ts of that type (null when the type is absent). Partitioned by session."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    # Types as small integers whose order is the cap's tie-break priority: fixed-width keys
    # hash and sort much faster than strings. Unknown types (the events stage admits none)
    # get no code and are dropped.
    code = F.lit(None).cast("tinyint")
    for event_type, priority in TYPE_ORDER.items():
        code = F.when(F.col("type") == event_type, F.lit(priority).cast("tinyint")).otherwise(code)
    coded = events.select("session", "aid", "ts", code.alias("type_code")).where(F.col("type_code").isNotNull())
    # One shuffle by session; the collapse, the cap and the pivot below all group by
    # session (plus more keys), so Spark reuses this partitioning for them and for the join.
    latest = coded.repartition("session").groupBy("session", "aid", "type_code").agg(F.max("ts").alias("ts"))
    recency = Window.partitionBy("session").orderBy(F.col("ts").desc(), F.col("type_code").desc(), F.col("aid"))
    capped = latest.withColumn("recency", F.row_number().over(recency)).where(F.col("recency") <= max_events)
    return capped.groupBy("session", "aid").agg(
        *[F.max(F.when(F.col("type_code") == TYPE_ORDER[t], F.col("ts"))).alias(f"ts_{t}") for t in EVENT_TYPES]
    )


def _session_self_join(items, types: tuple[str, ...]):
    """Every ordered pair of distinct items of a session, with both sides' timestamps."""
    from pyspark.sql import functions as F

    left = items.select("session", "aid", *[F.col(f"ts_{t}").alias(f"x_{t}") for t in types])
    right = items.select(
        "session", F.col("aid").alias("neighbour"), *[F.col(f"ts_{t}").alias(f"y_{t}") for t in types]
    )
    return left.join(right, "session").where(F.col("aid") != F.col("neighbour"))


def _within(a, b, window_ms: int):
    """True when both timestamps exist and are closer than the window; null (= no) otherwise."""
    from pyspark.sql import functions as F

    return F.abs(a - b) < window_ms


def _any(conditions):
    result = conditions[0]
    for condition in conditions[1:]:
        result = result | condition
    return result


def _browse_pairs(items, config: CovisitationConfig, window_start_ms: int):
    """Per (session, aid, neighbour): the clicks time offset and the carts_orders hits.

    `clicks_offset_ms`: latest x.ts with some neighbour event within the clicks window,
    minus the window start (null: no clicks pair). `co_<type>`: 1 when the neighbour's
    event of that type is within the carts_orders window of some event of the item.
    """
    from pyspark.sql import functions as F

    pairs = _session_self_join(items, EVENT_TYPES)
    x = {t: F.col(f"x_{t}") for t in EVENT_TYPES}
    y = {t: F.col(f"y_{t}") for t in EVENT_TYPES}
    # `greatest` skips nulls: the latest of the item's events that has a neighbour event close by.
    clicks_near = {
        tx: _any([_within(x[tx], y[ty], config.clicks_window_ms) for ty in EVENT_TYPES]) for tx in EVENT_TYPES
    }
    latest_clicks_x = F.greatest(*[F.when(clicks_near[tx], x[tx]) for tx in EVENT_TYPES])
    co_hits = {
        ty: F.when(_any([_within(x[tx], y[ty], config.carts_orders_window_ms) for tx in EVENT_TYPES]), F.lit(1))
        for ty in EVENT_TYPES
    }
    result = pairs.select(
        "aid",
        "neighbour",
        (latest_clicks_x - F.lit(window_start_ms)).alias("clicks_offset_ms"),
        *[co_hits[t].alias(f"co_{t}") for t in EVENT_TYPES],
    )
    return result.where(
        F.col("clicks_offset_ms").isNotNull() | _any([F.col(f"co_{t}").isNotNull() for t in EVENT_TYPES])
    )


def _buy_pairs(items, config: CovisitationConfig):
    """Per (session, aid, neighbour) of carted/ordered items: `buy2buy` 1 when some pair of
    their buy events is within the buy2buy window."""
    from pyspark.sql import functions as F

    pairs = _session_self_join(items, BUY_TYPES)
    hit = _any(
        [_within(F.col(f"x_{tx}"), F.col(f"y_{ty}"), config.buy2buy_window_ms) for tx in BUY_TYPES for ty in BUY_TYPES]
    )
    return pairs.where(hit).select("aid", "neighbour", F.lit(1).alias("buy2buy"))


# What the `covisitation` stage builds with.
COVISITATION_CONFIG = CovisitationConfig()


def validation_frame(covisitation):
    """The co-visitation rows plus columns a GE suite can check row by row.

    Per row: `is_known_matrix`, `is_self_pair`, `weight_finite`, `weight_positive`, and
    `ordered_after_previous` (weight not above the previous rank's, and a larger
    neighbour id on equal weight: the documented ranking). Per (matrix, aid), on every
    row of that item: `n_neighbours`, `n_distinct_neighbours`, `n_distinct_ranks` and
    `max_rank` (ranks are exactly 1..n when all four are equal and ranks start at 1).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    item = Window.partitionBy("matrix", "aid")
    by_rank = item.orderBy("rank")
    weight = F.col("weight")
    previous_weight = F.lag("weight").over(by_rank)
    previous_neighbour = F.lag("neighbour").over(by_rank)
    return covisitation.select(
        *COVISITATION_COLUMNS,
        F.col("matrix").isin(*COVISITATION_LISTS).alias("is_known_matrix"),
        (F.col("aid") == F.col("neighbour")).alias("is_self_pair"),
        F.coalesce(~(F.isnan(weight) | (F.abs(weight) == float("inf"))), F.lit(False)).alias("weight_finite"),
        F.coalesce(weight > 0, F.lit(False)).alias("weight_positive"),
        F.coalesce(
            (weight < previous_weight) | ((weight == previous_weight) & (F.col("neighbour") > previous_neighbour)),
            previous_weight.isNull() & (F.col("rank") == 1),
        ).alias("ordered_after_previous"),
        F.count(F.lit(1)).over(item).alias("n_neighbours"),
        F.size(F.collect_set("neighbour").over(item)).alias("n_distinct_neighbours"),
        F.size(F.collect_set("rank").over(item)).alias("n_distinct_ranks"),
        F.max("rank").over(item).alias("max_rank"),
    )
