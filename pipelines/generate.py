"""Synthetic OTTO-like raw data with structure a recommender can learn (`recsys generate`).

Marginals follow the real OTTO train set (events per session: mean 16.8, median 6, p90 39,
max 500; events per item: heavy tailed; 89.9% clicks, 7.8% carts, 2.35% orders). Behind
them is a small behaviour model, so every stage of the pipeline has something to find:

- Items live in categories, with Zipf popularity inside each category. Every item has a
  few *similar* items (same category) that shoppers move on to, which co-visitation and
  ALS can learn, and complementary *partner* items in the category paired with its own,
  which get carted and ordered together (frequently bought together).
- A session has a current category intent and browses it: similar items of the last
  click, popular items of the category, re-clicks of earlier items, occasionally a switch
  of intent (often to the complementary category). Shoppers come back hours or days later,
  possibly in a later week, and then often re-click what they looked at before.
- Carts only happen on items clicked earlier in the session and orders only on carted
  items; a checkout orders the whole cart at one timestamp.
- Item popularity drifts from week to week (a random walk of log-popularity) and new
  items appear in later weeks, so recency matters.

The simulation is vectorised over sessions: it steps over the event position and updates
every session that is still active at once. Sessions are processed longest first, so the
active sessions at each step are a prefix of the state arrays and need no fancy indexing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import DEFAULT_TIMEZONE
from pipelines.land import staged_layout
from pipelines.vocabulary import EVENT_TYPES
from pipelines.weeks import Week

CLICK, CART, ORDER = 0, 1, 2  # positions in EVENT_TYPES

# Session length: a discretised lognormal with OTTO's median and spread.
SESSION_LENGTH_MEDIAN = 6.0
SESSION_LENGTH_SIGMA = 1.49  # slightly above OTTO's, as returns after the end cut sessions
MIN_SESSION_EVENTS = 2
MAX_SESSION_EVENTS = 500

# Catalogue. OTTO has 117 events per item on average. The catalogue is sized from the planned
# events; the factor makes up for events cut off at the end of the data and for the few items
# nobody ever sees (which are not counted, just as they do not exist in OTTO's data).
TARGET_EVENTS_PER_ITEM = 117.0
CATALOGUE_SIZE_FACTOR = 0.97
MIN_ITEMS = 40
ITEMS_PER_CATEGORY = 400
CATEGORY_SIZE_SIGMA = 0.8  # lognormal spread of category sizes
CATEGORY_TRAFFIC_SIGMA = 0.6  # lognormal spread of traffic per item between categories
ZIPF_EXPONENT = 1.35  # popularity ~ 1 / (rank + offset) ** exponent inside a category
ZIPF_RANK_OFFSET = 2.0  # Zipf-Mandelbrot: tames the very top without thinning the tail
SIMILAR_ITEMS = 4
SIMILAR_RANK_RADIUS = 12  # similar items are close in popularity rank: a shared "sub-range"
SIMILAR_CHOICE = np.array([0.4, 0.3, 0.2, 0.1])  # which similar item a shopper moves to
PARTNER_ITEMS = 2
PARTNER_POPULARITY_POWER = 0.5  # partners are biased to popular items, but only mildly

# Weekly drift of popularity and new items.
WEEKLY_LOG_POPULARITY_DRIFT = 0.35
NEW_ITEM_SHARE_PER_WEEK = 0.05
NEW_ITEM_LAUNCH_BOOST = 0.7  # extra log-popularity from the week an item appears

# Browsing behaviour, per event after the first.
P_REPEAT_CLICK = 0.22
P_REPEAT_CLICK_AFTER_RETURN = 0.5
P_SIMILAR_CLICK = 0.40
P_INTENT_SWITCH = 0.06
P_INTENT_SWITCH_ON_RETURN = 0.4
P_SWITCH_TO_COMPLEMENT = 0.35
P_CART = 0.073
P_CART_AFTER_PARTNER_CLICK = 0.45
P_CART_PREVIOUS_ITEM = 0.75  # else an item clicked earlier in the session
P_PARTNER_SUGGESTION = 0.5  # after a cart, the next click goes to a partner item
P_CHECKOUT = 0.017  # per event while the cart holds items not yet ordered
CART_SLOTS = 8  # the oldest unordered cart is forgotten when a ninth arrives

# Gaps between events. Checkout orders share one timestamp (gap 0).
SHORT_GAP_MEDIAN_S = 25.0
SHORT_GAP_SIGMA = 1.3
P_HOURS_GAP = 0.025
HOURS_GAP_MEDIAN_S = 2.5 * 3600
HOURS_GAP_SIGMA = 0.8
P_DAYS_GAP = 0.008
DAYS_GAP_MEDIAN_S = 2.0 * 86400
DAYS_GAP_SIGMA = 0.7

# When sessions start, local time: more in the evening and on Sundays and Mondays.
HOUR_WEIGHTS = np.array(
    [0.30, 0.18, 0.12, 0.10, 0.10, 0.15, 0.30, 0.50, 0.70, 0.80, 0.90, 0.95,
     1.00, 1.00, 0.95, 0.95, 1.00, 1.05, 1.15, 1.30, 1.40, 1.35, 1.10, 0.70]
)
WEEKDAY_WEIGHTS = np.array([1.05, 1.00, 0.97, 0.95, 0.90, 0.88, 1.10])

# Events serialised per batch: bounds the memory of the JSON text (about 50 bytes an event).
WRITE_BATCH_EVENTS = 1_000_000


def generate_raw(
    out_dir: str | Path,
    n_sessions: int,
    n_weeks: int,
    start: str,
    seed: int,
    timezone: str = DEFAULT_TIMEZONE,
    files_per_week: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write `n_sessions` synthetic sessions over `n_weeks` weeks from Monday `start`.

    Layout: `<out_dir>/week=YYYY-MM-DD/part-NNNNN.jsonl` (`files_per_week` parts, session
    `s` in part `s % files_per_week`), one line per (session, week) with that week's events
    sorted by ts, exactly like the landed OTTO data. Session ids are 0..n_sessions-1 in
    order of their first event. The same arguments always give byte-identical files; the
    previous `week=*` folders of `out_dir` are replaced.

    Returns {"sessions", "events", "weeks": {week key: events}, "types": {type: events},
    "items": distinct aids, "seconds": wall time}. `progress(events_written, events_total)` is called
    after every batch written.
    """
    if n_sessions < 1 or n_weeks < 1 or files_per_week < 1:
        raise ValueError("n_sessions, n_weeks and files_per_week must all be at least 1")
    began = time.perf_counter()
    weeks = [Week.parse(start, timezone).shift(offset) for offset in range(n_weeks)]
    week_bounds_ms = np.array([week.start_ms for week in weeks] + [weeks[-1].end_ms], dtype=np.int64)
    length_rng, catalogue_rng, start_rng, behaviour_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(4)
    )

    lengths = _session_lengths(length_rng, n_sessions)
    n_items = max(MIN_ITEMS, int(round(lengths.sum() / TARGET_EVENTS_PER_ITEM * CATALOGUE_SIZE_FACTOR)))
    catalogue = _Catalogue.build(catalogue_rng, n_items, n_weeks)
    start_ms = _session_starts(start_rng, n_sessions, weeks)
    events = _simulate(behaviour_rng, lengths, start_ms, catalogue, week_bounds_ms)

    with staged_layout(out_dir) as staging:
        week_events = _write_layout(staging, events, weeks, week_bounds_ms, files_per_week, progress)

    type_counts = np.bincount(events.type, minlength=len(EVENT_TYPES))
    return {
        "sessions": n_sessions,
        "events": int(len(events.aid)),
        "weeks": {week.key: int(count) for week, count in zip(weeks, week_events)},
        "types": {name: int(count) for name, count in zip(EVENT_TYPES, type_counts)},
        "items": int(np.count_nonzero(np.bincount(events.aid))),
        "seconds": round(time.perf_counter() - began, 3),
    }


