"""A bundle's source tables as arrays sorted by item, for the in-memory scorer (`scorer`): each
lookup is a binary search, so a session's cost follows its own items, not the tables' size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.candidates import NEIGHBOUR_WEIGHTS
from pipelines.covisitation import COVISITATION_LISTS
from pipelines.features import ITEM_FEATURES
from pipelines.popularity import POPULAR
from pipelines.vocabulary import EVENT_TYPES

# The lists a session's items lead to, in NEIGHBOUR_WEIGHTS order (co-visitation lists, then ALS).
NEIGHBOUR_LISTS = tuple(NEIGHBOUR_WEIGHTS)


@dataclass(frozen=True)
class NeighbourIndex:
    """Every neighbour list as arrays sorted by (aid, list): the rows of an aid are one slice."""

    aids: np.ndarray  # int64, sorted
    lists: np.ndarray  # int8 index into NEIGHBOUR_LISTS
    neighbours: np.ndarray  # int64
    relative: np.ndarray  # float64: weight / the aid's strongest weight in the list

    @classmethod
    def from_tables(cls, covisitation: pd.DataFrame, similar_items: pd.DataFrame) -> "NeighbourIndex":
        covisitation = covisitation[covisitation["matrix"].isin(COVISITATION_LISTS)]
        similar = similar_items[similar_items["score"] > 0]
        frame = pd.concat([
            pd.DataFrame({"list": covisitation["matrix"].map(NEIGHBOUR_LISTS.index).to_numpy(np.int8),
                          "aid": covisitation["aid"].to_numpy(np.int64),
                          "neighbour": covisitation["neighbour"].to_numpy(np.int64),
                          "weight": covisitation["weight"].to_numpy(np.float64)}),
            pd.DataFrame({"list": np.full(len(similar), NEIGHBOUR_LISTS.index("als"), np.int8),
                          "aid": similar["aid"].to_numpy(np.int64),
                          "neighbour": similar["neighbour"].to_numpy(np.int64),
                          "weight": similar["score"].to_numpy(np.float64)}),
        ], ignore_index=True)
        frame["relative"] = frame["weight"] / frame.groupby(["list", "aid"])["weight"].transform("max")
        frame = frame.sort_values(["aid", "list"], kind="stable", ignore_index=True)
        return cls(frame["aid"].to_numpy(), frame["list"].to_numpy(), frame["neighbour"].to_numpy(),
                   frame["relative"].to_numpy())

    def rows_of(self, aids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of `aids` each row belongs to, row positions): every neighbour row of every aid."""
        starts = np.searchsorted(self.aids, aids, side="left")
        lengths = np.searchsorted(self.aids, aids, side="right") - starts
        owner = np.repeat(np.arange(len(aids)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return owner, np.repeat(starts, lengths) + offsets


@dataclass(frozen=True)
class ItemStats:
    """ITEM_FEATURES by aid: a sorted aid array and a float64 matrix (NaN: the item has no row)."""

    aids: np.ndarray
    values: np.ndarray

    @classmethod
    def from_table(cls, item_stats: pd.DataFrame) -> "ItemStats":
        ordered = item_stats.sort_values("aid", ignore_index=True)
        return cls(ordered["aid"].to_numpy(np.int64), ordered[ITEM_FEATURES].to_numpy(np.float64, na_value=np.nan))

    def of(self, aids: np.ndarray) -> np.ndarray:
        position = np.clip(np.searchsorted(self.aids, aids), 0, max(len(self.aids) - 1, 0))
        found = (self.aids[position] == aids) if len(self.aids) else np.zeros(len(aids), bool)
        values = np.full((len(aids), len(ITEM_FEATURES)), np.nan)
        values[found] = self.values[position[found]]
        return values


def top_seller_columns(top_sellers: pd.DataFrame, limit: int) -> pd.DataFrame:
    """`aid` and `top_sellers_{type}_score/_rank` of the `limit` most popular items of each type."""
    popular = top_sellers[(top_sellers["list"] == POPULAR) & (top_sellers["rank"] <= limit)]
    per_aid = pd.DataFrame({"aid": np.unique(popular["aid"].to_numpy(np.int64))})
    for event_type in EVENT_TYPES:
        of_type = popular[popular["type"] == event_type].groupby("aid").agg(score=("score", "max"), rank=("rank", "max"))
        per_aid = per_aid.merge(of_type.rename(columns=lambda c: f"top_sellers_{event_type}_{c}"), left_on="aid",
                                right_index=True, how="left")
    return per_aid
