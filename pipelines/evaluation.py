"""The evaluation protocol for week W (see docs/design.md), applied in Spark.

Evaluation sessions are the sessions whose first event falls in W. Each is cut at a
seeded random position, as the official otto-de/recsys-dataset test set does
(`random.randint(1, len(events) - 1)` visible events): the prefix is the input, the events
after the cut give the labels (`clicks`: the next clicked aid, `carts`/`orders`: every aid
carted/ordered after the cut). The cut is a hash of (session, seed), so it is the same on
every run and on every executor without a driver-side random stream.

Training cuts (`split_training_cuts`) are more cuts of the same sessions, at other positions, that
only the ranker trains on: each is a query of its own, in the fold of the session it was cut from.

The labelled rows of W are built from week W-1's sources, fitted on `window_events` through the
end of W-1: no event of a week-W session reaches the features of its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.lake import EVENTS_TABLE, Lake
from pipelines.weeks import Week

EVAL_SESSIONS_TABLE = "eval_sessions"
EVAL_LABELS_TABLE = "eval_labels"
TRAINING_CUTS_TABLE = "training_cuts"
# Hashed query ids and one slot per cut: more would only repeat sessions in the training sample.
MAX_TRAINING_CUTS = 4


@dataclass(frozen=True)
class EvalSplitSummary:
    eval_sessions: int
    prefix_events: int
    hidden_events: int
    sessions_with_clicks: int
    sessions_with_carts: int
    sessions_with_orders: int
    carts_labels: int
    orders_labels: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cut_position(n_events, seed: int, *salts):
    """A Spark column: a cut uniform in 1..n-1, like random.randint(1, n - 1), fixed by the
    session, `seed` and `salts` (each salt draws an independent cut)."""
    from pyspark.sql import functions as F

    hashed = F.xxhash64(F.col("session"), F.lit(seed), *[F.lit(salt) for salt in salts])
    return (F.pmod(hashed, n_events - 1) + 1).cast("int")


def labels_after_cut(hidden: str = "hidden"):
    """The label columns of a cut from its hidden events: `clicks` (the next clicked aid, null if
    none), `carts`, `orders` (every aid carted or ordered after the cut)."""
    from pyspark.sql import functions as F

    hidden_aids = lambda kind: F.array_distinct(  # noqa: E731
        F.transform(F.filter(hidden, lambda e: e["type"] == kind), lambda e: e["aid"])
    )
    return [
        # try_element_at: no click after the cut is null, not an error under ANSI mode.
        F.try_element_at(F.filter(hidden, lambda e: e["type"] == "clicks"), F.lit(1))["aid"].alias("clicks"),
        hidden_aids("carts").alias("carts"),
        hidden_aids("orders").alias("orders"),
    ]


def split_evaluation_sessions(sessions, seed: int):
    """(`eval_sessions`, `eval_labels`) frames from week W's `sessions` table.

    eval_sessions: session, prefix ARRAY<STRUCT<ts, aid, type>>, n_prefix, n_hidden, cut_ts
    eval_labels:   session, clicks BIGINT (null if no click after the cut), carts ARRAY<BIGINT>, orders ARRAY<BIGINT>
    """
    from pyspark.sql import functions as F

    candidates = sessions.where(F.col("started_in_week") & (F.col("n_events") >= 2)).select("session", "history")
    n_events = F.size("history")
    cut = cut_position(n_events, seed)
    split = candidates.select(
        "session",
        F.slice("history", 1, cut).alias("prefix"),
        F.slice("history", cut + 1, n_events - cut).alias("hidden"),
    )
    eval_sessions = split.select(
        "session",
        "prefix",
        F.size("prefix").alias("n_prefix"),
        F.size("hidden").alias("n_hidden"),
        F.element_at("prefix", -1)["ts"].alias("cut_ts"),
    )
    eval_labels = split.select("session", *labels_after_cut())
    return eval_sessions, eval_labels


def split_training_cuts(sessions, seed: int, cuts: int):
    """Training-only queries of week W: up to `cuts` more cuts of each evaluation session, at
    other positions than its evaluation cut, kept where a cart or an order follows the cut (the
    buy targets are where labelled sessions are scarce; clicks have one in nearly every session).

    `session, origin, prefix, clicks, carts, orders`: `session` is the query's own negative id
    (hashed from the origin session and the cut; evaluation sessions are never negative), `origin`
    the evaluation session it was cut from. Nothing here is scored or reported: the ranker trains
    on these queries beside the evaluation cuts, in the fold of their origin session."""
    from pyspark.sql import functions as F

    if not 0 <= cuts <= MAX_TRAINING_CUTS:
        raise ValueError(f"training cuts per session must be within 0..{MAX_TRAINING_CUTS}, not {cuts}")
    started = sessions.where(F.col("started_in_week") & (F.col("n_events") >= 3)).select("session", "history")
    n_events = F.size("history")
    others = F.array_distinct(F.array(*[cut_position(n_events, seed, "training", c) for c in range(1, max(cuts, 1) + 1)]))
    extra = F.array_except(others, F.array(cut_position(n_events, seed)))
    exploded = started.select("session", "history", F.posexplode(extra).alias("slot", "cut"))
    query = -(F.pmod(F.xxhash64(F.col("session"), F.lit(seed), F.lit("training"), F.col("slot")), F.lit(1 << 62)) + 1)
    split = exploded.select(
        query.alias("query"),
        F.col("session").alias("origin"),
        F.slice("history", 1, F.col("cut")).alias("prefix"),
        F.slice("history", F.col("cut") + 1, n_events - F.col("cut")).alias("hidden"),
    )
    labelled = split.select(F.col("query").alias("session"), "origin", "prefix", *labels_after_cut())
    # With no cuts the frame keeps its schema and holds no row.
    return labelled.where(((F.size("carts") > 0) | (F.size("orders") > 0)) & F.lit(cuts > 0))


def summarize_split(eval_sessions, eval_labels) -> EvalSplitSummary:
    from pyspark.sql import functions as F

    sizes = eval_sessions.agg(
        F.count(F.lit(1)).alias("n"), F.sum("n_prefix").alias("prefix"), F.sum("n_hidden").alias("hidden")
    ).first()
    labels = eval_labels.agg(
        F.count("clicks").alias("clicks"),
        F.sum((F.size("carts") > 0).cast("int")).alias("carts"),
        F.sum((F.size("orders") > 0).cast("int")).alias("orders"),
        F.sum(F.size("carts")).alias("cart_labels"),
        F.sum(F.size("orders")).alias("order_labels"),
    ).first()
    return EvalSplitSummary(
        eval_sessions=sizes["n"],
        prefix_events=sizes["prefix"] or 0,
        hidden_events=sizes["hidden"] or 0,
        sessions_with_clicks=labels["clicks"] or 0,
        sessions_with_carts=labels["carts"] or 0,
        sessions_with_orders=labels["orders"] or 0,
        carts_labels=labels["cart_labels"] or 0,
        orders_labels=labels["order_labels"] or 0,
    )


def window_events(spark, lake: Lake, window: list[Week]):
    """What week W's sources are fitted on: every event of the training window ending with W
    (`PipelineConfigResource.training_window`), hidden suffixes of W's evaluation sessions included;
    those sources only ever score week W+1's sessions (see docs/design.md, "One fit per week")."""
    if not window:
        raise ValueError("a training window holds at least its own week")
    return lake.read_weeks(spark, EVENTS_TABLE, window).drop("week")


