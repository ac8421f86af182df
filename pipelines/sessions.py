"""`sessions`: every session active in week W with its ordered history across the window.

The history is the session's events over the history window (W and the weeks before it),
ordered by time, capped to its most recent `max_events` (OTTO caps sessions at 500).
Counts describe the kept history; `first_ts`, `duration_s` and `started_in_week` describe
the whole window, so a trimmed session that began before W is not mistaken for a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.vocabulary import TYPE_ORDER
from pipelines.weeks import Week


@dataclass(frozen=True)
class SessionsSummary:
    sessions: int
    sessions_started_in_week: int
    history_events: int
    trimmed_events: int
    trimmed_sessions: int
    max_history: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def build_sessions(events_window, week: Week, max_events: int):
    """`events_window`: `session, aid, ts, type` rows of the window weeks, week W included."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    active = events_window.where((F.col("ts") >= week.start_ms) & (F.col("ts") < week.end_ms)).select(
        "session"
    ).distinct()
    type_rank = F.create_map(*[item for name, rank in TYPE_ORDER.items() for item in (F.lit(name), F.lit(rank))])
    # Ties on ts are common (one checkout orders several items at once): order them by type,
    # then aid, so a session's history is the same on every run.
    history_events = events_window.join(active, "session", "left_semi").select(
        "session", F.struct(F.col("ts"), type_rank[F.col("type")].alias("type_rank"), "aid", "type").alias("event")
    ).repartition("session")
    # The cap applies before anything is collected: a session of millions of events (a bot) is
    # sorted by Spark's spilling sort, and only its `max_events` latest reach a row. The order is
    # the history's (ts, type, aid), newest first. The totals come from a plain aggregate of the
    # same partitioning.
    newest_first = Window.partitionBy("session").orderBy(F.col("event").desc())
    kept_events = history_events.withColumn("from_end", F.row_number().over(newest_first)).where(
        F.col("from_end") <= max_events)
    kept = kept_events.groupBy("session").agg(F.array_sort(F.collect_list("event")).alias("kept"))
    totals = history_events.groupBy("session").agg(
        F.count(F.lit(1)).alias("total"),
        F.min("event.ts").alias("first_ts"),
        F.max("event.ts").alias("last_ts"),
        F.sum(F.when(F.col("event.ts") >= week.start_ms, 1).otherwise(0)).alias("n_events_in_week"),
    )
    sessions = kept.join(totals, "session").select(
        "session",
        F.transform("kept", lambda e: F.struct(e["ts"].alias("ts"), e["aid"].alias("aid"), e["type"].alias("type"))).alias(
            "history"
        ),
        F.greatest(F.col("total") - max_events, F.lit(0)).alias("n_trimmed"),
        "first_ts",
        "last_ts",
        "n_events_in_week",
    )
    count_type = lambda name: F.size(F.filter("history", lambda e: e["type"] == name))  # noqa: E731
    return sessions.select(
        "session",
        "history",
        F.size("history").alias("n_events"),
        count_type("clicks").alias("n_clicks"),
        count_type("carts").alias("n_carts"),
        count_type("orders").alias("n_orders"),
        F.size(F.array_distinct(F.transform("history", lambda e: e["aid"]))).alias("n_unique_aids"),
        F.col("n_events_in_week").cast("int").alias("n_events_in_week"),
        F.col("n_trimmed").cast("int").alias("n_trimmed"),
        "first_ts",
        "last_ts",
        ((F.col("last_ts") - F.col("first_ts")) / 1000.0).alias("duration_s"),
        (F.col("first_ts") >= week.start_ms).alias("started_in_week"),
    )


def summarize_sessions(sessions) -> SessionsSummary:
    from pyspark.sql import functions as F

    row = sessions.agg(
        F.count(F.lit(1)).alias("sessions"),
        F.coalesce(F.sum(F.col("started_in_week").cast("int")), F.lit(0)).alias("started"),
        F.coalesce(F.sum("n_events"), F.lit(0)).alias("history_events"),
        F.coalesce(F.sum("n_trimmed"), F.lit(0)).alias("trimmed"),
        F.coalesce(F.sum((F.col("n_trimmed") > 0).cast("int")), F.lit(0)).alias("trimmed_sessions"),
        F.coalesce(F.max("n_events"), F.lit(0)).alias("max_history"),
    ).first()
    return SessionsSummary(
        sessions=row["sessions"],
        sessions_started_in_week=row["started"],
        history_events=row["history_events"],
        trimmed_events=row["trimmed"],
        trimmed_sessions=row["trimmed_sessions"],
        max_history=row["max_history"],
    )
