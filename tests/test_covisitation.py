"""Co-visitation matrices (pipelines.covisitation): hand-checked cases and a brute-force reference.

Spark jobs dominate the run time, so the hand-checked scenarios that use the default
configuration are built together in one job: each scenario is written with small ids, and
the `default_build` fixture moves it to its own session and aid range and back.
"""

from __future__ import annotations

import random
from collections import defaultdict
from fractions import Fraction

import pytest

from pipelines.covisitation import (
    COVISITATION_COLUMNS,
    COVISITATION_SCHEMA,
    COVISITATION_LISTS,
    MATRICES,
    TWO_HOP,
    CovisitationConfig,
    build_covisitation,
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
SCENARIO_ID_RANGE = 10_000  # scenario ids stay below this


def clicks_weight(ts: int) -> float:
    return 1.0 + 3.0 * (ts - START) / (END - START)


# --- scenarios built with the default configuration ----------------------------------

WINDOW_BOUNDARIES = [
    # 24 h minus 1 ms apart: a pair for clicks and carts_orders; exactly 24 h: no pair
    (1, 10, T, "clicks"), (1, 11, T + DAY - 1, "clicks"),
    (2, 20, T, "clicks"), (2, 21, T + DAY, "clicks"),
    # buy2buy looks 14 days apart
    (3, 30, T, "carts"), (3, 31, T + 14 * DAY - 1, "orders"),
    (4, 40, T, "carts"), (4, 41, T + 14 * DAY, "orders"),
]
TIME_WEIGHT = [
    (1, 10, START, "clicks"), (1, 11, START, "clicks"),
    (2, 20, MIDDLE, "clicks"), (2, 21, MIDDLE, "clicks"),
    (3, 30, END, "clicks"), (3, 31, END, "clicks"),
    # directed pairs: each direction is weighted by its own x.ts
    (4, 40, START + 7 * DAY, "clicks"), (4, 41, START + 7 * DAY + 12 * HOUR, "clicks"),
]
LATEST_OCCURRENCE = [
    # 10's latest event (the cart at +2 h) is close to 11: it sets the weight
    (1, 10, START, "clicks"), (1, 11, START + HOUR, "clicks"), (1, 10, START + 2 * HOUR, "carts"),
    # 20's cart is 29 h after 21, so only its earlier click pairs with 21
    (2, 20, START, "clicks"), (2, 21, START + HOUR, "clicks"), (2, 20, START + 30 * HOUR, "carts"),
]
TYPE_WEIGHTS = [
    (1, 10, T, "clicks"),
    (1, 11, T + 1000, "clicks"),
    (1, 12, T + 2000, "carts"),
    (1, 13, T + 3000, "orders"),
    # a neighbour clicked and carted counts once per type: 1 + 6
    (1, 14, T + 4000, "clicks"), (1, 14, T + 5000, "carts"),
]


def _repeated_pair(session: int, shift_ms: int = 0) -> list[tuple]:
    """The pair (10, 11) three times over in one session, as clicks and as carts."""
    events = [(10, 0, "clicks"), (11, 1000, "clicks"), (10, 2000, "carts"), (11, 3000, "carts"),
              (10, 4000, "clicks"), (11, 5000, "clicks")]
    return [(session, aid, T + shift_ms + offset, event_type) for aid, offset, event_type in events]


PAIR_ONCE = _repeated_pair(1)
PAIR_TWICE = _repeated_pair(1) + _repeated_pair(2, shift_ms=7 * DAY)
SELF_PAIRS = [(1, 10, T, "clicks"), (1, 10, T + 1000, "carts"), (1, 10, T + 2000, "orders"), (2, 20, T, "clicks")]
SELF_PAIRS_AND_ONE_OTHER = SELF_PAIRS + [(1, 11, T + 3000, "orders")]
# 35 distinct items a minute apart: the cap of 30 keeps 105..134
CAP_DISTINCT = [(1, 100 + i, T + i * 60_000, "clicks") for i in range(35)]
# 2, 3 and 4 come before 40 re-clicks of 1 and 30 later clicks: the clicks cap keeps only
# the 30 later clicks, the buy2buy cap still has the cart and the order.
CAP_BUYS = (
    [(1, 2, T, "clicks"), (1, 3, T, "carts"), (1, 4, T + 1, "orders")]
    + [(1, 1, T + i * 60_000, "clicks") for i in range(1, 41)]
    + [(1, 200 + i, T + 3 * DAY + i, "clicks") for i in range(30)]
)
TOP_K_NEIGHBOURS = [17, 3, 25, 11, 8, 30, 1, 22, 14, 5, 40, 2, 33, 9, 28, 7, 19, 36, 4, 12, 21, 6, 31, 15]
TOP_K = [row for s, n in enumerate(TOP_K_NEIGHBOURS) for row in ((s, 1000, T, "clicks"), (s, n, T, "clicks"))] + [
    # 30 and 25 appear in a second session each, so they outweigh the rest
    (100, 1000, T, "clicks"), (100, 30, T, "clicks"), (101, 1000, T, "clicks"), (101, 25, T, "clicks"),
]
BUY2BUY_IGNORES_CLICKS = [
    (1, 10, T, "clicks"), (1, 11, T + 1000, "carts"), (1, 12, T + 2000, "orders"), (1, 13, T + 3000, "clicks")
]
NEIGHBOUR_LISTS = [
    (1, 10, T, "clicks"), (1, 11, T, "carts"), (1, 12, T, "orders"), (2, 10, T, "clicks"), (2, 12, T, "orders")
]

SCENARIOS = {
    "window_boundaries": WINDOW_BOUNDARIES,
    "time_weight": TIME_WEIGHT,
    "latest_occurrence": LATEST_OCCURRENCE,
    "type_weights": TYPE_WEIGHTS,
    "pair_once": PAIR_ONCE,
    "pair_twice": PAIR_TWICE,
    "self_pairs": SELF_PAIRS,
    "self_pairs_and_one_other": SELF_PAIRS_AND_ONE_OTHER,
    "cap_distinct": CAP_DISTINCT,
    "cap_buys": CAP_BUYS,
    "top_k": TOP_K,
    "buy2buy_ignores_clicks": BUY2BUY_IGNORES_CLICKS,
    "neighbour_lists": NEIGHBOUR_LISTS,
}


def collect_matrices(rows) -> dict:
    """{matrix: {aid: [(neighbour, weight, rank), ...] by rank}} of collected covisitation rows."""
    result: dict = {matrix: defaultdict(list) for matrix in COVISITATION_LISTS}
    for row in sorted(rows, key=lambda r: (r.matrix, r.aid, r.rank)):
        result[row.matrix][row.aid].append((row.neighbour, row.weight, row.rank))
    return result


def build(spark, rows, config: CovisitationConfig) -> dict:
    frame = spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA)
    return collect_matrices(build_covisitation(frame, config, START, END).collect())


