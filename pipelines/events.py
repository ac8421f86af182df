"""`events`: raw OTTO JSONL of one week -> clean `session, aid, ts, type` rows plus a quarantine.

The raw schema is explicit and deliberately loose (ids and timestamps as JSON token text,
each event kept as its own JSON text) so that one bad value never nulls its neighbours:
every line and every event is validated on its own and gets exactly one reason when it
is rejected. Valid events are deduplicated; nothing else is removed, and every removed
row is counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.raw import LINE_MAX_LENGTH_OPTION, RawWeek, skipped_line_bytes
from pipelines.vocabulary import EVENT_TYPES
from pipelines.weeks import Week

LINE_SCHEMA = "session STRING, events ARRAY<STRING>, _corrupt STRING"
EVENT_SCHEMA = "aid STRING, ts STRING, type STRING, _corrupt STRING"
EVENT_COLUMNS = ("session", "aid", "ts", "type")
EVENTS_SPARK_SCHEMA = "session BIGINT, aid BIGINT, ts BIGINT, type STRING"
# `records`: how many records a quarantined row stands for (the events a rejected line held where
# its `events` array could be read, else 1), so the quarantine rate weighs a lost line by its events.
QUARANTINE_COLUMNS = ("reason", "source_file", "session", "event_index", "record", "records")
NON_NEGATIVE_INTEGER = r"^[0-9]+$"
MAX_RECORD_CHARS = 4000
MAX_LINE_BYTES = 1 << 20
WHITESPACE = " \t\r\n\f\v"

# File-level reason: a raw file that cannot be decompressed is quarantined as one row naming its size.
UNREADABLE_FILE = "unreadable_file"
# Line-level reasons: the whole line is quarantined as one row.
BLANK_LINE = "blank_line"  # empty or whitespace only
LINE_TOO_LONG = "line_too_long"  # over `max_line_bytes`: never parsed
MALFORMED_JSON = "malformed_json"  # not a JSON object, or a key repeated at the top level
INVALID_SESSION = "invalid_session"
EMPTY_EVENTS = "empty_events"
# Event-level reasons: only that event is quarantined.
MALFORMED_EVENT = "malformed_event"  # not a JSON object, or a key repeated
INVALID_AID = "invalid_aid"
INVALID_TS = "invalid_ts"
UNKNOWN_TYPE = "unknown_type"
TS_OUTSIDE_WEEK = "ts_outside_week"
QUARANTINE_REASONS = (
    UNREADABLE_FILE, BLANK_LINE, LINE_TOO_LONG, MALFORMED_JSON, INVALID_SESSION, EMPTY_EVENTS,
    MALFORMED_EVENT, INVALID_AID, INVALID_TS, UNKNOWN_TYPE, TS_OUTSIDE_WEEK,
)


# Every parsed record, valid or not (reason null when valid).
RECORD_SCHEMA = (
    "reason STRING, source_file STRING, session STRING, session_id BIGINT, event_index INT, record STRING, "
    "records INT, aid BIGINT, ts BIGINT, type STRING"
)


@dataclass
class ParsedWeek:
    """Lazy frames of one parsed raw week; `summarize` runs the counting actions."""

    week: Week
    events: object  # pyspark DataFrame, deduplicated
    quarantine: object  # pyspark DataFrame, one row per rejected record
    _records: object = field(repr=False)  # every record with its reason (null when valid), persisted

    def release(self) -> None:
        self._records.unpersist()


@dataclass(frozen=True)
class EventsSummary:
    raw_lines: int
    valid_events: int
    events: int
    duplicates_removed: int
    quarantined: int
    quarantine_by_reason: dict[str, int]
    events_by_type: dict[str, int]
    sessions: int
    items: int

    @property
    def records(self) -> int:
        return self.valid_events + self.quarantined

    @property
    def quarantine_rate(self) -> float:
        return self.quarantined / self.records if self.records else 0.0

    def type_shares(self) -> dict[str, float]:
        return {t: (self.events_by_type.get(t, 0) / self.events if self.events else 0.0) for t in EVENT_TYPES}

    def as_dict(self) -> dict:
        return {
            "raw_lines": self.raw_lines,
            "valid_events": self.valid_events,
            "events": self.events,
            "duplicates_removed": self.duplicates_removed,
            "quarantined": self.quarantined,
            "quarantine_rate": self.quarantine_rate,
            "quarantine_by_reason": self.quarantine_by_reason,
            "events_by_type": self.events_by_type,
            "type_shares": self.type_shares(),
            "sessions": self.sessions,
            "items": self.items,
        }


def _strict_long(column):
    """The token text as BIGINT when it is a non-negative integer literal that fits, else null."""
    from pyspark.sql import functions as F

    return F.when(column.rlike(NON_NEGATIVE_INTEGER), column.try_cast("bigint"))


def _has_repeated_key(json_text: str, keys: tuple[str, ...]):
    """True when the object's top level names a key twice (JSON parsers silently keep the last).

    Only text that holds one of `keys` twice is parsed for its key list: a substring search
    is far cheaper than a second JSON parse of every line.
    """
    from pyspark.sql import functions as F

    may_repeat = F.lit(False)
    for key in keys:
        quoted = f"'\"{key}\"'"
        may_repeat = may_repeat | F.expr(
            f"instr({json_text}, {quoted}) > 0 AND locate({quoted}, {json_text}, instr({json_text}, {quoted}) + 1) > 0"
        )
    parsed_keys = F.json_object_keys(json_text)
    return F.when(may_repeat, F.coalesce(F.size(parsed_keys) != F.size(F.array_distinct(parsed_keys)), F.lit(False))).otherwise(False)


def _raw_text(column):
    """Raw text as the quarantine keeps it: bounded, and valid UTF-8 (bad bytes become U+FFFD)."""
    from pyspark.sql import functions as F

    return F.make_valid_utf8(F.substring(column, 1, MAX_RECORD_CHARS))


def _raw_lines(spark, raw: RawWeek):
    """`line, source_file` of the staged files (`source_file` is the staged file's URI). Lines the
    staging scan found too long are skipped by the reader, never held whole."""
    from pyspark.sql import functions as F

    if not raw.files:
        return spark.createDataFrame([], "line STRING, source_file STRING")
    reader = spark.read
    if raw.scanned_max_line_bytes is not None:
        reader = reader.option(LINE_MAX_LENGTH_OPTION, str(skipped_line_bytes(raw.scanned_max_line_bytes)))
    return reader.text([f.path for f in raw.files]).select(
        F.col("value").alias("line"), F.col("_metadata.file_path").alias("source_file")
    )


def _long_line_rows(spark, raw: RawWeek):
    """The quarantine rows of the lines the reader skipped: the first MAX_RECORD_CHARS of each."""
    rows = [
        (LINE_TOO_LONG, Path(f.path).name, None, None, None, found.head.decode("utf-8", "replace")[:MAX_RECORD_CHARS],
         1, None, None, None)
        for f in raw.files for found in f.long_lines
    ]
    return spark.createDataFrame(rows, RECORD_SCHEMA)


def _original_source(raw: RawWeek, staged_uri):
    """The raw file a staged file came from, as the operator named it (only for quarantined rows)."""
    from pyspark.sql import functions as F

    if not raw.files:
        return staged_uri
    sources = F.create_map(*[F.lit(v) for pair in raw.source_of().items() for v in pair])
    return F.coalesce(sources[F.regexp_extract(staged_uri, r"([^/]+)$", 1)], staged_uri)


def parse_raw_week(spark, raw: RawWeek, max_line_bytes: int = MAX_LINE_BYTES) -> ParsedWeek:
    """Lazy parse of a week's staged raw files; call `release` on the result when done with it."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    week = raw.week
    if raw.scanned_max_line_bytes not in (None, max_line_bytes):
        raise ValueError(f"the raw files were scanned for lines over {raw.scanned_max_line_bytes} bytes, "
                         f"not over {max_line_bytes}: stage them with the limit the parse applies")
    lines = _raw_lines(spark, raw)
    within_limit = F.octet_length("line") <= max_line_bytes
    parsed_lines = lines.withColumn(
        "parsed",
        F.when(within_limit, F.from_json("line", LINE_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})),
    ).withColumn("session_id", _strict_long(F.col("parsed.session")))

    line_reason = (
        F.when(F.trim("line", F.lit(WHITESPACE)) == "", F.lit(BLANK_LINE))
        .when(~within_limit, F.lit(LINE_TOO_LONG))
        .when(F.col("parsed").isNull() | F.col("parsed._corrupt").isNotNull() | _has_repeated_key("line", ("session", "events")), F.lit(MALFORMED_JSON))
        .when(F.col("session_id").isNull(), F.lit(INVALID_SESSION))
        .when(F.coalesce(F.size("parsed.events"), F.lit(0)) <= 0, F.lit(EMPTY_EVENTS))
    )
    parsed_lines = parsed_lines.withColumn("line_reason", line_reason)

    held_events = F.size("parsed.events")
    rejected_lines = parsed_lines.where(F.col("line_reason").isNotNull()).select(
        F.col("line_reason").alias("reason"),
        "source_file",
        F.make_valid_utf8(F.col("parsed.session")).alias("session"),
        "session_id",
        F.lit(None).cast("int").alias("event_index"),
        _raw_text("line").alias("record"),
        F.when(held_events > 0, held_events).otherwise(1).alias("records"),
        F.lit(None).cast("bigint").alias("aid"),
        F.lit(None).cast("bigint").alias("ts"),
        F.lit(None).cast("string").alias("type"),
    )

    raw_events = parsed_lines.where(F.col("line_reason").isNull()).select(
        "source_file",
        F.col("parsed.session").alias("session"),
        "session_id",
        F.posexplode("parsed.events").alias("event_index", "record"),
    )
    raw_events = raw_events.withColumn(
        "event", F.from_json("record", EVENT_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
    ).select(
        "source_file",
        "session",
        "session_id",
        "event_index",
        "record",
        "event",
        _strict_long(F.col("event.aid")).alias("aid"),
        _strict_long(F.col("event.ts")).alias("ts"),
        F.col("event.type").alias("type"),
    )
    event_reason = (
        F.when(F.col("event").isNull() | F.col("event._corrupt").isNotNull() | _has_repeated_key("record", ("aid", "ts", "type")), F.lit(MALFORMED_EVENT))
        .when(F.col("aid").isNull(), F.lit(INVALID_AID))
        .when(F.col("ts").isNull(), F.lit(INVALID_TS))
        .when(~F.coalesce(F.col("type").isin(*EVENT_TYPES), F.lit(False)), F.lit(UNKNOWN_TYPE))
        .when((F.col("ts") < week.start_ms) | (F.col("ts") >= week.end_ms), F.lit(TS_OUTSIDE_WEEK))
    )
    checked_events = raw_events.withColumn("reason", event_reason)

    records = rejected_lines.unionByName(
        checked_events.select(
            "reason",
            "source_file",
            F.make_valid_utf8(F.col("session")).alias("session"),
            "session_id",
            "event_index",
            # Valid events need no raw text; dropping it keeps the persisted frame small.
            F.when(F.col("reason").isNotNull(), _raw_text("record")).alias("record"),
            F.lit(1).alias("records"),
            "aid",
            "ts",
            "type",
        )
    )
    if raw.unreadable:
        records = records.unionByName(_unreadable_file_rows(spark, raw))
    if any(f.long_lines for f in raw.files):
        records = records.unionByName(_long_line_rows(spark, raw))
    # Three actions read this frame (quarantine, events, counts): parse the JSON only once.
    records = records.persist(StorageLevel.MEMORY_AND_DISK)

    quarantine = (
        records.where(F.col("reason").isNotNull())
        .withColumn(
            "source_file",
            F.when(F.col("reason") == UNREADABLE_FILE, F.col("source_file")).otherwise(_original_source(raw, F.col("source_file"))),
        )
        .select(*QUARANTINE_COLUMNS)
    )
    events = (
        records.where(F.col("reason").isNull())
        .select(F.col("session_id").alias("session"), "aid", "ts", "type")
        .dropDuplicates(list(EVENT_COLUMNS))
        .sortWithinPartitions("session", "ts")
    )
    return ParsedWeek(week=week, events=events, quarantine=quarantine, _records=records)


def _unreadable_file_rows(spark, raw: RawWeek):
    rows = [
        (UNREADABLE_FILE, f.source, None, None, None, f"{f.error} ({f.bytes} bytes)", 1, None, None, None)
        for f in raw.unreadable
    ]
    return spark.createDataFrame(rows, RECORD_SCHEMA)


def summarize_parsed_week(parsed: ParsedWeek, written_events) -> EventsSummary:
    """Counts for metadata and drift checks; `written_events` is the deduplicated table as stored."""
    from pyspark.sql import functions as F

    reason_counts = {
        row["reason"]: row["records"]
        for row in parsed._records.groupBy(F.coalesce("reason", F.lit("valid")).alias("reason"))
        .agg(F.sum("records").alias("records"))
        .collect()
    }
    valid_events = reason_counts.pop("valid", 0)
    raw_lines = (
        parsed._records.where(
            (F.col("event_index").isNull() & (F.col("reason") != UNREADABLE_FILE)) | (F.col("event_index") == 0)
        ).count()
    )
    type_counts = {row["type"]: row["count"] for row in written_events.groupBy("type").count().collect()}
    totals = written_events.agg(
        F.count(F.lit(1)).alias("events"),
        F.countDistinct("session").alias("sessions"),
        F.countDistinct("aid").alias("items"),
    ).first()
    return EventsSummary(
        raw_lines=raw_lines,
        valid_events=valid_events,
        events=totals["events"],
        duplicates_removed=valid_events - totals["events"],
        quarantined=sum(reason_counts.values()),
        quarantine_by_reason={reason: reason_counts.get(reason, 0) for reason in QUARANTINE_REASONS},
        events_by_type={t: type_counts.get(t, 0) for t in EVENT_TYPES},
        sessions=totals["sessions"],
        items=totals["items"],
    )
