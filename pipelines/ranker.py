"""LightGBM LambdaRank per target with session-grouped K-fold: the week's honest evaluation.

For each target type (clicks, carts, orders) the training rows are the candidate rows of that
type, labelled 1 when the candidate is in the session's truth. Sessions are assigned to K folds
by a seeded permutation; fold k's model is trained on the other folds and scores fold k only,
so every out-of-fold score comes from a model that never saw that session. Queries without a
positive carry no LambdaRank gradient and are left out of training; negatives are downsampled
per session (seeded), positives always kept.

Boosting starts from the hand rule's order, and how far it moves away is chosen inside each
training fold: a share of the fold's training sessions is held out, and the number of rounds
(zero included: the hand rule itself) that puts the most true items into the held-out top 20
is the fold's, provided its gain over the hand rule is more than noise (`beats_hand_rule`). A target with too few buyers to learn from therefore stays at the baseline
instead of adding noise, and the choice never looks at the sessions the fold scores. The final
model of a type is fitted on all sessions with the median of the folds' rounds and serves in
production.

LightGBM and OpenMP do not survive a fork: nothing here forks, and callers must not fork after
training (no multiprocessing start method "fork" once this ran).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import EVENT_TYPES
from pipelines.features import FEATURE_COLUMNS, KEY_COLUMNS
from pipelines.metrics import TYPE_DTYPE, K, candidate_recall, score_predictions

LABEL_COLUMN = "label"
# Label of a candidate in its target type's truth; 1 marks the related buy type's truth.
TARGET_LABEL = 2
SCORE_COLUMN = "score"
# Graded relevance: the target's own truth is 2; for carts and orders, the other buy type's
# truth is 1 (a carted item is often ordered later), which multiplies the scarce order signal.
RELATED_TRUTH = {"carts": "orders", "orders": "carts"}
# Candidates the hand rule does not rank (ALS-only) start below every ranked one.
UNRANKED_PRIOR_RANK = 200.0
PREDICT_ROWS = 1_000_000


@dataclass(frozen=True)
class RankerConfig:
    folds: int = 3
    seed: int = 42
    # The most rounds a fold may choose; the held-out choice usually stops well before.
    num_boost_round: int = 60
    round_step: int = 5
    validation_share: float = 0.25
    # How sure the held-out sessions must be that boosting beats the hand rule (z of a one-sided
    # McNemar test; 1.0 ~ 84%) before a fold moves away from it.
    min_gain_z: float = 1.0
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 40
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambdarank_truncation_level: int = 25
    negatives_per_session: dict = field(default_factory=lambda: {"clicks": 20, "carts": 30, "orders": 40})
    # Training sessions per fit, at most (seeded sample; every session is still scored). Clicks
    # have a positive in nearly every session: at 1M sessions a fit would see ~150k queries, and
    # fitting time, not accuracy, is what grows.
    max_train_sessions: int = 50_000
    # 63 histogram bins instead of LightGBM's 255: fits about half as long on these features.
    max_bin: int = 63
    num_threads: int = 0

    def lightgbm_params(self) -> dict:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [K],
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambdarank_truncation_level": self.lambdarank_truncation_level,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "max_bin": self.max_bin,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def params(self) -> dict:
        flat = {k: v for k, v in asdict(self).items() if k != "negatives_per_session"}
        flat.update({f"negatives_per_session.{t}": n for t, n in self.negatives_per_session.items()})
        return flat


@dataclass
class FoldRecord:
    fold: int
    train_sessions: set[int]
    scored_sessions: set[int]
    train_rows: int
    rounds: int
    # True items in the held-out top 20 by rounds tried (0 = the hand rule alone).
    validation_hits: dict[int, int]


@dataclass
class TargetResult:
    event_type: str
    model: object  # lightgbm.Booster fitted on every session
    # session, type, aid, score for every candidate row of the type (evaluate_ranker keeps only the top k
    # and leaves this empty)
    oof: pd.DataFrame
    folds: list[FoldRecord]
    feature_importance: pd.Series
    train_rows: int
    train_sessions: int
    rounds: int
    seconds: float


def assign_folds(sessions: np.ndarray, folds: int, seed: int) -> pd.Series:
    """Fold number per distinct session (seeded permutation: balanced and reproducible)."""
    unique = np.sort(pd.unique(sessions))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = np.empty(len(unique), dtype=np.int64)
    fold_of[order] = np.arange(len(unique)) % folds
    return pd.Series(fold_of, index=unique, name="fold")


def attach_labels(candidates: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """`candidates` (one type or all) with `label`: 2 where (session, type, aid) is in `labels`, 1 where
    the aid is in the session's truth of the related buy type, else 0. Metrics count only the 2s.

    Only the key columns are merged, so a week's feature rows are not copied."""
    truth = labels[list(KEY_COLUMNS)].drop_duplicates()
    related = truth[truth["type"].isin(list(RELATED_TRUTH))].assign(type=lambda f: f["type"].map(RELATED_TRUTH))
    graded = pd.concat([truth.assign(**{LABEL_COLUMN: np.int8(TARGET_LABEL)}), related.assign(**{LABEL_COLUMN: np.int8(1)})])
    graded = graded.groupby(list(KEY_COLUMNS), as_index=False)[LABEL_COLUMN].max()
    keys = pd.DataFrame({"session": candidates["session"].to_numpy(), "type": _type_codes(candidates["type"]),
                         "aid": candidates["aid"].to_numpy()})
    graded = graded.assign(type=_type_codes(graded["type"]))
    # A left merge keeps the left rows' order.
    found = keys.merge(graded, on=list(KEY_COLUMNS), how="left")[LABEL_COLUMN]
    return candidates.assign(**{LABEL_COLUMN: found.fillna(0).to_numpy(dtype=np.int8)})


