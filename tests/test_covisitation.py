"""Co-visitation matrices (pipelines.covisitation): hand-checked cases and a brute-force reference."""

from __future__ import annotations

import random
from collections import defaultdict
from fractions import Fraction

import pytest

from pipelines.covisitation import (
    COVISITATION_COLUMNS,
    MATRICES,
    CovisitationConfig,
    build_covisitation,
    neighbour_lists,
    validation_frame,
)
from pipelines.events import EVENTS_SPARK_SCHEMA

HOUR = 3600 * 1000
DAY = 24 * HOUR
START = 1_659_304_800_000  # Monday 2022-08-01 00:00 Europe/Berlin
END = START + 28 * DAY
MIDDLE = START + 14 * DAY
T = START + 7 * DAY  # a quarter into the window: its clicks weight, 1.75, is exact in binary
DEFAULT = CovisitationConfig()


def clicks_weight(ts: int, start: int = START, end: int = END) -> float:
    return 1.0 + 3.0 * (ts - start) / (end - start)


def build(spark, rows, config: CovisitationConfig = DEFAULT, start: int = START, end: int = END) -> dict:
    """{matrix: {aid: [(neighbour, weight, rank), ...] by rank}}"""
    frame = spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA)
    result: dict = {matrix: defaultdict(list) for matrix in MATRICES}
    # Sorted here rather than by Spark: an orderBy would cost a sampling job per call.
    for row in sorted(build_covisitation(frame, config, start, end).collect(), key=lambda r: (r.matrix, r.aid, r.rank)):
        result[row.matrix][row.aid].append((row.neighbour, row.weight, row.rank))
    return result


def weights(result: dict, matrix: str) -> dict:
    """{(aid, neighbour): weight} of one matrix."""
    return {(aid, n): w for aid, neighbours in result[matrix].items() for n, w, _ in neighbours}


def test_schema_and_stacked_matrices(spark):
    frame = spark.createDataFrame([(1, 10, T, "clicks"), (1, 11, T, "carts"), (1, 12, T, "orders")], EVENTS_SPARK_SCHEMA)
    covisitation = build_covisitation(frame, DEFAULT, START, END)
    assert tuple(covisitation.columns) == COVISITATION_COLUMNS
    assert covisitation.schema.simpleString() == (
        "struct<matrix:string,aid:bigint,neighbour:bigint,weight:double,rank:int>"
    )
    assert {row.matrix for row in covisitation.select("matrix").distinct().collect()} == set(MATRICES)


def test_time_windows_are_strict_and_per_matrix(spark):
    rows = [
        # 24 h minus 1 ms apart: a pair for clicks and carts_orders; exactly 24 h: no pair
        (1, 10, T, "clicks"), (1, 11, T + DAY - 1, "clicks"),
        (2, 20, T, "clicks"), (2, 21, T + DAY, "clicks"),
        # buy2buy looks 14 days apart
        (3, 30, T, "carts"), (3, 31, T + 14 * DAY - 1, "orders"),
        (4, 40, T, "carts"), (4, 41, T + 14 * DAY, "orders"),
    ]
    result = build(spark, rows)
    clicks, carts_orders, buy2buy = (weights(result, m) for m in MATRICES)
    assert set(clicks) == set(carts_orders) == {(10, 11), (11, 10)}
    assert buy2buy == {(30, 31): 1.0, (31, 30): 1.0}


def test_clicks_time_weight_is_linear_in_the_earlier_side_of_the_pair(spark):
    rows = [
        (1, 10, START, "clicks"), (1, 11, START, "clicks"),
        (2, 20, MIDDLE, "clicks"), (2, 21, MIDDLE, "clicks"),
        (3, 30, END, "clicks"), (3, 31, END, "clicks"),
        # directed pairs: each direction is weighted by its own x.ts
        (4, 40, START + 7 * DAY, "clicks"), (4, 41, START + 7 * DAY + 12 * HOUR, "clicks"),
    ]
    clicks = weights(build(spark, rows), "clicks")
    assert clicks[(10, 11)] == clicks[(11, 10)] == 1.0
    assert clicks[(20, 21)] == 2.5
    assert clicks[(30, 31)] == 4.0
    assert clicks[(40, 41)] == 1.75
    assert clicks[(41, 40)] == pytest.approx(clicks_weight(START + 7 * DAY + 12 * HOUR), abs=1e-12)