@pytest.fixture(scope="module")
def default_build(spark):
    """(the cached covisitation frame of every scenario, {scenario: matrices in the scenario's own ids})"""
    from pyspark.sql import Row

    offsets = {name: (index + 1) * SCENARIO_ID_RANGE for index, name in enumerate(SCENARIOS)}
    rows = [
        (session + offsets[name], aid + offsets[name], ts, event_type)
        for name, scenario in SCENARIOS.items()
        for session, aid, ts, event_type in scenario
    ]
    covisitation = build_covisitation(spark.createDataFrame(rows, EVENTS_SPARK_SCHEMA), DEFAULT, START, END).cache()
    by_scenario: dict = {name: [] for name in SCENARIOS}
    for row in covisitation.collect():
        name = list(SCENARIOS)[row.aid // SCENARIO_ID_RANGE - 1]
        offset = offsets[name]
        assert row.neighbour // SCENARIO_ID_RANGE == row.aid // SCENARIO_ID_RANGE, "pair across scenarios"
        by_scenario[name].append(Row(**{**row.asDict(), "aid": row.aid - offset, "neighbour": row.neighbour - offset}))
    yield covisitation, {name: collect_matrices(found) for name, found in by_scenario.items()}
    covisitation.unpersist()


@pytest.fixture(scope="module")
def scenario(default_build):
    _, results = default_build
    return results.__getitem__


def weights(result: dict, matrix: str) -> dict:
    """{(aid, neighbour): weight} of one matrix."""
    return {(aid, n): w for aid, neighbours in result[matrix].items() for n, w, _ in neighbours}


# --- hand-checked cases ----------------------------------------------------------------


def test_schema_and_stacked_matrices(default_build):
    covisitation, results = default_build
    assert tuple(covisitation.columns) == COVISITATION_COLUMNS
    assert covisitation.schema.simpleString() == (
        "struct<matrix:string,aid:bigint,neighbour:bigint,weight:double,rank:int>"
    )
    assert all(results["type_weights"][matrix] for matrix in ("clicks", "carts_orders"))
    assert results["neighbour_lists"]["buy2buy"]


def test_time_windows_are_strict_and_per_matrix(scenario):
    clicks, carts_orders, buy2buy = (weights(scenario("window_boundaries"), m) for m in MATRICES)
    assert set(clicks) == set(carts_orders) == {(10, 11), (11, 10)}
    assert buy2buy == {(30, 31): 1.0, (31, 30): 1.0}


def test_clicks_time_weight_is_linear_in_the_earlier_side_of_the_pair(scenario):
    clicks = weights(scenario("time_weight"), "clicks")
    assert clicks[(10, 11)] == clicks[(11, 10)] == 1.0
    assert clicks[(20, 21)] == 2.5
    assert clicks[(30, 31)] == 4.0
    assert clicks[(40, 41)] == 1.75
    assert clicks[(41, 40)] == pytest.approx(clicks_weight(START + 7 * DAY + 12 * HOUR), abs=1e-12)


def test_clicks_weight_takes_the_latest_occurrence_that_is_within_the_window(scenario):
    clicks = weights(scenario("latest_occurrence"), "clicks")
    assert clicks[(10, 11)] == pytest.approx(clicks_weight(START + 2 * HOUR), abs=1e-12)
    assert clicks[(20, 21)] == pytest.approx(clicks_weight(START), abs=1e-12)
    assert clicks[(21, 20)] == pytest.approx(clicks_weight(START + HOUR), abs=1e-12)


def test_carts_orders_weights_the_neighbours_event_type(spark, scenario):
    carts_orders = weights(scenario("type_weights"), "carts_orders")
    assert {n: carts_orders[(10, n)] for n in (11, 12, 13, 14)} == {11: 1.0, 12: 6.0, 13: 3.0, 14: 7.0}
    assert carts_orders[(14, 10)] == 1.0  # the weight follows the neighbour's type, not the item's

    # Unlisted types weigh 0, and a neighbour that only has zero-weight events is dropped
    custom = CovisitationConfig(type_weights=(("carts", 2.5), ("orders", 10.0)))
    custom_weights = weights(build(spark, TYPE_WEIGHTS, custom), "carts_orders")
    assert {n: w for (aid, n), w in custom_weights.items() if aid == 10} == {12: 2.5, 13: 10.0, 14: 2.5}


def test_a_pair_counts_once_per_session(scenario):
    once, twice = scenario("pair_once"), scenario("pair_twice")
    assert weights(once, "clicks")[(10, 11)] == pytest.approx(clicks_weight(T + 4000), abs=1e-12)
    assert weights(once, "carts_orders")[(10, 11)] == 7.0  # 11 clicked (1) and carted (6)
    assert weights(once, "buy2buy")[(10, 11)] == 1.0
    assert weights(twice, "clicks")[(10, 11)] == pytest.approx(
        clicks_weight(T + 4000) + clicks_weight(T + 7 * DAY + 4000), abs=1e-12
    )
    assert weights(twice, "carts_orders")[(10, 11)] == 14.0
    assert weights(twice, "buy2buy")[(10, 11)] == 2.0


def test_no_self_pairs(scenario):
    assert not any(scenario("self_pairs")[matrix] for matrix in MATRICES)
    with_other = scenario("self_pairs_and_one_other")
    assert all(aid != n for matrix in MATRICES for aid, n in weights(with_other, matrix))
    assert set(weights(with_other, "buy2buy")) == {(10, 11), (11, 10)}


def test_only_the_most_recent_events_of_a_session_enter_the_join(spark, scenario):
    assert {aid for aid, _ in weights(scenario("cap_distinct"), "clicks")} == set(range(105, 135))

    cap_buys = scenario("cap_buys")
    assert {aid for aid, _ in weights(cap_buys, "clicks")} == set(range(200, 230))
    assert set(weights(cap_buys, "buy2buy")) == {(3, 4), (4, 3)}


def test_repeats_collapse_before_the_cap_and_ties_prefer_purchases(spark):
    config = CovisitationConfig(max_events_per_session=4)
    rows = (
        # 40 re-clicks of 1 collapse to one event, so 2 is not pushed out of a cap of 4
        CAP_BUYS[:43]
        # six events at one timestamp: the order, the cart, then the two lowest aids
        + [(2, aid, T, "clicks") for aid in (27, 25, 29, 26)] + [(2, 28, T, "carts"), (2, 24, T, "orders")]
    )
    clicks = weights(build(spark, rows, config), "clicks")
    assert clicks[(2, 1)] == pytest.approx(clicks_weight(T), abs=1e-12)
    assert {aid for aid, _ in clicks if aid >= 20} == {24, 28, 25, 26}


def test_top_k_keeps_the_heaviest_and_breaks_ties_by_neighbour_id(scenario):
    result = scenario("top_k")
    w = clicks_weight(T)
    light = sorted(set(TOP_K_NEIGHBOURS) - {25, 30})[:18]
    for matrix, unit in (("clicks", w), ("carts_orders", 1.0)):
        expected = [(25, 2 * unit), (30, 2 * unit)] + [(n, unit) for n in light]
        assert result[matrix][1000] == [(n, weight, rank) for rank, (n, weight) in enumerate(expected, start=1)]
    assert result["clicks"][30] == [(1000, 2 * w, 1)]
    assert len(result["clicks"][1000]) == DEFAULT.top_k < len(TOP_K_NEIGHBOURS)


def test_two_hop_reaches_the_neighbours_of_neighbours(spark):
    # Item 1 is browsed with 2, and 2 with 3 and (in two sessions) 4: from 1, two steps lead to 4
    # more strongly than to 3, and nothing leads back to 1 itself.
    rows = [(1, 1, START + HOUR, "clicks"), (1, 2, START + HOUR + 60_000, "clicks"),
            (2, 2, START + HOUR, "clicks"), (2, 3, START + HOUR + 60_000, "clicks"),
            (3, 2, START + HOUR, "clicks"), (3, 4, START + HOUR + 60_000, "clicks"),
            (4, 2, START + HOUR, "clicks"), (4, 4, START + HOUR + 60_000, "clicks")]
    result = build(spark, rows, DEFAULT)
    two_hop = {aid: [(n, rank) for n, _, rank in neighbours] for aid, neighbours in result[TWO_HOP].items()}
    assert two_hop[1] == [(4, 1), (3, 2)]
    assert two_hop[3] == [(4, 1), (1, 2)]
    assert 1 not in [n for n, _ in two_hop.get(1, [])]
    weights_from_1 = {n: w for n, w, _ in result[TWO_HOP][1]}
    clicks = weights(result, "clicks")
    strongest_of_2 = max(w for (aid, _), w in clicks.items() if aid == 2)
    assert weights_from_1[4] == pytest.approx(clicks[(2, 4)] / strongest_of_2)  # 1's only neighbour is 2: relative 1


def test_buy2buy_ignores_clicks(scenario):
    result = scenario("buy2buy_ignores_clicks")
    assert weights(result, "buy2buy") == {(11, 12): 1.0, (12, 11): 1.0}
    assert len(weights(result, "clicks")) == 12


def test_lists_follow_rank_and_ties_go_to_the_lower_id(scenario):
    lists = {aid: ([n for n, _, _ in found], [w for _, w, _ in found])
             for aid, found in scenario("neighbour_lists")["carts_orders"].items()}
    assert lists == {
        10: ([11, 12], [6.0, 6.0]),  # 11: one cart (6); 12: two orders (3 + 3); the tie goes to the lower id
        11: ([12, 10], [3.0, 1.0]),
        12: ([11, 10], [6.0, 2.0]),
    }


def test_validation_frame_flags_broken_rows(spark, default_build):
    covisitation, _ = default_build
    checks = ("is_known_matrix", "weight_finite", "weight_positive", "ordered_after_previous")
    good = validation_frame(covisitation).collect()
    assert good and all(all(row[c] for c in checks) and not row.is_self_pair for row in good)
    assert all(row.n_neighbours == row.n_distinct_neighbours == row.n_distinct_ranks == row.max_rank for row in good)

    broken = spark.createDataFrame(
        [
            ("clicks", 1, 1, 3.0, 1),
            ("clicks", 1, 2, 5.0, 2),
            ("clicks", 1, 2, float("inf"), 2),
            ("clicks", 3, 4, float("nan"), 1),
            ("other", 2, 3, 0.0, 1),
        ],
        COVISITATION_SCHEMA,
    )
    flagged = {(row.aid, row.weight): row for row in validation_frame(broken).collect()}
    assert flagged[(1, 3.0)].is_self_pair and flagged[(1, 3.0)].ordered_after_previous
    assert not flagged[(1, 5.0)].ordered_after_previous  # heavier than rank 1
    assert not flagged[(1, float("inf"))].weight_finite
    assert not next(row for row in flagged.values() if row.aid == 3).weight_finite  # NaN
    counts = flagged[(1, 5.0)]
    assert counts.n_neighbours == 3
    assert counts.n_distinct_neighbours == counts.n_distinct_ranks == counts.max_rank == 2
    assert not flagged[(2, 0.0)].is_known_matrix and not flagged[(2, 0.0)].weight_positive


def test_config_is_validated():
    for bad in (
        {"top_k": 0},
        {"type_weights": (("views", 1.0),)},
        {"type_weights": (("carts", -1.0),)},
        {"clicks_time_weight_min": 0.0},
    ):
        with pytest.raises(ValueError):
            CovisitationConfig(**bad)
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
            ((ts, aid, t) for (aid, t), ts in latest.items()), key=lambda e: (-e[0], -TYPE_PRIORITY[e[2]], e[1])
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
            time_weight = Fraction(config.clicks_time_weight_min) + slope * Fraction(ts_x - start, end - start)
            totals["clicks"][pair] += time_weight
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
            if weight == 0:  # only zero-weight neighbour types
                continue
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
        previous_aid = None
        for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 40])):
            revisit = previous_aid is not None and rng.random() < 0.2
            aid = previous_aid if revisit else rng.randrange(n_items)
            event_type = rng.choices(["clicks", "carts", "orders"], [0.75, 0.17, 0.08])[0]
            rows.append((session, aid, ts, event_type))
            previous_aid = aid
            # checkout ties, minutes, hours and days apart: every window boundary gets exercised
            ts = min(ts + rng.choice([0, 0, 30_000, 600_000, 4 * HOUR, 20 * HOUR, 26 * HOUR, 3 * DAY]), end - 1)
    return rows