def warm_up_week_reason(week: Week) -> str:
    """Why the first partition builds no labelled rows: said by every step that skips work for it."""
    return (f"week {week.key} is the first partition (the warm-up week): no week before it has sources to build "
            "its labelled rows from, so it fits and publishes its sources and trains no ranker")


def labels_long(eval_labels):
    """Labels as `session, type, aid` rows (one click at most, every cart and order)."""
    from pyspark.sql import functions as F

    clicks = eval_labels.where(F.col("clicks").isNotNull()).select(
        "session", F.lit("clicks").alias("type"), F.col("clicks").alias("aid")
    )
    carts = eval_labels.select("session", F.lit("carts").alias("type"), F.explode("carts").alias("aid"))
    orders = eval_labels.select("session", F.lit("orders").alias("type"), F.explode("orders").alias("aid"))
    return clicks.unionByName(carts).unionByName(orders)


# An item is active in a window with this many events: what the sources' coverage checks count.
ACTIVE_ITEM_MIN_EVENTS = 5


def active_items(events, min_events: int = ACTIVE_ITEM_MIN_EVENTS, types: tuple[str, ...] | None = None):
    """Items with at least `min_events` events (of `types`, if given) in `events`: the ones a source should cover."""
    from pyspark.sql import functions as F

    selected = events.where(F.col("type").isin(*types)) if types else events
    return selected.groupBy("aid").count().where(F.col("count") >= min_events).select("aid")


def item_coverage(covered_aids, active) -> float:
    """Share of `active` items (a frame with `aid`) that appear in `covered_aids` (a frame with `aid`)."""
    total = active.count()
    if total == 0:
        return 0.0
    return active.join(covered_aids.select("aid").distinct(), "aid", "left_semi").count() / total