def test_clicks_weight_takes_the_latest_occurrence_that_is_within_the_window(spark):
    rows = [
        # 10's latest event (the cart at +2 h) is close to 11: it sets the weight
        (1, 10, START, "clicks"), (1, 11, START + HOUR, "clicks"), (1, 10, START + 2 * HOUR, "carts"),
        # 20's cart is 29 h after 21, so only its earlier click pairs with 21
        (2, 20, START, "clicks"), (2, 21, START + HOUR, "clicks"), (2, 20, START + 30 * HOUR, "carts"),
    ]
    clicks = weights(build(spark, rows), "clicks")
    assert clicks[(10, 11)] == pytest.approx(clicks_weight(START + 2 * HOUR), abs=1e-12)
    assert clicks[(20, 21)] == pytest.approx(clicks_weight(START), abs=1e-12)
    assert clicks[(21, 20)] == pytest.approx(clicks_weight(START + HOUR), abs=1e-12)


def test_carts_orders_weights_the_neighbours_event_type(spark):
    rows = [
        (1, 10, T, "clicks"),
        (1, 11, T + 1000, "clicks"),
        (1, 12, T + 2000, "carts"),
        (1, 13, T + 3000, "orders"),
        # a neighbour clicked and carted counts once per type: 1 + 6
        (1, 14, T + 4000, "clicks"), (1, 14, T + 5000, "carts"),
    ]
    carts_orders = weights(build(spark, rows), "carts_orders")
    assert {n: carts_orders[(10, n)] for n in (11, 12, 13, 14)} == {11: 1.0, 12: 6.0, 13: 3.0, 14: 7.0}
    assert carts_orders[(14, 10)] == 1.0  # the weight follows the neighbour's type, not the item's

    custom = CovisitationConfig(type_weights=(("clicks", 0.5), ("carts", 2.0), ("orders", 10.0)))
    custom_weights = weights(build(spark, rows, custom), "carts_orders")
    assert {n: custom_weights[(10, n)] for n in (11, 12, 13, 14)} == {11: 0.5, 12: 2.0, 13: 10.0, 14: 2.5}


def test_a_pair_counts_once_per_session(spark):
    one_session = lambda s: [  # noqa: E731 - the same pair four times over, as clicks and as carts
        (s, 10, T, "clicks"), (s, 11, T + 1000, "clicks"), (s, 10, T + 2000, "carts"), (s, 11, T + 3000, "carts"),
        (s, 10, T + 4000, "clicks"), (s, 11, T + 5000, "clicks"),
    ]
    once = build(spark, one_session(1))
    twice = build(spark, one_session(1) + [(s, a, ts + 7 * DAY, t) for s, a, ts, t in one_session(2)])

    assert weights(once, "clicks")[(10, 11)] == pytest.approx(clicks_weight(T + 4000), abs=1e-12)
    assert weights(once, "carts_orders")[(10, 11)] == 7.0  # 11 clicked (1) and carted (6)
    assert weights(once, "buy2buy")[(10, 11)] == 1.0
    assert weights(twice, "clicks")[(10, 11)] == pytest.approx(
        clicks_weight(T + 4000) + clicks_weight(T + 7 * DAY + 4000), abs=1e-12
    )
    assert weights(twice, "carts_orders")[(10, 11)] == 14.0
    assert weights(twice, "buy2buy")[(10, 11)] == 2.0


def test_no_self_pairs(spark):
    rows = [(1, 10, T, "clicks"), (1, 10, T + 1000, "carts"), (1, 10, T + 2000, "orders"), (2, 20, T, "clicks")]
    assert all(not neighbours for matrix in build(spark, rows).values() for neighbours in matrix.values())

    rows += [(1, 11, T + 3000, "orders")]
    result = build(spark, rows)
    assert all(aid != n for matrix in MATRICES for aid, n in weights(result, matrix))
    assert set(weights(result, "buy2buy")) == {(10, 11), (11, 10)}


def test_only_the_most_recent_events_of_a_session_enter_the_join(spark):
    # 35 distinct items a minute apart: the cap of 30 keeps 105..134
    rows = [(1, 100 + i, T + i * 60_000, "clicks") for i in range(35)]
    clicks = weights(build(spark, rows), "clicks")
    assert {aid for aid, _ in clicks} == set(range(105, 135))

    # Repeats of one (aid, type) collapse to the latest before the cap, so 40 re-clicks of 1
    # do not push 2 out; a buy survives the buy2buy cap however much is clicked after it.
    rows = (
        [(2, 2, T, "clicks"), (2, 3, T, "carts"), (2, 4, T + 1, "orders")]
        + [(2, 1, T + i * 60_000, "clicks") for i in range(1, 41)]
        + [(2, 200 + i, T + 3 * DAY + i, "clicks") for i in range(30)]
    )
    result = build(spark, rows)
    assert (3, 4) in weights(result, "buy2buy")
    assert not any(aid in (1, 2, 3, 4) for aid, _ in weights(result, "clicks"))  # only the last 30 clicks
    small = build(spark, rows[:43], CovisitationConfig(max_events_per_session=4))
    assert weights(small, "clicks")[(2, 1)] == pytest.approx(clicks_weight(T), abs=1e-12)