def _session_lengths(rng: np.random.Generator, n_sessions: int) -> np.ndarray:
    raw = rng.lognormal(np.log(SESSION_LENGTH_MEDIAN), SESSION_LENGTH_SIGMA, n_sessions)
    return np.clip(np.rint(raw), MIN_SESSION_EVENTS, MAX_SESSION_EVENTS).astype(np.int64)


@dataclass
class _Catalogue:
    """Items are numbered category by category, most popular first; `aid_of_item` hides
    that order behind a random permutation, as real aids carry no meaning."""

    category_of_item: np.ndarray  # (items,)
    first_item: np.ndarray  # (categories,) first item of each category
    last_item: np.ndarray  # (categories,) last item, inclusive
    complement: np.ndarray  # (categories,) the complementary category
    similar: np.ndarray  # (items, SIMILAR_ITEMS) same category
    partners: np.ndarray  # (items, PARTNER_ITEMS) in the complementary category
    release_week: np.ndarray  # (items,) first week the item can be seen
    popularity_cdf: np.ndarray  # (weeks * items,) week w's normalised CDF, shifted by w
    category_cdf_low: np.ndarray  # (weeks, categories) CDF just before the category
    category_mass: np.ndarray  # (weeks, categories) the category's share of the week
    aid_of_item: np.ndarray  # (items,)

    @classmethod
    def build(cls, rng: np.random.Generator, n_items: int, n_weeks: int) -> "_Catalogue":
        n_categories = max(2, int(round(n_items / ITEMS_PER_CATEGORY)))
        size_weights = rng.lognormal(0.0, CATEGORY_SIZE_SIGMA, n_categories)
        sizes = 1 + rng.multinomial(n_items - n_categories, size_weights / size_weights.sum())
        first_item = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        last_item = first_item + sizes - 1
        category_of_item = np.repeat(np.arange(n_categories), sizes)
        rank = np.arange(n_items) - first_item[category_of_item]
        size_of_item = sizes[category_of_item]

        zipf = 1.0 / (rank + ZIPF_RANK_OFFSET) ** ZIPF_EXPONENT
        zipf_total = np.bincount(category_of_item, weights=zipf)
        category_traffic = sizes * rng.lognormal(0.0, CATEGORY_TRAFFIC_SIGMA, n_categories)
        base_popularity = category_traffic[category_of_item] * zipf / zipf_total[category_of_item]

        # Pair categories up so that complementarity is mutual (phone <-> phone case).
        shuffled = rng.permutation(n_categories)
        complement = np.empty(n_categories, dtype=np.int64)
        complement[shuffled[0::2][: n_categories // 2]] = shuffled[1::2]
        complement[shuffled[1::2]] = shuffled[0::2][: n_categories // 2]
        if n_categories % 2:
            complement[shuffled[-1]] = shuffled[0]

        offsets = rng.integers(1, SIMILAR_RANK_RADIUS + 1, (n_items, SIMILAR_ITEMS))
        offsets *= rng.choice([-1, 1], (n_items, SIMILAR_ITEMS))
        similar_rank = (rank[:, None] + offsets) % size_of_item[:, None]
        similar = first_item[category_of_item][:, None] + similar_rank

        partner_category = complement[category_of_item]
        partner_weights = base_popularity**PARTNER_POPULARITY_POWER
        partners = _sample_in_categories(
            rng, np.cumsum(partner_weights), first_item, last_item, np.repeat(partner_category, PARTNER_ITEMS)
        ).reshape(n_items, PARTNER_ITEMS)

        release_week = np.zeros(n_items, dtype=np.int64)
        if n_weeks > 1:
            # Each later week adds a slice of new items; a category's best seller exists from the start.
            draw = rng.random(n_items)
            release_week = 1 + np.floor(draw / NEW_ITEM_SHARE_PER_WEEK).astype(np.int64)
            release_week[release_week >= n_weeks] = 0
            release_week[rank == 0] = 0

        steps = rng.normal(0.0, WEEKLY_LOG_POPULARITY_DRIFT, (n_weeks, n_items))
        steps[0] = 0.0
        log_drift = np.cumsum(steps, axis=0)
        week = np.arange(n_weeks)[:, None]
        log_drift += np.where(week >= release_week, NEW_ITEM_LAUNCH_BOOST * (release_week > 0), 0.0)
        weekly_popularity = base_popularity * np.exp(log_drift) * (week >= release_week)

        cdf = np.cumsum(weekly_popularity, axis=1)
        cdf /= cdf[:, -1:]
        before_category = np.where(first_item > 0, cdf[:, np.maximum(first_item - 1, 0)], 0.0)
        category_mass = cdf[:, last_item] - before_category
        popularity_cdf = (cdf + week).ravel()

        return cls(
            category_of_item=category_of_item,
            first_item=first_item,
            last_item=last_item,
            complement=complement,
            similar=similar,
            partners=partners,
            release_week=release_week,
            popularity_cdf=popularity_cdf,
            category_cdf_low=before_category,
            category_mass=category_mass,
            aid_of_item=rng.permutation(n_items),
        )

    @property
    def n_items(self) -> int:
        return len(self.category_of_item)

    def popular_item(self, rng: np.random.Generator, week: np.ndarray) -> np.ndarray:
        """An item drawn by its popularity in `week` across the whole catalogue."""
        target = week + rng.random(len(week))
        return self._locate(target, week)

    def popular_in_category(self, rng: np.random.Generator, category: np.ndarray, week: np.ndarray) -> np.ndarray:
        """An item of `category` drawn by its popularity in `week`."""
        low = self.category_cdf_low[week, category]
        target = week + low + rng.random(len(week)) * self.category_mass[week, category]
        return np.clip(self._locate(target, week), self.first_item[category], self.last_item[category])

    def _locate(self, target: np.ndarray, week: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self.popularity_cdf, target, side="right") - week * self.n_items
        return np.clip(position, 0, self.n_items - 1)


def _sample_in_categories(
    rng: np.random.Generator, cdf: np.ndarray, first_item: np.ndarray, last_item: np.ndarray, category: np.ndarray
) -> np.ndarray:
    """Draw one item per entry of `category`, proportionally to the weights behind `cdf`."""
    low = np.where(first_item[category] > 0, cdf[np.maximum(first_item[category] - 1, 0)], 0.0)
    high = cdf[last_item[category]]
    target = low + rng.random(len(category)) * (high - low)
    return np.clip(np.searchsorted(cdf, target, side="right"), first_item[category], last_item[category])


def _session_starts(rng: np.random.Generator, n_sessions: int, weeks: list[Week]) -> np.ndarray:
    """Start times in ms, weighted by local weekday and hour; zoneinfo turns each local hour
    into UTC, so DST weeks are handled."""
    zone = ZoneInfo(weeks[0].timezone)
    local_hours = [
        dt.datetime.combine(week.monday + dt.timedelta(days=day), dt.time(hour), zone)
        for week in weeks
        for day in range(7)
        for hour in range(24)
    ]
    hour_start_ms = np.array([int(moment.timestamp() * 1000) for moment in local_hours], dtype=np.int64)
    weights = np.tile(np.outer(WEEKDAY_WEIGHTS, HOUR_WEIGHTS).ravel(), len(weeks))
    hour_slot = rng.choice(len(hour_start_ms), n_sessions, p=weights / weights.sum())
    return hour_start_ms[hour_slot] + rng.integers(0, 3_600_000, n_sessions)


@dataclass
class _Events:
    """All events, grouped by session in session-id order, each session sorted by ts."""

    session: np.ndarray  # int64
    aid: np.ndarray  # int64
    ts: np.ndarray  # int64 ms
    type: np.ndarray  # int8 index into EVENT_TYPES


def _simulate(
    rng: np.random.Generator,
    lengths: np.ndarray,
    start_ms: np.ndarray,
    catalogue: _Catalogue,
    week_bounds_ms: np.ndarray,
) -> _Events:
    # Longest sessions first: at step t the active sessions are exactly the first
    # `active_at[t]` rows, so all state updates work on cheap prefix views.
    by_length = np.argsort(-lengths, kind="stable")
    lengths = lengths[by_length]
    start_ms = start_ms[by_length]
    n_sessions = len(lengths)
    first_event = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n_events = int(lengths.sum())
    active_at = np.searchsorted(-lengths, -np.arange(int(lengths[0])), side="left")
    horizon_end_ms = int(week_bounds_ms[-1])
    last_week = len(week_bounds_ms) - 2

    def week_of(ts: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(week_bounds_ms, ts, side="right") - 1, 0, last_week)

    event_item = np.empty(n_events, dtype=np.int32)
    event_ts = np.empty(n_events, dtype=np.int64)
    event_type = np.empty(n_events, dtype=np.int8)

    # Per-session state.
    now_ms = start_ms.astype(np.int64)
    first_item = catalogue.popular_item(rng, week_of(now_ms))
    intent = catalogue.category_of_item[first_item]
    last_click = first_item.copy()
    previous_item = first_item.copy()
    partner_pending = np.full(n_sessions, -1, dtype=np.int64)
    after_partner_click = np.zeros(n_sessions, dtype=bool)
    cart_slots = np.zeros((n_sessions, CART_SLOTS), dtype=np.int64)
    carts_added = np.zeros(n_sessions, dtype=np.int64)
    carts_closed = np.zeros(n_sessions, dtype=np.int64)  # ordered or forgotten
    checkout_left = np.zeros(n_sessions, dtype=np.int64)
    departed = np.zeros(n_sessions, dtype=bool)  # came back after the data ends
    kept_length = lengths.copy()  # events before departing; the rest is simulated, then dropped

    event_item[first_event] = first_item
    event_ts[first_event] = now_ms
    event_type[first_event] = CLICK

    for step in range(1, len(active_at)):
        active = int(active_at[step])
        in_checkout = checkout_left[:active] > 0

        # Time: short gaps, sometimes a return hours or days later, nothing within a checkout.
        gap_ms = rng.lognormal(np.log(SHORT_GAP_MEDIAN_S), SHORT_GAP_SIGMA, active) * 1000.0
        gap_kind = rng.random(active)
        hours = np.flatnonzero((gap_kind < P_HOURS_GAP) & ~in_checkout)
        days = np.flatnonzero((gap_kind >= P_HOURS_GAP) & (gap_kind < P_HOURS_GAP + P_DAYS_GAP) & ~in_checkout)
        long_gap_ms = gap_ms.copy()
        long_gap_ms[hours] = rng.lognormal(np.log(HOURS_GAP_MEDIAN_S), HOURS_GAP_SIGMA, len(hours)) * 1000.0
        long_gap_ms[days] = rng.lognormal(np.log(DAYS_GAP_MEDIAN_S), DAYS_GAP_SIGMA, len(days)) * 1000.0
        comes_back = np.zeros(active, dtype=bool)
        comes_back[hours] = True
        comes_back[days] = True
        # A return after the data ends is cut off, as in OTTO's train set: the session's
        # remaining events are dropped, but never below the minimum session length.
        beyond_end = now_ms[:active] + long_gap_ms >= horizon_end_ms
        departed[:active] |= comes_back & beyond_end & (step >= MIN_SESSION_EVENTS)
        kept_length[:active] -= departed[:active]
        returned = comes_back & ~beyond_end
        gap_ms = np.where(returned, long_gap_ms, gap_ms)
        gap_ms[in_checkout] = 0.0
        now_ms[:active] += gap_ms.astype(np.int64)
        week = week_of(now_ms[:active])
        partner_pending[:active][returned] = -1

        # What happens: continue or start a checkout, put something in the cart, or click.
        has_open_cart = carts_added[:active] > carts_closed[:active]
        starts_checkout = ~in_checkout & has_open_cart & (rng.random(active) < P_CHECKOUT)
        ordering = in_checkout | starts_checkout
        cart_probability = np.where(after_partner_click[:active], P_CART_AFTER_PARTNER_CLICK, P_CART)
        carting = ~ordering & (rng.random(active) < cart_probability)
        clicking = ~(ordering | carting)
        item = np.empty(active, dtype=np.int64)

        opening = np.flatnonzero(starts_checkout)
        checkout_left[opening] = carts_added[opening] - carts_closed[opening]
        order_rows = np.flatnonzero(ordering)
        item[order_rows] = cart_slots[order_rows, carts_closed[order_rows] % CART_SLOTS]
        carts_closed[order_rows] += 1
        checkout_left[order_rows] -= 1

        cart_rows = np.flatnonzero(carting)
        item[cart_rows] = _cart_choice(rng, cart_rows, step, previous_item, event_item, first_event)
        _add_to_cart(cart_rows, item[cart_rows], cart_slots, carts_added, carts_closed)
        suggests = cart_rows[rng.random(len(cart_rows)) < P_PARTNER_SUGGESTION]
        partner_pending[suggests] = catalogue.partners[item[suggests], rng.integers(0, PARTNER_ITEMS, len(suggests))]

        click_rows = np.flatnonzero(clicking)
        item[click_rows], went_to_partner = _click_choice(
            rng, click_rows, step, week, returned, catalogue,
            intent, last_click, partner_pending, event_item, first_event,
        )
        last_click[click_rows] = item[click_rows]
        after_partner_click[:active] = False
        after_partner_click[click_rows[went_to_partner]] = True

        previous_item[:active] = item
        position = first_event[:active] + step
        event_item[position] = item
        event_ts[position] = now_ms[:active]
        event_type[position] = np.where(ordering, ORDER, np.where(carting, CART, CLICK))

    last_kept_ms = event_ts[first_event + kept_length - 1]
    overflowing = np.flatnonzero(last_kept_ms >= horizon_end_ms)
    _fit_into_horizon(
        event_ts, first_event[overflowing], kept_length[overflowing], start_ms[overflowing], horizon_end_ms
    )
    return _in_session_id_order(event_item, event_ts, event_type, first_event, kept_length, catalogue.aid_of_item)


def _cart_choice(
    rng: np.random.Generator,
    rows: np.ndarray,
    step: int,
    previous_item: np.ndarray,
    event_item: np.ndarray,
    first_event: np.ndarray,
) -> np.ndarray:
    """Mostly the item just looked at, else any earlier item: every earlier event's item was
    clicked before (carts and orders only repeat clicked items), so the rule holds."""
    earlier = event_item[first_event[rows] + rng.integers(0, step, len(rows))]
    return np.where(rng.random(len(rows)) < P_CART_PREVIOUS_ITEM, previous_item[rows], earlier)


def _add_to_cart(
    rows: np.ndarray, items: np.ndarray, cart_slots: np.ndarray, carts_added: np.ndarray, carts_closed: np.ndarray
) -> None:
    # Carting the item that is already the newest open cart entry again does not add a line
    # to the order, which keeps checkouts free of duplicate orders.
    newest = cart_slots[rows, (carts_added[rows] - 1) % CART_SLOTS]
    repeated = (carts_added[rows] > carts_closed[rows]) & (newest == items)
    rows, items = rows[~repeated], items[~repeated]
    cart_slots[rows, carts_added[rows] % CART_SLOTS] = items
    carts_added[rows] += 1
    carts_closed[rows] = np.maximum(carts_closed[rows], carts_added[rows] - CART_SLOTS)


def _click_choice(
    rng: np.random.Generator,
    rows: np.ndarray,
    step: int,
    week: np.ndarray,
    returned: np.ndarray,
    catalogue: _Catalogue,
    intent: np.ndarray,
    last_click: np.ndarray,
    partner_pending: np.ndarray,
    event_item: np.ndarray,
    first_event: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The next clicked item for each row, and which rows followed a partner suggestion.

    Updates `intent` where a session switches and consumes the rows' partner suggestions.
    """
    week = week[rows]
    returned = returned[rows]
    # Default: a popular item of the current intent.
    choice = catalogue.popular_in_category(rng, intent[rows], week)

    mode = rng.random(len(rows))
    repeat_probability = np.where(returned, P_REPEAT_CLICK_AFTER_RETURN, P_REPEAT_CLICK)
    repeats = mode < repeat_probability
    similar = ~repeats & (mode < repeat_probability + P_SIMILAR_CLICK)
    switch_probability = np.where(returned, P_INTENT_SWITCH_ON_RETURN, P_INTENT_SWITCH)
    switches = ~repeats & ~similar & (rng.random(len(rows)) < switch_probability)

    # Re-click an earlier item, recent ones more likely (sqrt of a uniform leans to 1).
    earlier = np.floor(step * np.sqrt(rng.random(len(rows)))).astype(np.int64)
    choice = np.where(repeats, event_item[first_event[rows] + earlier], choice)

    # Move on to an item similar to the last click, if it is on sale already this week.
    pick = rng.choice(SIMILAR_ITEMS, len(rows), p=SIMILAR_CHOICE)
    neighbour = catalogue.similar[last_click[rows], pick]
    similar &= catalogue.release_week[neighbour] <= week
    choice = np.where(similar, neighbour, choice)

    # Change intent, often to the complementary category, and click one of its popular items.
    switch_rows = rows[switches]
    to_complement = rng.random(len(switch_rows)) < P_SWITCH_TO_COMPLEMENT
    elsewhere = catalogue.category_of_item[catalogue.popular_item(rng, week[switches])]
    intent[switch_rows] = np.where(to_complement, catalogue.complement[intent[switch_rows]], elsewhere)
    choice[switches] = catalogue.popular_in_category(rng, intent[switch_rows], week[switches])

    # A partner suggested by the last cart wins over everything else.
    partner = partner_pending[rows]
    went_to_partner = partner >= 0
    went_to_partner &= catalogue.release_week[np.maximum(partner, 0)] <= week
    choice = np.where(went_to_partner, partner, choice)
    partner_pending[rows] = -1
    return choice, went_to_partner


def _fit_into_horizon(
    event_ts: np.ndarray, first_event: np.ndarray, lengths: np.ndarray, start_ms: np.ndarray, horizon_end_ms: int
) -> None:
    """Compress the given sessions, which ran past the last week in short steps, so that
    they end inside it. Scaling keeps the order of events and the shared checkout
    timestamps, and every session keeps its length."""
    if len(lengths) == 0:
        return
    positions = np.repeat(first_event - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    last_ms = event_ts[first_event + lengths - 1]
    scale = (horizon_end_ms - 1 - start_ms) / (last_ms - start_ms)
    session_start = np.repeat(start_ms, lengths)
    offset_ms = np.floor((event_ts[positions] - session_start) * np.repeat(scale, lengths)).astype(np.int64)
    event_ts[positions] = session_start + offset_ms


def _in_session_id_order(
    event_item: np.ndarray,
    event_ts: np.ndarray,
    event_type: np.ndarray,
    first_event: np.ndarray,
    lengths: np.ndarray,
    aid_of_item: np.ndarray,
) -> _Events:
    """Number sessions by their first event, as OTTO does, and lay the events out in that order."""
    by_start = np.argsort(event_ts[first_event], kind="stable")
    counts = lengths[by_start]
    ends = np.cumsum(counts)
    gather = np.repeat(first_event[by_start] - (ends - counts), counts) + np.arange(int(ends[-1]))
    return _Events(
        session=np.repeat(np.arange(len(counts), dtype=np.int64), counts),
        aid=aid_of_item[event_item[gather]].astype(np.int64),
        ts=event_ts[gather],
        type=event_type[gather],
    )


def _write_layout(
    root: Path, events: _Events, weeks: list[Week], week_bounds_ms: np.ndarray, files_per_week: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Write every week folder and return the number of events in each week."""
    event_week = np.searchsorted(week_bounds_ms, events.ts, side="right") - 1
    # Events are in session order already; a stable sort by week keeps that inside each week.
    by_week = np.argsort(event_week, kind="stable")
    week_starts = np.searchsorted(event_week[by_week], np.arange(len(weeks) + 1))
    week_events = []
    for index, week in enumerate(weeks):
        selected = by_week[week_starts[index] : week_starts[index + 1]]
        week_events.append(len(selected))
        folder = root / week.folder
        folder.mkdir()
        # Round-robin over session ids: ids follow start time, so id ranges would put
        # whole days into one part and leave other parts of the week nearly empty.
        part_of_event = events.session[selected] % files_per_week
        for part in range(files_per_week):
            rows = selected[part_of_event == part]
            with open(folder / f"part-{part:05d}.jsonl", "wb") as handle:
                for batch in _session_aligned_batches(events.session[rows]):
                    handle.write(_jsonl_bytes(events, rows[batch]))
                    if progress is not None:
                        progress(batch.stop - batch.start, len(events.ts))
    return week_events


def _session_aligned_batches(session: np.ndarray) -> list[slice]:
    """Slices of about WRITE_BATCH_EVENTS that never cut a session's line in two."""
    batches = []
    begin = 0
    while begin < len(session):
        end = min(begin + WRITE_BATCH_EVENTS, len(session))
        end = int(np.searchsorted(session, session[end - 1], side="right"))
        batches.append(slice(begin, end))
        begin = end
    return batches


_EVENT_TAILS = pa.array(
    [f',"type":"{name}"}}' for name in EVENT_TYPES] + [f',"type":"{name}"}}]}}\n' for name in EVENT_TYPES]
)


def _jsonl_bytes(events: _Events, rows: np.ndarray) -> pa.Buffer:
    """Serialise the events at `rows` (whole sessions, in order) as compact OTTO JSON lines.

    Arrow builds the text column-wise in C++, several times faster than formatting each
    event in Python; the result's data buffer is already the concatenated file content.
    """
    session = events.session[rows]
    opens_line = np.concatenate([[True], session[1:] != session[:-1]])
    closes_line = np.concatenate([session[1:] != session[:-1], [True]])
    line_heads = pc.binary_join_element_wise(
        '{"session":', pc.cast(pa.array(session[opens_line]), pa.string()), ',"events":[{"aid":', ""
    )
    head_index = np.where(opens_line, np.cumsum(opens_line) - 1, int(opens_line.sum()))
    heads = pc.take(pa.concat_arrays([line_heads, pa.array([',{"aid":'])]), pa.array(head_index))
    tails = pc.take(_EVENT_TAILS, pa.array(events.type[rows].astype(np.int64) + len(EVENT_TYPES) * closes_line))
    text = pc.binary_join_element_wise(
        heads,
        pc.cast(pa.array(events.aid[rows]), pa.string()),
        ',"ts":',
        pc.cast(pa.array(events.ts[rows]), pa.string()),
        tails,
        "",
    )
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset : text.offset + len(text) + 1]
    return text.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