@pytest.mark.parametrize(
    "config",
    [
        CovisitationConfig(top_k=5, max_events_per_session=12, buy2buy_window_ms=2 * DAY),
        CovisitationConfig(
            top_k=3, clicks_window_ms=6 * HOUR, type_weights=(("clicks", 0.5), ("carts", 0.0), ("orders", 2.25))
        ),
    ],
    ids=["small-cap", "default-cap-odd-weights"],
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
    assert {row for row in got if row[0] in MATRICES} == expected
    got_two_hop = {(aid, neighbour, rank): weight for matrix, aid, neighbour, weight, rank in got if matrix == TWO_HOP}
    expected_two_hop = reference_two_hop(expected, config.top_k)
    assert len(expected_two_hop) > 100
    assert got_two_hop.keys() == expected_two_hop.keys()
    assert all(got_two_hop[key] == pytest.approx(float(weight), rel=1e-12) for key, weight in expected_two_hop.items())


def reference_two_hop(table: set, top_k: int) -> dict:
    """{(aid, neighbour, rank): exact weight} of the two-hop clicks list, path by path."""
    clicks = defaultdict(dict)
    for matrix, aid, neighbour, weight, _ in table:
        if matrix == "clicks":
            clicks[aid][neighbour] = Fraction(weight)
    relative = {aid: {n: w / max(ns.values()) for n, w in ns.items()} for aid, ns in clicks.items()}
    result = {}
    for aid, firsts in relative.items():
        weights = defaultdict(Fraction)
        for via, first in firsts.items():
            for neighbour, second in relative.get(via, {}).items():
                if neighbour != aid:
                    weights[neighbour] += first * second
        ranked = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:top_k]
        result.update({(aid, neighbour, rank): weight for rank, (neighbour, weight) in enumerate(ranked, start=1)})
    return result