def test_cap_breaks_timestamp_ties_by_type_then_aid(spark):
    # Six events at one timestamp, a cap of 3: the order, then the cart, then the lowest aid
    rows = [(1, aid, T, "clicks") for aid in (7, 5, 9, 6)] + [(1, 8, T, "carts"), (1, 4, T, "orders")]
    result = build(spark, rows, CovisitationConfig(max_events_per_session=3))
    assert {aid for aid, _ in weights(result, "clicks")} == {4, 8, 5}


def test_top_k_keeps_the_heaviest_and_breaks_ties_by_neighbour_id(spark):
    neighbours = [17, 3, 25, 11, 8, 30, 1, 22, 14, 5]
    rows = []
    for session, neighbour in enumerate(neighbours):
        rows += [(session, 1000, T, "clicks"), (session, neighbour, T, "clicks")]
    # 30 and 25 also appear in a second session each, so they outweigh the rest
    rows += [(50, 1000, T, "clicks"), (50, 30, T, "clicks"), (51, 1000, T, "clicks"), (51, 25, T, "clicks")]
    result = build(spark, rows, CovisitationConfig(top_k=5))
    w = clicks_weight(T)
    for matrix, unit in (("clicks", w), ("carts_orders", 1.0)):
        assert result[matrix][1000] == [
            (25, 2 * unit, 1), (30, 2 * unit, 2), (1, unit, 3), (3, unit, 4), (5, unit, 5)
        ]
    assert result["clicks"][30] == [(1000, w * 2, 1)]


def test_buy2buy_ignores_clicks(spark):
    rows = [(1, 10, T, "clicks"), (1, 11, T + 1000, "carts"), (1, 12, T + 2000, "orders"), (1, 13, T + 3000, "clicks")]
    result = build(spark, rows)
    assert weights(result, "buy2buy") == {(11, 12): 1.0, (12, 11): 1.0}
    assert len(weights(result, "clicks")) == 12


def test_neighbour_lists_follow_rank(spark):
    rows = [(1, 10, T, "clicks"), (1, 11, T, "carts"), (1, 12, T, "orders"), (2, 10, T, "clicks"), (2, 12, T, "orders")]
    covisitation = build_covisitation(spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA), DEFAULT, START, END)
    lists = neighbour_lists(covisitation, "carts_orders")
    assert lists.schema.simpleString() == "struct<aid:bigint,recs:array<bigint>,scores:array<double>>"
    by_aid = {row.aid: (row.recs, row.scores) for row in lists.collect()}
    assert by_aid[10] == ([11, 12], [6.0, 6.0])  # 11: one cart (6); 12: two orders (3 + 3); tie -> lower id
    assert by_aid[11] == ([12, 10], [3.0, 1.0])
    assert by_aid[12] == ([11, 10], [6.0, 2.0])
    with pytest.raises(ValueError, match="unknown co-visitation matrix"):
        neighbour_lists(covisitation, "similar")


def test_validation_frame_flags_broken_rows(spark):
    rows = [(1, 10, T, "clicks"), (1, 11, T, "carts"), (1, 12, T, "orders")]
    covisitation = build_covisitation(spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA), DEFAULT, START, END)
    checks = ("is_known_matrix", "weight_finite", "weight_positive", "ordered_after_previous")
    good = validation_frame(covisitation).collect()
    assert good and all(all(row[c] for c in checks) and not row.is_self_pair for row in good)
    assert all(row.n_neighbours == row.n_distinct_neighbours == row.max_rank for row in good)
    assert {(row.matrix, row.n_neighbours) for row in good} == {("clicks", 2), ("carts_orders", 2), ("buy2buy", 1)}

    broken = spark.createDataFrame(
        [
            ("clicks", 1, 1, 3.0, 1),
            ("clicks", 1, 2, 5.0, 2),
            ("clicks", 1, 2, float("inf"), 3),
            ("clicks", 3, 4, float("nan"), 1),
            ("other", 2, 3, 0.0, 1),
        ],
        "matrix STRING, aid BIGINT, neighbour BIGINT, weight DOUBLE, rank INT",
    )
    flagged = {(row.aid, row.rank): row for row in validation_frame(broken).collect()}
    assert flagged[(1, 1)].is_self_pair and flagged[(1, 1)].ordered_after_previous
    assert not flagged[(1, 2)].ordered_after_previous  # heavier than rank 1
    assert not flagged[(1, 3)].weight_finite and not flagged[(3, 1)].weight_finite
    assert flagged[(1, 3)].n_neighbours == flagged[(1, 3)].max_rank == 3
    assert flagged[(1, 3)].n_distinct_neighbours == 2
    assert not flagged[(2, 1)].is_known_matrix and not flagged[(2, 1)].weight_positive


