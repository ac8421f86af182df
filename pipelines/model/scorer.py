"""The in-memory scorer: a model bundle's tables as NumPy indexes, sessions ranked without Spark.

Loading a bundle reads its four source tables once (co-visitation, ALS similar items, top
sellers, item statistics) into arrays sorted by item (`pipelines.model.indexes`), and its three
LightGBM boosters. Scoring takes OTTO sessions, builds their candidate rows and every
FEATURE_COLUMNS value on NumPy arrays (groups by sorting: `Groups`), and ranks them with the
boosters: a session is answered in milliseconds, which is what `recsys serve` needs, and `recsys
predict` and `mlflow models serve` use it too.

The candidate and feature rules are the Spark ones of `pipelines.candidates.build_candidates` and
`pipelines.features.add_features`, step for step (the docstrings there say why each rule is what
it is). `tests/test_scorer.py` holds both to the same rows on a synthetic shop with short and
default cuts, `tests/e2e/test_scorer_parity.py` on a real week: every feature column equal to the
`features` table and to Spark's `candidate_features` (float32), and the top-20 lists equal to the
published `session_recommendations`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.candidates import (
    BUY_SOURCE_LISTS,
    INTERACTION_HALF_LIFE_SECONDS,
    NEIGHBOUR_WEIGHTS,
    PAIR_FEATURES,
    RECENT_ITEM_LISTS,
    RECENT_ITEMS,
    SOURCES,
    CandidateConfig,
)
from pipelines.features import FEATURE_COLUMNS, ITEM_FEATURES, SESSION_FEATURES
from pipelines.metrics import K
from pipelines.model.indexes import NEIGHBOUR_LISTS, ItemStats, NeighbourIndex, top_seller_columns
from pipelines.ranker import boosted_scores, prior_from_ranks
from pipelines.vocabulary import BUY_TYPES, EVENT_TYPES, INTERACTION_TYPE_WEIGHTS, TYPE_ORDER

def sessions_from_events(events: pd.DataFrame, max_events: int = 500) -> pd.DataFrame:
    """`session, aid, ts, type` events -> the same events ordered as the `sessions` asset orders a
    history (ts, then type, then aid), sessions in their first appearance's order and each one's rows
    together, the last `max_events` of each session kept: what `InMemoryScorer` reads."""
    first_seen = pd.unique(events["session"].to_numpy(np.int64))
    session_order = pd.Series(np.arange(len(first_seen)), index=first_seen)
    ordered = events.assign(_session_order=session_order.reindex(events["session"].to_numpy()).to_numpy(),
                            _type_rank=events["type"].map(TYPE_ORDER).to_numpy()).sort_values(
        ["_session_order", "ts", "_type_rank", "aid"], kind="stable", ignore_index=True)
    from_end = ordered.groupby("_session_order", sort=False).cumcount(ascending=False).to_numpy()
    return ordered.loc[from_end < max_events, ["session", "aid", "ts", "type"]].reset_index(drop=True)


@dataclass(frozen=True)
class Groups:
    """Rows grouped by a key: `order` sorts the rows by key, `starts` are where each group begins
    in that order, `index` is each row's group (0..n_groups-1), `first` a row of each group."""

    order: np.ndarray
    starts: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, *keys: np.ndarray) -> "Groups":
        """Groups of equal key tuples (`keys` most significant first)."""
        order = np.lexsort(keys[::-1]) if len(keys[0]) else np.zeros(0, dtype=np.int64)
        change = np.zeros(len(order), dtype=bool)
        if len(order):
            change[0] = True
            for key in keys:
                ordered = key[order]
                change[1:] |= ordered[1:] != ordered[:-1]
        starts = np.flatnonzero(change)
        index = np.empty(len(order), dtype=np.int64)
        index[order] = np.cumsum(change) - 1
        return cls(order, starts, index)

    @property
    def size(self) -> int:
        return len(self.starts)

    @property
    def first(self) -> np.ndarray:
        return self.order[self.starts]

    def sum(self, values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Per group the sum of `values` (where `where`), NaN for a group with none: Spark's null sum."""
        index = self.index if where is None else self.index[where]
        values = values if where is None else values[where]
        totals = np.bincount(index, weights=values, minlength=self.size)
        return np.where(np.bincount(index, minlength=self.size) > 0, totals, np.nan)

    def max(self, values: np.ndarray) -> np.ndarray:
        """Per group the largest value, NaN where every value is NaN (Spark's max ignores nulls)."""
        ordered = np.where(np.isnan(values), -np.inf, values)[self.order] if values.dtype.kind == "f" else values[self.order]
        best = np.maximum.reduceat(ordered, self.starts) if len(ordered) else ordered
        return np.where(best == -np.inf, np.nan, best) if values.dtype.kind == "f" else best

    def min(self, values: np.ndarray) -> np.ndarray:
        return np.minimum.reduceat(values[self.order], self.starts) if len(values) else values


def ranks_within(sessions: np.ndarray, scores: np.ndarray, aids: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """`with_source_rank`: each row's rank in its session by score descending (NaN last), then aid;
    (rank as float with NaN where not proposed, score with NaN where not proposed)."""
    missing = np.isnan(scores)
    order = np.lexsort((aids, np.where(missing, np.inf, -scores), missing, sessions))
    rank = np.empty(len(order), dtype=np.float64)
    rank[order] = _position_in_runs(sessions[order])
    proposed = ~missing & (rank <= limit)
    return np.where(proposed, rank, np.nan), np.where(proposed, scores, np.nan)


def _position_in_runs(keys: np.ndarray) -> np.ndarray:
    """1-based position of each element in its run of equal consecutive keys."""
    if not len(keys):
        return np.zeros(0)
    starts = np.r_[True, keys[1:] != keys[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
    return np.arange(len(keys)) - first + 1.0


@dataclass
class CandidateRows:
    """Candidate rows as arrays: `session`, `type` (TYPE_ORDER code), `aid`, and every feature
    column but the session and item features (float64, NaN for null)."""

    session: np.ndarray
    type: np.ndarray
    aid: np.ndarray
    columns: dict[str, np.ndarray]

    def take(self, rows: np.ndarray) -> "CandidateRows":
        return CandidateRows(self.session[rows], self.type[rows], self.aid[rows],
                             {name: values[rows] for name, values in self.columns.items()})


EVENT_TYPE_NAMES = np.array(sorted(TYPE_ORDER, key=TYPE_ORDER.get))


class InMemoryScorer:
    """A bundle's tables and boosters in memory; `recommend` and `features` score pandas sessions."""

    def __init__(self, covisitation: pd.DataFrame, similar_items: pd.DataFrame, top_sellers: pd.DataFrame,
                 item_stats: pd.DataFrame, ranker_strings: dict[str, str], ranker_rounds: dict[str, int],
                 candidate_config: CandidateConfig):
        import lightgbm as lgb

        self.config = candidate_config
        self.neighbours = NeighbourIndex.from_tables(covisitation, similar_items)
        self.item_stats = ItemStats.from_table(item_stats)
        sellers = top_seller_columns(top_sellers, candidate_config.top_sellers)
        self.top_seller_aids = sellers["aid"].to_numpy(np.int64)
        self.top_seller_values = {name: sellers[name].to_numpy(np.float64, na_value=np.nan)
                                  for name in sellers.columns if name != "aid"}
        self.boosters = {TYPE_ORDER[t]: lgb.Booster(model_str=text) for t, text in ranker_strings.items() if text}
        self.rounds = {TYPE_ORDER[t]: n for t, n in ranker_rounds.items()}

    @classmethod
    def from_bundle(cls, bundle) -> "InMemoryScorer":
        """From an opened `pipelines.model.Bundle`: its lake tables read once with pyarrow."""
        import pyarrow.parquet as pq

        tables = {name: pq.read_table(location).to_pandas() for name, location in bundle.table_locations().items()}
        return cls(**tables, ranker_strings=bundle.ranker_strings, ranker_rounds=bundle.ranker_rounds,
                   candidate_config=bundle.candidate_config)

    # --- candidates and features --------------------------------------------------------------

    def features(self, history: pd.DataFrame) -> pd.DataFrame:
        """`history`: `session, aid, ts, type`, each session's events together and in order
        (`sessions_from_events`) -> KEY_COLUMNS + FEATURE_COLUMNS (float32), one row per candidate."""
        rows, matrix = self._feature_matrix(history)
        frame = pd.DataFrame(matrix, columns=FEATURE_COLUMNS)
        frame.insert(0, "aid", rows.aid)
        frame.insert(0, "type", EVENT_TYPE_NAMES[rows.type])
        frame.insert(0, "session", rows.session)
        return frame

    def _feature_matrix(self, history: pd.DataFrame) -> tuple[CandidateRows, np.ndarray]:
        return self._feature_matrix_of(history["session"].to_numpy(np.int64), history["aid"].to_numpy(np.int64),
                                       history["ts"].to_numpy(np.int64), history["type"].map(TYPE_ORDER).to_numpy(np.int64))

    def _feature_matrix_of(self, session: np.ndarray, aid: np.ndarray, ts: np.ndarray,
                           event_type: np.ndarray) -> tuple[CandidateRows, np.ndarray]:
        """Candidate rows and their FEATURE_COLUMNS matrix from event arrays (type as TYPE_ORDER codes)."""
        sessions = Groups.of(session)
        rows = self._candidates(session, aid, ts, event_type, sessions)
        matrix = np.empty((len(rows.aid), len(FEATURE_COLUMNS)), dtype=np.float32)
        per_session = self._session_features(aid, ts, event_type, sessions)
        # Groups are in ascending session order.
        session_group = np.searchsorted(session[sessions.first], rows.session)
        item_values = self.item_stats.of(rows.aid)
        for position, name in enumerate(FEATURE_COLUMNS):
            if name in SESSION_FEATURES:
                values = per_session[name][session_group]
            elif name in ITEM_FEATURES:
                values = item_values[:, ITEM_FEATURES.index(name)]
            else:
                values = rows.columns[name]
            matrix[:, position] = values
        return rows, matrix

    @staticmethod
    def _session_features(aid, ts, event_type, sessions: Groups) -> dict[str, np.ndarray]:
        """SESSION_FEATURES per session group, from the whole visible history."""
        lengths = np.diff(np.r_[sessions.starts, len(aid)])
        first_ts, last_ts = ts[sessions.order[sessions.starts]], ts[sessions.order[sessions.starts + lengths - 1]]
        unique_pairs = Groups.of(sessions.index, aid)
        values = {
            "session_length": lengths.astype(np.float64),
            "session_duration_s": (last_ts - first_ts) / 1000.0,
            "session_unique_aids": np.bincount(sessions.index[unique_pairs.first], minlength=sessions.size).astype(np.float64),
        }
        for name, code in TYPE_ORDER.items():
            values[f"session_{name}"] = np.bincount(sessions.index[event_type == code], minlength=sessions.size).astype(np.float64)
        return values

    def _candidates(self, session, aid, ts, event_type, sessions: Groups) -> CandidateRows:
        """`build_candidates` on arrays: one row per proposed (session, type, aid) with every source's
        score and rank, `n_sources`, `baseline_rank` and PAIR_FEATURES (NaN for null)."""
        config = self.config
        # weighted_history: the last max_prefix_events events, recency and position from the end.
        lengths = np.diff(np.r_[sessions.starts, len(aid)])
        row_in_session = np.empty(len(aid), dtype=np.int64)
        row_in_session[sessions.order] = np.arange(len(aid)) - np.repeat(sessions.starts, lengths)
        length_of_row = lengths[sessions.index]
        from_end = length_of_row - 1 - row_in_session
        kept = from_end < config.max_prefix_events
        n_kept = np.minimum(length_of_row, config.max_prefix_events)[kept]
        from_end = from_end[kept]
        position = n_kept - 1 - from_end
        fraction = np.where(n_kept > 1, position / np.maximum(n_kept - 1, 1), 1.0)
        recency = np.power(2.0, 0.1 + 0.9 * fraction) - 1.0
        last_ts = ts[sessions.order[sessions.starts + lengths - 1]][sessions.index][kept]
        k_session, k_aid, k_ts, k_type = session[kept], aid[kept], ts[kept], event_type[kept]
        decay = np.power(0.5, (last_ts - k_ts) / (1000.0 * INTERACTION_HALF_LIFE_SECONDS))

        # Per (session, aid) of the kept history: history_pairs and neighbour_sources.
        pairs = Groups.of(k_session, k_aid)
        history = {
            "session": k_session[pairs.first], "aid": k_aid[pairs.first],
            "_score": pairs.sum(recency * np.array([INTERACTION_TYPE_WEIGHTS[t] for t in EVENT_TYPE_NAMES])[k_type]),
            **{f"interaction_{name}": np.bincount(pairs.index[k_type == code], minlength=pairs.size).astype(np.float64)
               for name, code in TYPE_ORDER.items()},
            **{f"interaction_{name}_decayed": pairs.sum(np.where(k_type == code, decay, 0.0))
               for name, code in TYPE_ORDER.items()},
            "interaction_seconds_since": (pairs.max(last_ts) - pairs.max(k_ts)) / 1000.0,
            "interaction_events_since": pairs.min(from_end).astype(np.float64),
        }
        history["history_rank"], history["history_score"] = ranks_within(
            history["session"], history["_score"], history["aid"], config.history)
        source_recency = pairs.max(recency)
        buy_recency = pairs.max(np.where(np.isin(k_type, [TYPE_ORDER[t] for t in BUY_TYPES]), recency, np.nan))
        source_from_end = pairs.min(from_end)

        # neighbour_scores: every list's contributions summed per (session, neighbour).
        owner, at = self.neighbours.rows_of(history["aid"])
        lists = self.neighbours.lists[at]
        buy_list = np.isin(lists, [NEIGHBOUR_LISTS.index(name) for name in BUY_SOURCE_LISTS])
        contribution = np.where(buy_list, buy_recency[owner], source_recency[owner]) * self.neighbours.relative[at]
        valid = ~np.isnan(contribution)
        owner, lists, contribution = owner[valid], lists[valid], contribution[valid]
        neighbour, item_from_end = self.neighbours.neighbours[at][valid], source_from_end[owner]
        targets = Groups.of(history["session"][owner], neighbour)
        weights = {"session": history["session"][owner][targets.first], "aid": neighbour[targets.first]}
        for index, name in enumerate(NEIGHBOUR_LISTS):
            weights[NEIGHBOUR_WEIGHTS[name]] = targets.sum(contribution, where=lists == index)
        for name in RECENT_ITEM_LISTS:
            for suffix, n_events in RECENT_ITEMS.items():
                weights[f"{NEIGHBOUR_WEIGHTS[name]}_{suffix}"] = targets.sum(
                    contribution, where=(lists == NEIGHBOUR_LISTS.index(name)) & (item_from_end < n_events))
        for column, source, limit in (("covisitation_clicks_weight", "clicks_covisitation", config.covisitation),
                                      ("als_similarity", "als", config.als)):
            weights[f"{source}_rank"], weights[f"{source}_score"] = ranks_within(
                weights["session"], weights[column], weights["aid"], limit)

        # merge_by_keys: history pairs, neighbour weights and every session x top seller.
        session_ids = session[sessions.first]
        sellers = {"session": np.repeat(session_ids, len(self.top_seller_aids)),
                   "aid": np.tile(self.top_seller_aids, len(session_ids)),
                   **{name: np.tile(values, len(session_ids)) for name, values in self.top_seller_values.items()}}
        parts = [history, weights, sellers]
        all_session = np.concatenate([part["session"] for part in parts])
        all_aid = np.concatenate([part["aid"] for part in parts])
        merged = Groups.of(all_session, all_aid)
        offsets = np.cumsum([0] + [len(part["session"]) for part in parts])
        merged_columns: dict[str, np.ndarray] = {}
        for part, offset in zip(parts, offsets):
            target = merged.index[offset:offset + len(part["session"])]
            for name, values in part.items():
                if name in ("session", "aid", "_score"):
                    continue
                merged_columns.setdefault(name, np.full(merged.size, np.nan))[target] = values
        m_session, m_aid = all_session[merged.first], all_aid[merged.first]
        buys = np.stack([merged_columns["covisitation_carts_orders_weight"], merged_columns["covisitation_buy2buy_weight"]])
        buys_weight = np.where(np.isnan(buys).all(axis=0), np.nan, np.nansum(buys, axis=0))
        merged_columns["buys_covisitation_rank"], merged_columns["buys_covisitation_score"] = ranks_within(
            m_session, buys_weight, m_aid, config.covisitation)

        def source_column(source: str, type_name: str) -> str:
            return {"history": "history", "als": "als", "top_sellers": f"top_sellers_{type_name}",
                    "covisitation": "clicks_covisitation" if type_name == "clicks" else "buys_covisitation"}[source]

        rank_columns = sorted({f"{source_column(s, t)}_rank" for s in SOURCES for t in EVENT_TYPES})
        proposed = np.flatnonzero(np.any([~np.isnan(merged_columns[c]) for c in rank_columns], axis=0))
        per_type = []
        for type_name in EVENT_TYPES:
            columns = {f"{source}_{kind}": merged_columns[f"{source_column(source, type_name)}_{kind}"][proposed]
                       for source in SOURCES for kind in ("score", "rank")}
            columns.update({name: merged_columns[name][proposed] for name in PAIR_FEATURES})
            per_type.append(CandidateRows(m_session[proposed], np.full(len(proposed), TYPE_ORDER[type_name]),
                                          m_aid[proposed], columns))
        rows = CandidateRows(np.concatenate([r.session for r in per_type]), np.concatenate([r.type for r in per_type]),
                             np.concatenate([r.aid for r in per_type]),
                             {name: np.concatenate([r.columns[name] for r in per_type]) for name in per_type[0].columns})
        n_sources = sum((~np.isnan(rows.columns[f"{source}_rank"])).astype(np.int64) for source in SOURCES)
        rows.columns["n_sources"] = n_sources.astype(np.float64)
        rows = rows.take(np.flatnonzero(n_sources > 0))
        rows = self._without_surplus_top_sellers(rows)
        rows.columns["baseline_rank"] = self._baseline_rank(rows)
        return rows

    def _without_surplus_top_sellers(self, rows: CandidateRows) -> CandidateRows:
        columns = rows.columns
        ranked_before = ~np.isnan(columns["history_rank"]) | ~np.isnan(columns["covisitation_rank"])
        queries = Groups.of(rows.session, rows.type)
        n_ranked_before = np.bincount(queries.index, weights=ranked_before, minlength=queries.size)[queries.index]
        only_top_sellers = (columns["n_sources"] == 1) & ~np.isnan(columns["top_sellers_rank"])
        return rows.take(np.flatnonzero(~only_top_sellers | (n_ranked_before < self.config.top_sellers_fill_below)))

    @staticmethod
    def _baseline_rank(rows: CandidateRows) -> np.ndarray:
        columns = rows.columns
        tier = np.select([~np.isnan(columns["history_rank"]), ~np.isnan(columns["covisitation_rank"]),
                          ~np.isnan(columns["top_sellers_rank"])], [0, 1, 2], 3)
        desc_nulls_last = lambda values: np.where(np.isnan(values), np.inf, -values)  # noqa: E731
        order = np.lexsort((rows.aid, np.where(np.isnan(columns["top_sellers_rank"]), np.inf, columns["top_sellers_rank"]),
                            desc_nulls_last(columns["covisitation_score"]), desc_nulls_last(columns["history_score"]),
                            tier, rows.type, rows.session))
        queries = Groups.of(rows.session[order], rows.type[order])
        rank = np.empty(len(order), dtype=np.float64)
        rank[order] = np.arange(len(order)) - queries.starts[queries.index] + 1
        return np.where(tier < 3, rank, np.nan)

    # --- ranking ------------------------------------------------------------------------------

    def _scores(self, rows: CandidateRows, matrix: np.ndarray) -> np.ndarray:
        """`score_rows`: each row by its type's booster (its chosen rounds) plus the hand-rule prior."""
        scores = prior_from_ranks(matrix[:, FEATURE_COLUMNS.index("baseline_rank")].astype(np.float64))
        for code, booster in self.boosters.items():
            index = np.flatnonzero(rows.type == code)
            if len(index):
                scores[index] = boosted_scores(booster, matrix[index], scores[index], num_threads=1,
                                               rounds=self.rounds.get(code))
        return scores

    def recommend(self, history: pd.DataFrame, k: int = K) -> pd.DataFrame:
        """`history` as `features` reads it -> `session, type, recs, scores`: the k best aids per type
        (score descending, then aid), sessions in input order, types clicks, carts, orders."""
        rows, matrix = self._feature_matrix(history)
        scores = self._scores(rows, matrix)
        session_order = pd.Series(np.arange(history["session"].nunique()),
                                  index=pd.unique(history["session"].to_numpy(np.int64)))
        position = session_order.reindex(rows.session).to_numpy()
        missing = np.isnan(scores)
        order = np.lexsort((rows.aid, np.where(missing, np.inf, -scores), missing, rows.type, position))
        queries = Groups.of(position[order], rows.type[order])
        best = order[(np.arange(len(order)) - queries.starts[queries.index]) < k]
        query_of_best = Groups.of(position[best], rows.type[best])
        bounds = np.r_[query_of_best.starts, len(best)]
        aids, values = rows.aid[best].tolist(), scores[best].astype(np.float32).tolist()
        first = best[query_of_best.starts]
        return pd.DataFrame({
            "session": rows.session[first],
            "type": EVENT_TYPE_NAMES[rows.type[first]],
            "recs": [aids[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
            "scores": [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
        })

    def recommend_session(self, session: int, events: list[dict], max_events: int = 500, k: int = K) -> dict[str, list[int]]:
        """One session's events (`aid`, `ts`, `type` dicts, any order) -> the k best aids per type:
        `recommend`'s lists without pandas, for a request that holds one session."""
        ordered = sorted((event["ts"], TYPE_ORDER[event["type"]], event["aid"]) for event in events)[-max_events:]
        ts, event_type, aid = (np.array(column, dtype=np.int64) for column in zip(*ordered))
        rows, matrix = self._feature_matrix_of(np.full(len(ts), session, dtype=np.int64), aid, ts, event_type)
        scores = self._scores(rows, matrix)
        missing = np.isnan(scores)
        order = np.lexsort((rows.aid, np.where(missing, np.inf, -scores), missing))
        return {name: rows.aid[order][rows.type[order] == code][:k].tolist() for name, code in TYPE_ORDER.items()}
