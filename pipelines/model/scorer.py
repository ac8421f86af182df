"""The in-memory scorer: a model bundle's tables as NumPy indexes, sessions ranked without Spark.

Loading a bundle reads its four source tables once (co-visitation, ALS similar items, top
sellers, item statistics) into arrays sorted by item, and its three LightGBM boosters. Scoring
takes OTTO sessions, builds their candidate rows and every FEATURE_COLUMNS value with NumPy and
pandas, and ranks them with the boosters: a session is answered in milliseconds, which is what
`recsys serve` needs, and `recsys predict` and `mlflow models serve` use it too.

The candidate and feature rules are the Spark ones of `pipelines.candidates.build_candidates` and
`pipelines.features.add_features`, step for step (the docstrings there say why each rule is what
it is); `tests/test_scorer.py` holds both to the same rows: every feature column of a real week's
evaluation sessions equal to the `features` table (float32), and the top-20 lists equal to what
the Spark path serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.candidates import (
    BUY_SOURCE_LISTS,
    BUY_TYPES,
    NEIGHBOUR_WEIGHTS,
    PAIR_FEATURES,
    RECENT_ITEM_LISTS,
    RECENT_ITEMS,
    SOURCES,
    TYPE_WEIGHTS,
    CandidateConfig,
)
from pipelines.config import EVENT_TYPES
from pipelines.covisitation import MATRICES
from pipelines.features import FEATURE_COLUMNS, ITEM_FEATURES, KEY_COLUMNS, SESSION_FEATURES
from pipelines.metrics import K
from pipelines.popularity import POPULAR
from pipelines.ranker import boosted_scores, prior_from_ranks
from pipelines.sessions import TYPE_ORDER

# The lists a session's items lead to, in NEIGHBOUR_WEIGHTS order (co-visitation matrices, then ALS).
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
        covisitation = covisitation[covisitation["matrix"].isin(MATRICES)]
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


def sessions_from_events(events: pd.DataFrame, max_events: int = 500) -> pd.DataFrame:
    """`session, aid, ts, type` events -> the same events ordered as the `sessions` asset orders a
    history (ts, then type, then aid), the last `max_events` of each session, with `position`."""
    ordered = events.assign(_type_rank=events["type"].map(TYPE_ORDER)).sort_values(
        ["session", "ts", "_type_rank", "aid", "type"], kind="stable", ignore_index=True).drop(columns="_type_rank")
    from_end = ordered.groupby("session", sort=False).cumcount(ascending=False)
    return ordered[from_end.to_numpy() < max_events].reset_index(drop=True)


def ranks_within(sessions: np.ndarray, scores: np.ndarray, aids: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """`with_source_rank`: each row's rank in its session by score descending (NaN last), then aid;
    (rank as float with NaN where not proposed, score with NaN where not proposed)."""
    missing = np.isnan(scores)
    order = np.lexsort((aids, np.where(missing, np.inf, -scores), missing, sessions))
    ordered_sessions = sessions[order]
    starts = np.r_[True, ordered_sessions[1:] != ordered_sessions[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.float64)
    rank[order] = np.arange(len(order)) - first + 1
    proposed = ~missing & (rank <= limit)
    return np.where(proposed, rank, np.nan), np.where(proposed, scores, np.nan)


class InMemoryScorer:
    """A bundle's tables and boosters in memory; `recommend` and `features` score pandas sessions."""

    def __init__(self, covisitation: pd.DataFrame, similar_items: pd.DataFrame, top_sellers: pd.DataFrame,
                 item_stats: pd.DataFrame, ranker_strings: dict[str, str], ranker_rounds: dict[str, int],
                 candidate_config: CandidateConfig):
        import lightgbm as lgb

        self.config = candidate_config
        self.neighbours = NeighbourIndex.from_tables(covisitation, similar_items)
        self.item_stats = ItemStats.from_table(item_stats)
        self.top_sellers = top_seller_columns(top_sellers, candidate_config.top_sellers)
        self.boosters = {t: lgb.Booster(model_str=text) for t, text in ranker_strings.items() if text}
        self.rounds = dict(ranker_rounds)

    @classmethod
    def from_bundle(cls, bundle) -> "InMemoryScorer":
        """From an opened `pipelines.model.Bundle`: its lake tables read once with pyarrow."""
        import pyarrow.parquet as pq

        read = lambda name: pq.read_table(bundle.table_location(name)).to_pandas()  # noqa: E731
        missing = [bundle.table_location(n) for n in ("covisitation", "similar_items", "top_sellers", "item_stats")
                   if not Path(bundle.table_location(n)).exists()]
        if missing:
            bundle.tables(None)  # raises the bundle's own FileNotFoundError, which says what to do
        return cls(read("covisitation"), read("similar_items"), read("top_sellers"), read("item_stats"),
                   bundle.ranker_strings, bundle.ranker_rounds, bundle.candidate_config)

    # --- candidates and features --------------------------------------------------------------

    def features(self, history: pd.DataFrame) -> pd.DataFrame:
        """`history`: ordered `session, aid, ts, type` (`sessions_from_events`, or a prefix table
        exploded in order) -> KEY_COLUMNS + FEATURE_COLUMNS (float32), one row per candidate."""
        rows = self._candidates(history)
        session_values = self._session_features(history).reindex(rows["session"].to_numpy()).to_numpy(np.float64)
        item_values = self.item_stats.of(rows["aid"].to_numpy(np.int64))
        out = rows[list(KEY_COLUMNS)].reset_index(drop=True)
        columns = {name: rows[name].to_numpy(np.float64) for name in FEATURE_COLUMNS
                   if name not in SESSION_FEATURES and name not in ITEM_FEATURES}
        columns.update({name: session_values[:, i] for i, name in enumerate(SESSION_FEATURES)})
        columns.update({name: item_values[:, i] for i, name in enumerate(ITEM_FEATURES)})
        for name in FEATURE_COLUMNS:
            out[name] = columns[name].astype(np.float32)
        return out

    @staticmethod
    def _session_features(history: pd.DataFrame) -> pd.DataFrame:
        grouped = history.groupby("session", sort=False)
        frame = pd.DataFrame({
            "session_length": grouped.size(),
            "session_duration_s": (grouped["ts"].last() - grouped["ts"].first()) / 1000.0,
            "session_unique_aids": grouped["aid"].nunique(),
        })
        for event_type in EVENT_TYPES:
            frame[f"session_{event_type}"] = (history["type"] == event_type).groupby(history["session"], sort=False).sum()
        return frame[SESSION_FEATURES]

    def _weighted_history(self, history: pd.DataFrame) -> pd.DataFrame:
        """`weighted_history`: the last `max_prefix_events` events with recency and position from the end."""
        from_end = history.groupby("session", sort=False).cumcount(ascending=False).to_numpy()
        kept = history[from_end < self.config.max_prefix_events].reset_index(drop=True)
        from_end = from_end[from_end < self.config.max_prefix_events]
        n_kept = kept.groupby("session", sort=False)["aid"].transform("size").to_numpy()
        position = n_kept - 1 - from_end
        fraction = np.where(n_kept > 1, position / np.maximum(n_kept - 1, 1), 1.0)
        return kept.assign(
            recency=np.power(2.0, 0.1 + 0.9 * fraction) - 1.0,
            position_from_end=from_end,
            last_ts=kept.groupby("session", sort=False)["ts"].transform("last").to_numpy(),
        )

    def _neighbour_weights(self, weighted: pd.DataFrame) -> pd.DataFrame:
        """`neighbour_scores`: per (session, neighbour) the summed contributions of each list."""
        is_buy = weighted["type"].isin(BUY_TYPES).to_numpy()
        sources = weighted.assign(buy_recency=np.where(is_buy, weighted["recency"], np.nan)).groupby(
            ["session", "aid"], sort=False).agg(recency=("recency", "max"), buy_recency=("buy_recency", "max"),
                                                position_from_end=("position_from_end", "min")).reset_index()
        owner, rows = self.neighbours.rows_of(sources["aid"].to_numpy(np.int64))
        lists = self.neighbours.lists[rows]
        buy_list = np.isin(lists, [NEIGHBOUR_LISTS.index(name) for name in BUY_SOURCE_LISTS])
        recency = np.where(buy_list, sources["buy_recency"].to_numpy()[owner], sources["recency"].to_numpy()[owner])
        contribution = recency * self.neighbours.relative[rows]
        valid = ~np.isnan(contribution)
        position = sources["position_from_end"].to_numpy()[owner][valid]
        frame = pd.DataFrame({"session": sources["session"].to_numpy()[owner][valid],
                              "aid": self.neighbours.neighbours[rows][valid]})
        lists, contribution = lists[valid], contribution[valid]
        for index, name in enumerate(NEIGHBOUR_LISTS):
            frame[NEIGHBOUR_WEIGHTS[name]] = np.where(lists == index, contribution, np.nan)
        for name in RECENT_ITEM_LISTS:
            for suffix, n_events in RECENT_ITEMS.items():
                frame[f"{NEIGHBOUR_WEIGHTS[name]}_{suffix}"] = np.where(
                    (lists == NEIGHBOUR_LISTS.index(name)) & (position < n_events), contribution, np.nan)
        # Spark's sum is null where every value is null; pandas' min_count=1 says the same.
        return frame.groupby(["session", "aid"], sort=False).sum(min_count=1).reset_index()

    def _history_pairs(self, weighted: pd.DataFrame) -> pd.DataFrame:
        """`history_pairs`: the interaction features and the history source's score and rank."""
        type_weight = weighted["type"].map(TYPE_WEIGHTS).to_numpy(np.float64)
        frame = weighted.assign(
            _score=weighted["recency"].to_numpy() * type_weight,
            **{f"interaction_{t}": (weighted["type"] == t).to_numpy(np.int64) for t in EVENT_TYPES})
        per_pair = frame.groupby(["session", "aid"], sort=False).agg(
            _score=("_score", "sum"), **{f"interaction_{t}": (f"interaction_{t}", "sum") for t in EVENT_TYPES},
            _last_ts=("last_ts", "max"), _ts=("ts", "max"), interaction_events_since=("position_from_end", "min"),
        ).reset_index()
        per_pair["interaction_seconds_since"] = (per_pair.pop("_last_ts") - per_pair.pop("_ts")) / 1000.0
        return self._with_rank(per_pair, "_score", "history", self.config.history).drop(columns="_score")

    @staticmethod
    def _with_rank(pairs: pd.DataFrame, score_column: str, source: str, limit: int) -> pd.DataFrame:
        rank, score = ranks_within(pairs["session"].to_numpy(), pairs[score_column].to_numpy(np.float64, na_value=np.nan),
                                   pairs["aid"].to_numpy(), limit)
        return pairs.assign(**{f"{source}_rank": rank, f"{source}_score": score})

    def _candidates(self, history: pd.DataFrame) -> pd.DataFrame:
        """`build_candidates`: one row per proposed (session, type, aid) with every source's score and
        rank, `n_sources`, `baseline_rank` and PAIR_FEATURES (as floats, NaN for null)."""
        weighted = self._weighted_history(history)
        weights = self._neighbour_weights(weighted)
        weights = self._with_rank(weights, "covisitation_clicks_weight", "clicks_covisitation", self.config.covisitation)
        weights = self._with_rank(weights, "als_similarity", "als", self.config.als)
        sessions = pd.DataFrame({"session": history["session"].unique()})
        top_sellers = sessions.merge(self.top_sellers, how="cross")
        pairs = self._history_pairs(weighted).merge(weights, on=["session", "aid"], how="outer").merge(
            top_sellers, on=["session", "aid"], how="outer")
        buys = pairs[["covisitation_carts_orders_weight", "covisitation_buy2buy_weight"]].to_numpy(np.float64, na_value=np.nan)
        pairs["_buys_weight"] = np.where(np.isnan(buys).all(axis=1), np.nan, np.nansum(buys, axis=1))
        pairs = self._with_rank(pairs, "_buys_weight", "buys_covisitation", self.config.covisitation)

        def source_column(source: str, event_type: str) -> str:
            return {"history": "history", "als": "als", "top_sellers": f"top_sellers_{event_type}",
                    "covisitation": "clicks_covisitation" if event_type == "clicks" else "buys_covisitation"}[source]

        rank_columns = sorted({f"{source_column(s, t)}_rank" for s in SOURCES for t in EVENT_TYPES})
        pairs = pairs[pairs[rank_columns].notna().any(axis=1)].reset_index(drop=True)
        typed = []
        for event_type in EVENT_TYPES:
            frame = pd.DataFrame({"session": pairs["session"].to_numpy(np.int64), "type": event_type,
                                  "aid": pairs["aid"].to_numpy(np.int64)})
            for source in SOURCES:
                for kind in ("score", "rank"):
                    frame[f"{source}_{kind}"] = pairs[f"{source_column(source, event_type)}_{kind}"].to_numpy(
                        np.float64, na_value=np.nan)
            for name in PAIR_FEATURES:
                frame[name] = pairs[name].to_numpy(np.float64, na_value=np.nan)
            typed.append(frame)
        rows = pd.concat(typed, ignore_index=True)
        rows["n_sources"] = sum(rows[f"{source}_rank"].notna().astype(np.int64) for source in SOURCES)
        rows = rows[rows["n_sources"] > 0]
        rows = self._without_surplus_top_sellers(rows)
        return self._with_baseline_rank(rows)

    def _without_surplus_top_sellers(self, rows: pd.DataFrame) -> pd.DataFrame:
        ranked_before = (rows["history_rank"].notna() | rows["covisitation_rank"].notna()).astype(np.int64)
        n_ranked_before = ranked_before.groupby([rows["session"], rows["type"]], sort=False).transform("sum")
        only_top_sellers = (rows["n_sources"] == 1) & rows["top_sellers_rank"].notna()
        return rows[~only_top_sellers | (n_ranked_before < self.config.top_sellers_fill_below)].reset_index(drop=True)

    @staticmethod
    def _with_baseline_rank(rows: pd.DataFrame) -> pd.DataFrame:
        tier = np.select([rows["history_rank"].notna(), rows["covisitation_rank"].notna(), rows["top_sellers_rank"].notna()],
                         [0, 1, 2], 3)
        desc_nulls_last = lambda column: np.where(rows[column].isna(), np.inf, -rows[column].to_numpy())  # noqa: E731
        type_index = rows["type"].map(TYPE_ORDER).to_numpy()
        order = np.lexsort((rows["aid"].to_numpy(), np.where(rows["top_sellers_rank"].isna(), np.inf, rows["top_sellers_rank"]),
                            desc_nulls_last("covisitation_score"), desc_nulls_last("history_score"), tier, type_index,
                            rows["session"].to_numpy()))
        keys = rows["session"].to_numpy()[order] * 4 + type_index[order]
        starts = np.r_[True, keys[1:] != keys[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        rank = np.empty(len(order), dtype=np.float64)
        rank[order] = np.arange(len(order)) - first + 1
        return rows.assign(baseline_rank=np.where(tier < 3, rank, np.nan))

    # --- ranking ------------------------------------------------------------------------------

    def scored(self, features: pd.DataFrame) -> np.ndarray:
        """`score_rows`: each row by its type's booster (its chosen rounds) plus the hand-rule prior."""
        scores = prior_from_ranks(features["baseline_rank"].to_numpy(np.float64))
        matrix = features[FEATURE_COLUMNS].to_numpy(np.float32)
        types = features["type"].to_numpy()
        for event_type, booster in self.boosters.items():
            index = np.flatnonzero(types == event_type)
            if len(index):
                scores[index] = boosted_scores(booster, matrix[index], scores[index], num_threads=1,
                                               rounds=self.rounds.get(event_type))
        return scores

    def recommend(self, history: pd.DataFrame, k: int = K) -> pd.DataFrame:
        """Ordered `session, aid, ts, type` -> `session, type, recs, scores`, the k best per type
        (score descending, then aid), sessions in input order, types clicks, carts, orders."""
        features = self.features(history)
        scores = self.scored(features)
        frame = pd.DataFrame({"session": features["session"].to_numpy(), "type": features["type"].to_numpy(),
                              "aid": features["aid"].to_numpy(), "score": scores})
        missing = np.isnan(scores)
        type_index = frame["type"].map(TYPE_ORDER).to_numpy()
        order = np.lexsort((frame["aid"].to_numpy(), np.where(missing, np.inf, -scores), missing, type_index,
                            frame["session"].to_numpy()))
        frame = frame.iloc[order]
        frame = frame[frame.groupby(["session", "type"], sort=False).cumcount().to_numpy() < k]
        grouped = frame.groupby(["session", "type"], sort=False)
        lists = pd.DataFrame({"recs": grouped["aid"].agg(list), "scores": grouped["score"].agg(
            lambda values: [float(np.float32(v)) for v in values])}).reset_index()
        position = {session: i for i, session in enumerate(history["session"].unique())}
        lists["_order"] = lists["session"].map(position) * 4 + lists["type"].map(TYPE_ORDER)
        return lists.sort_values("_order", ignore_index=True).drop(columns="_order")