def test_config_is_validated():
    with pytest.raises(ValueError):
        CovisitationConfig(top_k=0)
    with pytest.raises(ValueError):
        CovisitationConfig(type_weights=(("views", 1.0),))
    with pytest.raises(ValueError, match="empty training window"):
        build_covisitation(None, DEFAULT, END, START)


# --- property test against a brute-force reference -------------------------------------

TYPE_PRIORITY = {"orders": 2, "carts": 1, "clicks": 0}


def reference_covisitation(rows, config: CovisitationConfig, start: int, end: int) -> set:
    """The module docstring's definition, event pair by event pair, with exact arithmetic."""

    def capped(events):
        latest: dict = {}
        for aid, ts, event_type in events:
            latest[(aid, event_type)] = max(ts, latest.get((aid, event_type), ts))
        ordered = sorted(
            ((ts, aid, t) for (aid, t), ts in latest.items()), key=lambda e: (-e[0], -TYPE_PRIORITY[e[2]], e[1], e[2])
        )
        return ordered[: config.max_events_per_session]

    sessions = defaultdict(list)
    for session, aid, ts, event_type in rows:
        sessions[session].append((aid, ts, event_type))
    totals = {matrix: defaultdict(Fraction) for matrix in MATRICES}
    slope = Fraction(config.clicks_time_weight_max) - Fraction(config.clicks_time_weight_min)
    for events in sessions.values():
        latest_x: dict = {}
        neighbour_types: set = set()
        browse = capped(events)
        for ts_x, aid_x, _ in browse:
            for ts_y, aid_y, type_y in browse:
                if aid_x == aid_y:
                    continue
                if abs(ts_x - ts_y) < config.clicks_window_ms:
                    latest_x[(aid_x, aid_y)] = max(ts_x, latest_x.get((aid_x, aid_y), ts_x))
                if abs(ts_x - ts_y) < config.carts_orders_window_ms:
                    neighbour_types.add((aid_x, aid_y, type_y))
        for pair, ts_x in latest_x.items():
            totals["clicks"][pair] += Fraction(config.clicks_time_weight_min) + slope * Fraction(ts_x - start, end - start)
        for aid_x, aid_y, type_y in neighbour_types:
            totals["carts_orders"][(aid_x, aid_y)] += Fraction(config.type_weight(type_y))
        buys = capped([e for e in events if e[2] in ("carts", "orders")])
        bought_together = {
            (aid_x, aid_y)
            for ts_x, aid_x, _ in buys
            for ts_y, aid_y, _ in buys
            if aid_x != aid_y and abs(ts_x - ts_y) < config.buy2buy_window_ms
        }
        for pair in bought_together:
            totals["buy2buy"][pair] += 1

    table = set()
    for matrix, pairs in totals.items():
        by_aid = defaultdict(list)
        for (aid, neighbour), weight in pairs.items():
            by_aid[aid].append((-weight, neighbour))
        for aid, neighbours in by_aid.items():
            for rank, (negative_weight, neighbour) in enumerate(sorted(neighbours)[: config.top_k], start=1):
                table.add((matrix, aid, neighbour, float(-negative_weight), rank))
    return table


def random_events(seed: int, n_sessions: int, n_items: int, start: int, end: int) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for session in range(n_sessions):
        ts = rng.randrange(start, end - 3 * DAY)
        for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 40])):
            aid = rng.randrange(n_items) if rng.random() < 0.8 or not rows else rows[-1][1]  # re-visits
            event_type = rng.choices(["clicks", "carts", "orders"], [0.75, 0.17, 0.08])[0]
            rows.append((session, aid, ts, event_type))
            # checkout ties, minutes, hours and days apart: every window boundary gets exercised
            ts += rng.choice([0, 0, 30_000, 600_000, 4 * HOUR, 20 * HOUR, 26 * HOUR, 3 * DAY])
            ts = min(ts, end - 1)
    return rows


@pytest.mark.parametrize(
    "config",
    [
        CovisitationConfig(top_k=5, max_events_per_session=12, buy2buy_window_ms=2 * DAY),
        CovisitationConfig(top_k=3, max_events_per_session=30, clicks_window_ms=6 * HOUR),
    ],
    ids=["small-cap", "default-cap"],
)
def test_matches_brute_force_reference(spark, config):
    # A span of 3 * 2**28 ms makes every clicks weight 1 + offset / 2**28: exactly
    # representable, so the Spark doubles and the exact reference must agree to the bit.
    start = START
    end = start + 3 * 2**28
    rows = random_events(seed=7, n_sessions=400, n_items=60, start=start, end=end)
    assert len(rows) > 3000
    frame = spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA).repartition(3)
    got = {tuple(row) for row in build_covisitation(frame, config, start, end).collect()}
    expected = reference_covisitation(rows, config, start, end)
    assert {row[0] for row in expected} == set(MATRICES)
    assert got == expected
