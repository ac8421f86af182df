"""The `events` stage: a week's staged raw files parsed into `events` and the quarantine."""

from __future__ import annotations

from pipelines.events import EventsSummary, MAX_LINE_BYTES, parse_raw_week, summarize_parsed_week
from pipelines.lake import EVENTS_TABLE, QUARANTINE_TABLE, Lake
from pipelines.raw import RawWeek


def materialize_events_week(spark, lake: Lake, raw: RawWeek, max_line_bytes: int = MAX_LINE_BYTES) -> EventsSummary:
    """Parse the week's staged raw files and replace the week in the `events` and quarantine tables."""
    week = raw.week
    parsed = parse_raw_week(spark, raw, max_line_bytes)
    summaries: list[EventsSummary] = []

    def summarize(written_events) -> dict:
        summaries.append(summarize_parsed_week(parsed, written_events))
        return {"week": week.key, **raw.as_metadata(), **summaries[-1].as_dict()}

    try:
        lake.write_partition(parsed.quarantine, QUARANTINE_TABLE, week, num_files=1)
        lake.write_partition(parsed.events, EVENTS_TABLE, week, stats=summarize)
    finally:
        parsed.release()
    return summaries[-1]
