"""The `sessions` stage: every session active in the week, over the history window."""

from __future__ import annotations

from pipelines.lake import EVENTS_TABLE, SESSIONS_TABLE, Lake
from pipelines.sessions import SessionsSummary, build_sessions, summarize_sessions
from pipelines.weeks import Week


def materialize_sessions_week(spark, lake: Lake, week: Week, window: list[Week], max_events: int) -> SessionsSummary:
    """Build week W's sessions from the `events` weeks in `window` and replace W in the lake."""
    if week not in window:
        raise ValueError(f"history window {[w.key for w in window]} must include week {week.key}")
    events_window = lake.read_weeks(spark, EVENTS_TABLE, window).drop("week")
    summaries: list[SessionsSummary] = []

    def summarize(written_sessions) -> dict:
        summaries.append(summarize_sessions(written_sessions))
        return {"week": week.key, "window": [w.key for w in window], "max_events": max_events, **summaries[-1].as_dict()}

    lake.write_partition(build_sessions(events_window, week, max_events), SESSIONS_TABLE, week, stats=summarize)
    return summaries[-1]