def _type_codes(types: pd.Series) -> np.ndarray:
    return pd.Categorical(types, dtype=TYPE_DTYPE).codes


def prior_score(frame: pd.DataFrame) -> np.ndarray:
    """The hand rule as a starting score (-log2(1 + rank)): boosting learns corrections to the
    baseline's order instead of rediscovering it, which matters when a week has few buyers."""
    ranks = frame["baseline_rank"].to_numpy(dtype=np.float64, na_value=np.nan)
    return -np.log2(1.0 + np.where(np.isnan(ranks), UNRANKED_PRIOR_RANK, ranks))


def training_rows(rows: pd.DataFrame, negatives_per_session: int, seed: int) -> pd.DataFrame:
    """Rows of sessions with at least one positive; all positives, up to n random negatives per session.

    Sorted by session so LightGBM's `group` sizes describe contiguous queries. Works on the key and
    label arrays and copies only the rows it keeps.
    """
    labels = rows[LABEL_COLUMN].to_numpy()
    has_positive = rows.groupby("session", sort=False)[LABEL_COLUMN].transform("max").to_numpy() > 0
    useful = np.flatnonzero(has_positive)
    sessions, positives = rows["session"].to_numpy()[useful], labels[useful] > 0
    noise = np.random.default_rng(seed).random(len(useful))
    negative_order = pd.Series(np.where(positives, -1.0, noise)).groupby(sessions, sort=False).rank(method="first").to_numpy()
    positives_in_session = pd.Series(positives).groupby(sessions, sort=False).transform("sum").to_numpy()
    keep = positives | (negative_order - positives_in_session <= negatives_per_session)
    return rows.iloc[useful[keep]].sort_values(["session", "aid"], kind="stable")


def capped_sessions(train: pd.DataFrame, max_sessions: int, seed: int) -> pd.DataFrame:
    """`train` restricted to a seeded sample of at most `max_sessions` of its sessions (order kept)."""
    sessions = np.sort(train["session"].unique())
    if len(sessions) <= max_sessions:
        return train
    kept = np.random.default_rng(seed).choice(sessions, size=max_sessions, replace=False)
    return train[train["session"].isin(kept)]


def _fit(train: pd.DataFrame, config: RankerConfig, rounds: int):
    import lightgbm as lgb

    train = capped_sessions(train, config.max_train_sessions, config.seed)
    groups = train.groupby("session", sort=False).size().to_numpy()
    dataset = lgb.Dataset(
        train[FEATURE_COLUMNS].to_numpy(dtype=np.float32),
        label=train[LABEL_COLUMN].to_numpy(),
        group=groups,
        init_score=prior_score(train),
        feature_name=list(FEATURE_COLUMNS),
        free_raw_data=True,
    )
    return lgb.train(config.lightgbm_params(), dataset, num_boost_round=rounds)


