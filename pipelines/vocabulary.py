"""The project's shared vocabulary: event types, their order and weights (each named by what it
weighs), and time units. Every module takes these from here."""

from __future__ import annotations

EVENT_TYPES = ("clicks", "carts", "orders")
# A type's code: sorts a session's simultaneous events (a checkout) and, at equal timestamps,
# puts purchases last, so "the latest events" keep them.
TYPE_ORDER = {event_type: code for code, event_type in enumerate(EVENT_TYPES)}
BUY_TYPES = ("carts", "orders")

# The OTTO metric: recall@20 of each type, weighted.
METRIC_TYPE_WEIGHTS = {"clicks": 0.10, "carts": 0.30, "orders": 0.60}
# How much a session's own event says about the item (the public "candidate rerank" hand rule).
INTERACTION_TYPE_WEIGHTS = {"clicks": 1.0, "carts": 6.0, "orders": 3.0}

HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
