"""Session building over the history window (pipelines.sessions)."""

from __future__ import annotations

import pytest

from pipelines.events import EVENTS_SPARK_SCHEMA
from pipelines.quality import sessions_suite, sessions_validation_frame, validate
from pipelines.sessions import build_sessions, summarize_sessions
from pipelines.weeks import Week

WEEK = Week.parse("2022-08-15", "Europe/Berlin")
BEFORE = WEEK.shift(-2).start_ms + 10_000
IN_WEEK = WEEK.start_ms + 10_000


@pytest.fixture()
def window_events(spark):
    rows = [
        # session 1: began two weeks earlier, active again in W; a tie on ts orders by type then aid
        (1, 100, BEFORE, "clicks"),
        (1, 101, IN_WEEK, "carts"),
        (1, 102, IN_WEEK, "clicks"),
        (1, 101, IN_WEEK + 500, "orders"),
        # session 2: new in W, six events, the cap (4) keeps the last four
        *[(2, 200 + i, IN_WEEK + i * 1000, "clicks") for i in range(6)],
        # session 3: only before W, so not active
        (3, 300, BEFORE, "clicks"),
    ]
    return spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA)


def test_sessions_have_ordered_capped_history_and_stats(window_events):
    rows = {r.session: r for r in build_sessions(window_events, WEEK, max_events=4).collect()}
    assert sorted(rows) == [1, 2]

    first = rows[1]
    assert [(e.aid, e.type) for e in first.history] == [(100, "clicks"), (102, "clicks"), (101, "carts"), (101, "orders")]
    assert (first.n_events, first.n_clicks, first.n_carts, first.n_orders, first.n_unique_aids) == (4, 2, 1, 1, 3)
    assert first.n_events_in_week == 3
    assert first.started_in_week is False
    assert first.first_ts == BEFORE and first.last_ts == IN_WEEK + 500
    assert first.duration_s == pytest.approx((IN_WEEK + 500 - BEFORE) / 1000)

    second = rows[2]
    assert [e.aid for e in second.history] == [202, 203, 204, 205]
    assert second.n_trimmed == 2 and second.n_events == 4
    assert second.started_in_week is True
    assert second.first_ts == IN_WEEK  # window-wide, before the cap


def test_the_cap_applies_before_a_sessions_events_are_collected(spark):
    """A bot's session of many events never becomes one row: the plan ranks each session's events
    newest first and keeps `max_events` of them *below* the aggregate that collects them."""
    bot = spark.createDataFrame([(7, 700 + i % 50, IN_WEEK + i, "clicks") for i in range(5_000)], EVENTS_SPARK_SCHEMA)
    built = build_sessions(bot, WEEK, max_events=4)
    (row,) = built.collect()
    assert [e.ts for e in row.history] == [IN_WEEK + i for i in range(4_996, 5_000)] and row.n_trimmed == 4_996
    plan = built._jdf.queryExecution().optimizedPlan().toString().splitlines()
    collects = [i for i, line in enumerate(plan) if "collect_list" in line]
    caps = [i for i, line in enumerate(plan) if "row_number()" in line]
    cap_filters = [i for i, line in enumerate(plan) if "Filter" in line and "<= 4" in line]
    assert collects and caps and cap_filters, "\n".join(plan)
    # In a plan tree a node's input is printed below it: the cap filter and the ranking feed the collect.
    assert collects[0] < cap_filters[0] < caps[0], "\n".join(plan)


def test_summary_reports_trimming(window_events):
    summary = summarize_sessions(build_sessions(window_events, WEEK, max_events=4))
    assert summary.sessions == 2
    assert summary.trimmed_events == 2 and summary.trimmed_sessions == 1
    assert summary.sessions_started_in_week == 1
    assert summary.max_history == 4


def test_sessions_suite_passes_built_sessions_and_catches_corruption(spark, window_events):
    from pyspark.sql import functions as F

    built = build_sessions(window_events, WEEK, max_events=4)
    assert validate(sessions_validation_frame(built), "sessions_contract", sessions_suite(WEEK, 4)).success

    corrupted = built.withColumn("history", F.reverse("history")).withColumn("n_clicks", F.col("n_clicks") + 1)
    report = validate(sessions_validation_frame(corrupted), "sessions_contract", sessions_suite(WEEK, 4))
    assert not report.success
    failed = {(o.expectation, o.kwargs.get("column") or o.kwargs.get("column_A")) for o in report.failed}
    assert ("expect_column_values_to_be_in_set", "history_sorted") in failed
    assert ("expect_column_pair_values_to_be_equal", "n_events") in failed