def predict_scores(model, frame: pd.DataFrame, num_threads: int = 0, rounds: int | None = None) -> np.ndarray:
    """The model's corrections (its first `rounds` trees; all by default) plus the prior it was
    trained from (LightGBM does not store init scores). Zero rounds is the prior alone."""
    prior = prior_score(frame)
    if model is None or rounds == 0:
        return prior
    features = frame[FEATURE_COLUMNS].to_numpy(dtype=np.float32)
    return model.predict(features, num_iteration=rounds, num_threads=num_threads) + prior


def truths_in_top_k(rows: pd.DataFrame, scores: np.ndarray, k: int = K) -> np.ndarray:
    """For each target-type truth row (TARGET_LABEL) of `rows`, in row order: is it in its session's top k
    (by score descending, then aid; missing scores last)?

    Counts, for each truth, the rows of its session that rank above it, instead of sorting every
    row: choose_rounds asks this for every round count it tries, and a sort of the held-out rows
    each time took most of a minute per type at 1M sessions."""
    sessions, aids = rows["session"].to_numpy(), rows["aid"].to_numpy()
    values = np.asarray(scores, dtype=np.float64)
    values = np.where(np.isnan(values), -np.inf, values)
    truths = np.flatnonzero(rows[LABEL_COLUMN].to_numpy() == TARGET_LABEL)
    # Each session's rows as one contiguous run (a stable sort: free when rows come sorted by session).
    order = np.argsort(sessions, kind="stable")
    ordered = sessions[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    run_ends = np.r_[starts[1:], len(order)]
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    run = np.searchsorted(starts, position[truths], side="right") - 1
    lengths = run_ends[run] - starts[run]
    # Every (truth, row of the truth's session) pair.
    pair_truth = np.repeat(np.arange(len(truths)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    other = order[np.repeat(starts[run], lengths) + offsets]
    mine = truths[pair_truth]
    above = (values[other] > values[mine]) | ((values[other] == values[mine]) & (aids[other] < aids[mine]))
    return np.bincount(pair_truth, weights=above, minlength=len(truths)) < k


def choose_rounds(rows: pd.DataFrame, train: pd.DataFrame, config: RankerConfig, seed: int) -> tuple[object, int, dict[int, int]]:
    """Fit on part of `train`'s sessions and pick the rounds that do best on the rest.

    `rows`: candidate rows including every row of the training sessions (the held-out part is
    scored on its full candidate lists, as evaluation will be); `train`: the training sessions'
    downsampled rows. Returns the model fitted on the kept sessions, the chosen rounds (ties go to
    fewer) and the hits per rounds.
    """
    sessions = np.sort(train["session"].unique())
    held = np.random.default_rng(seed).random(len(sessions)) < config.validation_share
    if held.sum() == 0 or held.all():
        return None, 0, {0: 0}
    held_sessions = sessions[held]
    model = _fit(train[~train["session"].isin(held_sessions)], config, config.num_boost_round)
    held_rows = rows[rows["session"].isin(held_sessions)]
    tried = sorted({0, *range(config.round_step, model.num_trees() + 1, config.round_step), model.num_trees()})
    features, scores, scored_rounds = held_rows[FEATURE_COLUMNS].to_numpy(dtype=np.float32), prior_score(held_rows), 0
    in_top = {}
    for r in tried:
        # Raw LambdaRank scores add up over trees: score only the trees added since the last step.
        if r > scored_rounds:
            scores = scores + model.predict(features, start_iteration=scored_rounds, num_iteration=r - scored_rounds,
                                            num_threads=config.num_threads)
            scored_rounds = r
        in_top[r] = truths_in_top_k(held_rows, scores)
    hits = {r: int(found.sum()) for r, found in in_top.items()}
    significant = [r for r in tried if r == 0 or beats_hand_rule(in_top[r], in_top[0], config.min_gain_z)]
    best = max(significant, key=lambda r: (hits[r], -r))
    return model, best, hits


def beats_hand_rule(found: np.ndarray, found_by_hand_rule: np.ndarray, z: float) -> bool:
    """One-sided McNemar test on the truths boosting gains and loses against the hand rule:
    (gains - losses) > z * sqrt(gains + losses). Few buyers -> few changed truths -> not enough."""
    gains = int((found & ~found_by_hand_rule).sum())
    losses = int((~found & found_by_hand_rule).sum())
    return gains - losses > z * np.sqrt(gains + losses)


def fit_target(rows: pd.DataFrame, event_type: str, config: RankerConfig) -> TargetResult:
    """K-fold out-of-fold scores for every row of one target type, and the all-sessions model.

    `rows`: candidate rows of `event_type` with FEATURE_COLUMNS and `label`.
    """
    started = time.perf_counter()
    negatives = config.negatives_per_session[event_type]
    fold_of = assign_folds(rows["session"].to_numpy(), config.folds, config.seed)
    row_fold = fold_of.reindex(rows["session"].to_numpy()).to_numpy()
    train_all = training_rows(rows, negatives, config.seed)
    train_fold = fold_of.reindex(train_all["session"].to_numpy()).to_numpy()
    oof = np.full(len(rows), np.nan)
    records = []
    for fold in range(config.folds):
        train = train_all[train_fold != fold]
        scored = row_fold == fold
        if len(train) == 0:
            raise ValueError(f"{event_type}: fold {fold} has no training session with a positive; too little data")
        # Held-out sessions are drawn from `train`, which never holds a session of the scored fold.
        model, rounds, hits = choose_rounds(rows, train, config, config.seed + 1 + fold)
        # In slices: a fold of a 1M-session week is ~5M rows, and a copy of it is not needed.
        for part in np.array_split(np.flatnonzero(scored), max(1, int(scored.sum()) // PREDICT_ROWS)):
            oof[part] = predict_scores(model, rows.iloc[part], config.num_threads, rounds)
        records.append(FoldRecord(
            fold=fold,
            train_sessions=set(train["session"].unique().tolist()),
            scored_sessions=set(rows.loc[scored, "session"].unique().tolist()),
            train_rows=len(train),
            rounds=rounds,
            validation_hits=hits,
        ))
    final_rounds = int(np.median([record.rounds for record in records]))
    # LightGBM cannot fit zero rounds: a one-round booster ships, and scoring with rounds=0
    # (recorded beside it in the bundle) ignores it and uses the prior alone.
    final = _fit(train_all, config, max(final_rounds, 1))
    importance = pd.Series(final.feature_importance("gain"), index=FEATURE_COLUMNS, name=event_type)
    return TargetResult(
        event_type=event_type,
        model=final,
        oof=rows[list(KEY_COLUMNS)].assign(**{SCORE_COLUMN: oof}),
        folds=records,
        feature_importance=importance,
        train_rows=len(train_all),
        train_sessions=int(train_all["session"].nunique()),
        rounds=final_rounds,
        seconds=time.perf_counter() - started,
    )


def top_k(scored: pd.DataFrame, score_column: str = SCORE_COLUMN, k: int = K) -> pd.DataFrame:
    """`session, type, aid, rank` of the k best rows per (session, type) (ties: smaller aid first)."""
    ordered = scored.sort_values(["session", "type", score_column, "aid"], ascending=[True, True, False, True])
    ordered = ordered.assign(rank=ordered.groupby(["session", "type"], sort=False).cumcount() + 1)
    return ordered[ordered["rank"] <= k][["session", "type", "aid", "rank"]]


def ranked_by(rows: pd.DataFrame, rank_column: str, k: int = K) -> pd.DataFrame:
    """Predictions of a rule that already ranks the rows (e.g. `baseline_rank`); unranked rows drop out."""
    ranked = rows[rows[rank_column].notna() & (rows[rank_column] <= k)]
    return ranked[["session", "type", "aid"]].assign(rank=ranked[rank_column].astype("int64"))


def recall_at_k_curve(predictions: pd.DataFrame, labels: pd.DataFrame, ks=(1, 2, 5, 10, 15, 20)) -> pd.DataFrame:
    """Recall per type at several cut-offs of one ranked list."""
    rows = []
    for k in ks:
        metrics = score_predictions(predictions[predictions["rank"] <= k], labels, k=20)
        rows.append({"k": k, **{t: metrics[f"recall_{t}"] for t in EVENT_TYPES}, "score": metrics["score"]})
    return pd.DataFrame(rows)


def load_feature_rows(features_dir: str | Path, event_type: str) -> pd.DataFrame:
    """One type's candidate rows from the features Parquet, features as float32, sorted by (session, aid).

    pyarrow, not Spark, and lean: the type is a categorical constant, the sort happens in Arrow and
    the Arrow buffers are released while pandas takes them over (a 1M-session week holds about 15M
    rows per type)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(features_dir), format="parquet", exclude_invalid_files=True)
    # Readahead of one batch and file: the default decodes many unfiltered batches at once (2.5x the
    # table's size in memory at 1M sessions).
    table = dataset.scanner(columns=["session", "aid", *FEATURE_COLUMNS], filter=ds.field("type") == event_type,
                            batch_readahead=1, fragment_readahead=1).to_table()
    table = table.cast(pa.schema([pa.field("session", pa.int64()), pa.field("aid", pa.int64()),
                                  *[pa.field(name, pa.float32()) for name in FEATURE_COLUMNS]]))
    # Spark writes rows in no fixed order; sorted rows make negative sampling and fits reproducible.
    # Column by column, so the unsorted and the sorted copy never both exist whole.
    order = pc.sort_indices(table.select(["session", "aid"]), sort_keys=[("session", "ascending"), ("aid", "ascending")])
    names, columns = table.column_names, []
    for name in list(names):
        columns.append(table.column(name).take(order))
        table = table.drop_columns([name])
    table = pa.table(columns, names=names)
    columns.clear()  # the table holds the only reference, so self_destruct can free each column as pandas takes it
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    # Every type's frame shares the metrics' categorical, so concatenating them stays categorical and
    # fast, and scoring needs no conversion.
    codes = np.full(len(frame), EVENT_TYPES.index(event_type), dtype=np.int8)
    frame.insert(1, "type", pd.Categorical.from_codes(codes, dtype=TYPE_DTYPE))
    return frame


@dataclass
class RankerEvaluation:
    results: dict[str, TargetResult]
    predictions: dict[str, pd.DataFrame]  # ranking name -> top-k `session, type, aid, rank`
    metrics: dict[str, dict[str, float]]  # ranking name -> score_predictions(...)
    ceiling: dict[str, float]  # recall of the unordered candidate set

    @property
    def score(self) -> float:
        return self.metrics[RANKER]["score"]


RANKER = "ranker"
BASELINE_COVISITATION = "baseline_covisitation"
BASELINE_POPULARITY = "baseline_popularity"
BASELINES = (BASELINE_COVISITATION, BASELINE_POPULARITY)


def evaluate_ranker(features_dir: str | Path, labels: pd.DataFrame, config: RankerConfig, types=EVENT_TYPES) -> RankerEvaluation:
    """Fit every target on week W's evaluation sessions; score the OOF predictions and both baselines
    on the same candidate rows."""
    results: dict[str, TargetResult] = {}
    parts: dict[str, list[pd.DataFrame]] = {RANKER: [], BASELINE_COVISITATION: [], BASELINE_POPULARITY: []}
    positives = []
    for event_type in types:
        rows = attach_labels(load_feature_rows(features_dir, event_type), labels)
        result = fit_target(rows, event_type, config)
        results[event_type] = result
        parts[RANKER].append(top_k(result.oof))
        # Only the top k is used from here on: the full scores of a type are ~15M rows at 1M sessions.
        result.oof = result.oof.iloc[:0]
        parts[BASELINE_COVISITATION].append(ranked_by(rows, "baseline_rank"))
        parts[BASELINE_POPULARITY].append(ranked_by(rows, "top_sellers_rank"))
        positives.append(rows.loc[rows[LABEL_COLUMN] == TARGET_LABEL, list(KEY_COLUMNS)])
        del rows
    predictions = {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}
    return RankerEvaluation(
        results=results,
        predictions=predictions,
        metrics={name: score_predictions(frame, labels) for name, frame in predictions.items()},
        ceiling=candidate_recall(pd.concat(positives, ignore_index=True), labels),
    )
