"""LightGBM LambdaRank per target with session-grouped K-fold: the week's honest evaluation.

For each target type (clicks, carts, orders) the rows are the candidate rows of that type,
labelled by the session's truth (`graded_labels`). Sessions fall into K folds by a seeded hash of
their id; fold k's model is trained on sessions of the other folds and scores fold k only, so
every out-of-fold score comes from a model that never saw that session. Queries without a
positive carry no LambdaRank gradient and are left out of training; negatives are downsampled
per session (seeded), positives always kept.

Where the work happens: the rows stay in Spark. Only the training sample reaches the driver
(`training_sample`: at most `max_train_sessions` per fit and about `max_sample_rows` rows per
type, so the driver's memory follows the configuration, not the week) and is binned once per
type (`binned_rows`; every fit is a subset of it). The boosters go back out to score every row in
Python tasks that read the features' files themselves (`score_lake_rows`; served rows, computed
in the plan, go through `score_rows`), and the metrics are Spark aggregates
(`pipelines.metrics.spark_*`).

Boosting starts from the hand rule's order, and how far it moves away is chosen inside each
training fold: a share of the training sessions (`validation_share`, by hash) is held out of the
fold's fit, and the number of rounds (zero included: the hand rule itself) that puts the most
true items into their top 20 is the fold's, provided its gain over the hand rule is more than
noise (`beats_hand_rule`). A target with too few buyers to learn from therefore stays at the
baseline instead of adding noise, and the choice never looks at the sessions the fold scores.
The final model of a type is fitted like a fold's (at most `max_train_sessions` sessions of the
sample, the same size the rounds were chosen at) with the median of the folds' rounds, and serves
in production.

Several weeks of labels: the labelled sessions of up to `label_weeks - 1` earlier weeks join
the training sample (`labelled_rows_of_weeks`), each week's rows as its own `features` partition
holds them, built with that week's sources and visible prefixes, so no week's hidden events reach
its features. The folds, by session hash, cut across every week; only week W's rows are scored and
measured, each by the fold model that never saw the session. Training cuts (more cuts of the same
sessions, followed by a cart or an order: `TrainingCuts`) join the sample as queries of their own,
drawn, held out and folded with their origin session, so no fold model sees a cut of a session it
scores; they are never scored.

LightGBM's OpenMP threads do not survive being copied into a child process: nothing here starts
one, and every process pool of the project and its tests uses the `spawn` start method.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from pipelines.diversity import MMR_POOL, mmr_ranking_name, mmr_rerank, unit_factors
from pipelines.features import FEATURE_COLUMNS, KEY_COLUMNS
from pipelines.metrics import K, spark_candidate_recall, spark_score
from pipelines.popularity import popularity_predictions
from pipelines.spark import broadcast_if_small
from pipelines.vocabulary import EVENT_TYPES

LABEL_COLUMN = "label"
# Label of a candidate in its target type's truth; 1 marks the related buy type's truth.
TARGET_LABEL = 2
SCORE_COLUMN = "score"
# Graded relevance: the target's own truth is 2; for carts and orders, the other buy type's
# truth is 1 (a carted item is often ordered later), which multiplies the scarce order signal.
RELATED_TRUTH = {"carts": "orders", "orders": "carts"}
# Candidates the hand rule does not rank (ALS-only) start below every ranked one.
UNRANKED_PRIOR_RANK = 200.0


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
    # fitting time, not accuracy, is what grows. It also bounds what reaches the driver.
    max_train_sessions: int = 50_000
    # Candidate rows of one type that reach the driver, about (the sessions drawn shrink to fit):
    # what bounds the driver's memory whatever the week's size. Below the session cap only on
    # large weeks (at 1M sessions, clicks: ~5M rows for the session cap).
    max_sample_rows: int = 3_000_000
    # 63 histogram bins instead of LightGBM's 255: fits about half as long on these features.
    max_bin: int = 63
    num_threads: int = 0
    # Weeks of labelled sessions a ranker trains on: W and the weeks before it whose features are
    # in the lake (`earlier_labelled_weeks`).
    label_weeks: int = 4
    # Also train on those weeks' training cuts (`RECSYS_TRAINING_CUTS` > 0 writes them).
    use_training_cuts: bool = False

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
    # Sessions the fold's model was fitted on, training cuts by their origin (none in the fold it scores).
    train_sessions: set[int]
    held_out_sessions: int
    train_rows: int
    rounds: int
    # True items in the held-out top 20 by rounds tried (0 = the hand rule alone).
    validation_hits: dict[int, int]


@dataclass
class TargetResult:
    event_type: str
    model: object  # lightgbm.Booster fitted on every sampled session: the production model
    fold_models: dict[int, object]  # fold -> booster that scores it (None: the hand rule alone)
    folds: list[FoldRecord]
    feature_importance: pd.Series
    sample_rows: int  # rows that reached the driver
    train_rows: int
    train_sessions: int
    rounds: int
    seconds: float

    @property
    def fold_rounds(self) -> dict[int, int]:
        return {record.fold: record.rounds for record in self.folds}

    def fold_model_strings(self) -> dict[int, str | None]:
        return {fold: (model.model_to_string() if model is not None else None) for fold, model in self.fold_models.items()}


# --- Spark: labels, folds, the training sample ---------------------------------------------


def session_uniform(seed: int, salt: str, column: str = "session"):
    """A Spark column: a uniform number in [0, 1) per session id in `column`, fixed by `seed` and
    `salt` (draws with different salts are independent), the same on every partitioning and machine."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(column, F.lit(seed), F.lit(salt)), F.lit(1 << 30)) / float(1 << 30)


def fold_column(folds: int, seed: int, column: str = "session"):
    """A Spark column: the fold, 0..folds-1, of the session id in `column`."""
    from pyspark.sql import functions as F

    return F.floor(session_uniform(seed, "fold", column) * folds).cast("int")


_XXH_PRIMES = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5)


def session_uniform_array(sessions: np.ndarray, seed: int, salt: str) -> np.ndarray:
    """`session_uniform` of an array of session ids, bit for bit: Spark's `xxhash64(session, seed,
    salt)` (XXH64 of the long, then of the int seed, then of the salt's UTF-8 bytes, each seeded by
    the one before, starting at 42), so Python workers reading the lake's files directly assign
    the folds the training sample was drawn with."""
    p1, p2, p3, p4, p5 = (np.uint64(prime) for prime in _XXH_PRIMES)

    def rotl(x, bits):
        return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))

    def mix_word(h, word):
        return rotl(h ^ (rotl(word * p2, 31) * p1), 27) * p1 + p4

    def mix_half_word(h, half_word):
        return rotl(h ^ (np.uint64(half_word) * p1), 23) * p2 + p3

    def finish(h):
        h = (h ^ (h >> np.uint64(33))) * p2
        h = (h ^ (h >> np.uint64(29))) * p3
        return h ^ (h >> np.uint64(32))

    with np.errstate(over="ignore"):
        h = finish(mix_word(np.uint64(42) + p5 + np.uint64(8), np.asarray(sessions, dtype=np.int64).view(np.uint64)))
        if -(1 << 31) <= seed < (1 << 31):  # F.lit of a Python int: an int column, else a long
            h = finish(mix_half_word(h + p5 + np.uint64(4), seed & 0xFFFFFFFF))
        else:
            h = finish(mix_word(h + p5 + np.uint64(8), np.uint64(seed & (2**64 - 1))))
        data = salt.encode()
        if len(data) >= 32:
            raise ValueError("salts of 32 bytes or more take another XXH64 path; use a shorter salt")
        h = h + p5 + np.uint64(len(data))
        offset = 0
        while offset + 8 <= len(data):
            h = mix_word(h, np.uint64(int.from_bytes(data[offset:offset + 8], "little")))
            offset += 8
        if offset + 4 <= len(data):
            h = mix_half_word(h, int.from_bytes(data[offset:offset + 4], "little"))
            offset += 4
        for byte in data[offset:]:
            h = rotl(h ^ (np.uint64(byte) * p5), 11) * p1
        hashed = finish(h).view(np.int64)
    return np.mod(hashed, 1 << 30) / float(1 << 30)


def fold_array(sessions: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """`fold_column` of an array of session ids."""
    return np.floor(session_uniform_array(sessions, seed, "fold") * folds).astype(np.int32)


def graded_labels(labels):
    """Spark `session, type, aid, label`: 2 for the type's own truth, 1 where the aid is in the
    session's truth of the related buy type (`RELATED_TRUTH`), the larger when both."""
    from pyspark.sql import functions as F

    truth = labels.select(*KEY_COLUMNS).distinct()
    related_type = F.create_map(*[F.lit(x) for pair in RELATED_TRUTH.items() for x in pair])
    related = truth.where(F.col("type").isin(*RELATED_TRUTH)).select("session", related_type[F.col("type")].alias("type"), "aid")
    graded = truth.withColumn(LABEL_COLUMN, F.lit(TARGET_LABEL)).unionByName(related.withColumn(LABEL_COLUMN, F.lit(1)))
    return graded.groupBy(*KEY_COLUMNS).agg(F.max(LABEL_COLUMN).cast("tinyint").alias(LABEL_COLUMN))


def labelled_rows(features, graded, config: RankerConfig, origins=None):
    """Spark: the candidate feature rows of every type with `label`, `origin` (the evaluation
    session the query was cut from: itself, or `origins`' `session, origin` for training cuts) and
    `fold` (the origin's, so no fold model trains on a cut of a session it scores)."""
    from pyspark.sql import functions as F

    rows = features.select(*KEY_COLUMNS, *FEATURE_COLUMNS)
    rows = (rows.withColumn("origin", F.col("session")) if origins is None
            else rows.join(broadcast_if_small(origins.select("session", "origin")), "session"))
    return (
        rows.join(broadcast_if_small(graded), list(KEY_COLUMNS), "left")
        .fillna(0, subset=[LABEL_COLUMN])
        .withColumn("fold", fold_column(config.folds, config.seed, "origin"))
    )


@dataclass(frozen=True)
class TrainingCuts:
    """One week's training-cut queries (`pipelines.evaluation.split_training_cuts`) as Spark frames."""

    features: object  # `training_features` rows
    labels: object  # long labels: session, type, aid
    origins: object  # session, origin


def labelled_rows_of_weeks(features, labels, config: RankerConfig, earlier_weeks=(), training_cuts=()):
    """`labelled_rows` of week W (`features`, long `labels`), of `earlier_weeks` ((features,
    labels) pairs, newest first), each week labelled by its own truth, and of `training_cuts`
    (`TrainingCuts` of any of those weeks). A session whose events run into a later week is that
    week's: its earlier evaluation rows are left out, so no session is two evaluation queries."""
    rows = labelled_rows(features, graded_labels(labels), config)
    later_sessions = features.select("session")
    for week_features, week_labels in earlier_weeks:
        week_rows = labelled_rows(week_features, graded_labels(week_labels), config)
        rows = rows.unionByName(week_rows.join(later_sessions.distinct(), "session", "left_anti"))
        later_sessions = later_sessions.unionByName(week_features.select("session"))
    for cuts in training_cuts:
        rows = rows.unionByName(labelled_rows(cuts.features, graded_labels(cuts.labels), config, cuts.origins))
    return rows


def earlier_labelled_weeks(spark, lake, week, config: RankerConfig) -> tuple[dict, dict[str, str]]:
    """{week key: (features, long labels)} of the `label_weeks - 1` weeks before `week`, newest
    first, that the lake holds with every feature column, and why any other of those weeks is left
    out: `evaluate_ranker(..., earlier_weeks=list(weeks.values()))`."""
    from pipelines.evaluation import EVAL_LABELS_TABLE, labels_long
    from pipelines.features import FEATURES_TABLE

    weeks, skipped = {}, {}
    for back in range(1, config.label_weeks):
        earlier = week.shift(-back)
        if not (lake.has_partition(FEATURES_TABLE, earlier) and lake.has_partition(EVAL_LABELS_TABLE, earlier)):
            skipped[earlier.key] = "no features or evaluation labels in the lake"
            continue
        week_features = lake.read_partition(spark, FEATURES_TABLE, earlier)
        missing = sorted(set(FEATURE_COLUMNS) - set(week_features.columns))
        if missing:
            skipped[earlier.key] = f"features of older code: no {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            continue
        weeks[earlier.key] = (week_features, labels_long(lake.read_partition(spark, EVAL_LABELS_TABLE, earlier)))
    return weeks, skipped


def training_cuts_of_weeks(spark, lake, weeks) -> tuple[dict, dict[str, str]]:
    """{week key: `TrainingCuts`} of the `weeks` whose training cuts the lake holds with every
    feature column, and why any other week's are left out."""
    from pipelines.evaluation import TRAINING_CUTS_TABLE, labels_long
    from pipelines.features import TRAINING_FEATURES_TABLE

    found, skipped = {}, {}
    for week in weeks:
        if not (lake.has_partition(TRAINING_FEATURES_TABLE, week) and lake.has_partition(TRAINING_CUTS_TABLE, week)):
            skipped[week.key] = "no training cuts in the lake"
            continue
        cut_features = lake.read_partition(spark, TRAINING_FEATURES_TABLE, week)
        if set(FEATURE_COLUMNS) - set(cut_features.columns):
            skipped[week.key] = "training cuts of older code"
            continue
        cuts = lake.read_partition(spark, TRAINING_CUTS_TABLE, week)
        found[week.key] = TrainingCuts(cut_features, labels_long(cuts), cuts.select("session", "origin"))
    return found, skipped


@dataclass
class WeekTraining:
    """What the `ranker` stage trained and scored for week W (`evaluate_week`)."""

    evaluation: "RankerEvaluation"
    features: object  # W's evaluation rows (Spark)
    labels: object  # W's long labels (Spark)
    label_weeks: list[str]  # W, then the earlier weeks whose evaluation sessions were trained on
    cut_weeks: list[str]  # the weeks whose training cuts were trained on
    skipped: dict[str, str]  # week key -> why its labels or its training cuts were left out


def evaluate_week(spark, lake, week, sources_week, config: RankerConfig, mmr_lambdas=()) -> WeekTraining:
    """`evaluate_ranker` on week W's labelled rows as the `ranker` stage trains it: W's and the
    earlier weeks' evaluation rows (`earlier_labelled_weeks`), the training cuts of those weeks
    (with `config.use_training_cuts`),
    the popularity baseline from the lists the rows were built from (`sources_week`'s), and the MMR
    reranks at `mmr_lambdas` with `sources_week`'s ALS item factors."""
    from pipelines.als import ALS_ITEM_FACTORS_TABLE
    from pipelines.evaluation import EVAL_LABELS_TABLE, labels_long
    from pipelines.features import FEATURES_TABLE
    from pipelines.popularity import TOP_SELLERS_TABLE

    earlier, skipped = earlier_labelled_weeks(spark, lake, week, config)
    label_weeks = [week, *(week.shift(-back) for back in range(1, config.label_weeks) if week.shift(-back).key in earlier)]
    cuts, skipped_cuts = training_cuts_of_weeks(spark, lake, label_weeks) if config.use_training_cuts else ({}, {})
    skipped.update({key: f"training cuts: {why}" for key, why in skipped_cuts.items()})
    features = lake.read_partition(spark, FEATURES_TABLE, week)
    labels = labels_long(lake.read_partition(spark, EVAL_LABELS_TABLE, week))
    evaluation = evaluate_ranker(features, labels, lake.read_partition(spark, TOP_SELLERS_TABLE, sources_week),
                                 config, earlier_weeks=list(earlier.values()), training_cuts=list(cuts.values()),
                                 item_factors=lake.read_partition(spark, ALS_ITEM_FACTORS_TABLE, sources_week),
                                 mmr_lambdas=mmr_lambdas)
    return WeekTraining(evaluation, features, labels, [w.key for w in label_weeks], list(cuts), skipped)


def sampled_sessions_per_type(config: RankerConfig) -> int:
    """Sessions with a positive drawn per type: enough that each fold's fit (on the other folds,
    less the held-out validation sessions) still sees up to `max_train_sessions`."""
    per_fold_fit = config.folds / max(config.folds - 1, 1) / max(1.0 - config.validation_share, 1e-9)
    return math.ceil(config.max_train_sessions * per_fold_fit)


def sessions_with_a_positive(labelled):
    """Spark `type, session, origin, rows`: for every type, the sessions with a positive among their
    candidate rows, and how many rows they have (one pass over every type's rows; persist it when
    several types are sampled)."""
    from pyspark.sql import functions as F

    return (
        labelled.groupBy("type", "session")
        .agg(F.max(LABEL_COLUMN).alias("best_label"), F.count(F.lit(1)).alias("rows"), F.max("origin").alias("origin"))
        .where(F.col("best_label") > 0)
        .select("type", "session", "origin", "rows")
    )


def training_sample(labelled, event_type: str, config: RankerConfig, positives=None) -> pd.DataFrame:
    """Every candidate row of a seeded sample of the sessions with a positive
    (`sampled_sessions_per_type` of them, fewer where their rows would pass `max_sample_rows`),
    drawn in Spark; a `validation_share` of the sessions is
    flagged `validation` (held out of the fold fits and ranked on their whole candidate list, as
    evaluation ranks them). `fit_target` downsamples the negatives of the others.

    Its size follows the configuration, not the week: about `max_sample_rows` at most. Pandas
    `session, aid, label, fold, validation, *FEATURE_COLUMNS`, features float32, sorted by
    (session, aid) so LightGBM's groups are contiguous and fits are reproducible. `positives`:
    `sessions_with_a_positive(labelled)`, computed here when not given."""
    from pyspark.sql import functions as F

    positives = sessions_with_a_positive(labelled) if positives is None else positives
    rows = labelled.where(F.col("type") == event_type)
    with_positive = positives.where(F.col("type") == event_type).select("session", "origin", "rows")
    totals = with_positive.agg(F.count(F.lit(1)).alias("sessions"), F.sum("rows").alias("rows")).first()
    if totals["sessions"] == 0:
        raise ValueError(f"{event_type}: no evaluation session has a positive; too little data to train a ranker")
    share = min(1.0, sampled_sessions_per_type(config) / totals["sessions"], config.max_sample_rows / totals["rows"])
    # Drawn by origin session: a training cut goes with its session into the sample and the validation share.
    chosen = with_positive.where(session_uniform(config.seed, "sample", "origin") < share).select(
        "session", (session_uniform(config.seed, "validation", "origin") < config.validation_share).alias("validation"))
    kept = rows.join(broadcast_if_small(chosen), "session").select(
        "session", "origin", "aid", LABEL_COLUMN, "fold", "validation",
        *[F.col(c).cast("float").alias(c) for c in FEATURE_COLUMNS])
    sample = kept.toArrow().to_pandas(split_blocks=True, self_destruct=True)
    return sample.sort_values(["session", "aid"], kind="stable", ignore_index=True)


# --- driver: fitting on the sample -----------------------------------------------------------


def prior_score(frame: pd.DataFrame) -> np.ndarray:
    """The hand rule as a starting score (-log2(1 + rank)): boosting learns corrections to the
    baseline's order instead of rediscovering it, which matters when a week has few buyers."""
    return prior_from_ranks(frame["baseline_rank"].to_numpy(dtype=np.float64, na_value=np.nan))


def prior_from_ranks(baseline_ranks: np.ndarray) -> np.ndarray:
    """`prior_score` of an array of baseline ranks (NaN: unranked)."""
    return -np.log2(1.0 + np.where(np.isnan(baseline_ranks), UNRANKED_PRIOR_RANK, baseline_ranks))


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


def binned_rows(train: pd.DataFrame, config: RankerConfig):
    """`train` (sorted by session, index 0..n-1) as one LightGBM dataset, binned once: every fit
    of a target is a `subset` of its rows (whole sessions), which shares these bins instead of
    copying and binning its rows again."""
    import lightgbm as lgb

    return lgb.Dataset(
        train[FEATURE_COLUMNS].to_numpy(dtype=np.float32),
        label=train[LABEL_COLUMN].to_numpy(),
        group=train.groupby("session", sort=False).size().to_numpy(),
        init_score=prior_score(train),
        feature_name=list(FEATURE_COLUMNS),
        params=config.lightgbm_params(),
        free_raw_data=True,
    ).construct()


def _fit(train: pd.DataFrame, config: RankerConfig, rounds: int, binned=None):
    """Fit on `train`'s sessions (at most `max_train_sessions` of them). `binned`: the
    `binned_rows` of the frame `train` was selected from (its index names the rows); without it
    `train` is binned on its own."""
    import lightgbm as lgb

    train = capped_sessions(train, config.max_train_sessions, config.seed)
    if binned is not None:
        dataset = binned.subset(train.index.to_numpy(dtype=np.int32))
    else:
        dataset = binned_rows(train.reset_index(drop=True), config)
    return lgb.train(config.lightgbm_params(), dataset, num_boost_round=rounds)


def predict_scores(model, frame: pd.DataFrame, num_threads: int = 0, rounds: int | None = None) -> np.ndarray:
    """The model's corrections (its first `rounds` trees; all by default) plus the prior it was
    trained from (LightGBM does not store init scores). Zero rounds, or no model, is the prior alone.
    For pandas rows (tests, notebooks); Spark rows go through `score_rows`."""
    prior = prior_score(frame)
    if model is None or rounds == 0:
        return prior
    return boosted_scores(model, frame[FEATURE_COLUMNS].to_numpy(dtype=np.float32), prior, num_threads, rounds)


def boosted_scores(model, features: np.ndarray, prior: np.ndarray, num_threads: int = 0, rounds: int | None = None) -> np.ndarray:
    """`predict_scores` on a float32 feature matrix (FEATURE_COLUMNS order) and its prior."""
    if model is None or rounds == 0:
        return prior
    return model.predict(features, num_iteration=rounds, num_threads=num_threads) + prior


def truths_in_top_k(rows: pd.DataFrame, scores: np.ndarray, k: int = K) -> np.ndarray:
    """For each target-type truth row (TARGET_LABEL) of `rows`, in row order: is it in its session's top k
    (by score descending, then aid; missing scores last)?

    Counts, for each truth, the rows of its session that rank above it, instead of sorting every
    row: choose_rounds asks this for every round count it tries."""
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


def choose_rounds(held_rows: pd.DataFrame, train: pd.DataFrame, config: RankerConfig,
                  binned=None) -> tuple[object, int, dict[int, int]]:
    """Fit on `train`'s sessions outside `held_rows` and pick the rounds that do best on `held_rows`.

    `held_rows`: every candidate row of the held-out sessions (scored on their full candidate
    lists, as evaluation will be); `train`: downsampled training rows. Returns the model fitted on
    the other sessions, the chosen rounds (ties go to fewer) and the hits per rounds. `binned`: as
    in `_fit`.
    """
    kept = train[~train["session"].isin(held_rows["session"].unique())]
    if len(held_rows) == 0 or len(kept) == 0:
        return None, 0, {0: 0}
    model = _fit(kept, config, config.num_boost_round, binned)
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


def fit_target(sample: pd.DataFrame, event_type: str, config: RankerConfig) -> TargetResult:
    """The fold models and the production model of one target type, from its `training_sample`."""
    started = time.perf_counter()
    held_all = sample[sample["validation"].to_numpy(dtype=bool)]
    train_all = training_rows(sample, config.negatives_per_session[event_type], config.seed).reset_index(drop=True)
    binned = binned_rows(train_all, config)
    # The features now live in `binned`; the fits only select sessions.
    train_all = train_all[["session", "origin", "aid", LABEL_COLUMN, "fold"]]
    records, fold_models = [], {}
    for fold in range(config.folds):
        train = train_all[train_all["fold"] != fold]
        if len(train) == 0:
            raise ValueError(f"{event_type}: fold {fold} has no training session with a positive; too little data")
        held = held_all[held_all["fold"] != fold]
        model, rounds, hits = choose_rounds(held, train, config, binned)
        fold_models[fold] = model
        records.append(FoldRecord(
            fold=fold,
            train_sessions=set(train.loc[~train["origin"].isin(held["origin"].unique()), "origin"].unique().tolist()),
            held_out_sessions=int(held["session"].nunique()),
            train_rows=len(train),
            rounds=rounds,
            validation_hits=hits,
        ))
    final_rounds = int(np.median([record.rounds for record in records]))
    # LightGBM cannot fit zero rounds: a one-round booster ships, and scoring with rounds=0
    # (recorded beside it in the bundle) ignores it and uses the prior alone.
    final = _fit(train_all, config, max(final_rounds, 1), binned)
    return TargetResult(
        event_type=event_type,
        model=final,
        fold_models=fold_models,
        folds=records,
        feature_importance=pd.Series(final.feature_importance("gain"), index=FEATURE_COLUMNS, name=event_type),
        sample_rows=len(sample),
        train_rows=len(train_all),
        train_sessions=min(int(train_all["session"].nunique()), config.max_train_sessions),  # `_fit` caps
        rounds=final_rounds,
        seconds=time.perf_counter() - started,
    )


# --- Spark: scoring and ranking every row ----------------------------------------------------


def _batch_scores(batch, boosters: list, booster_index: np.ndarray, rounds: list) -> np.ndarray:
    """Scores of an Arrow batch of feature rows, row i by `boosters[booster_index[i]]` with its first
    `rounds[booster_index[i]]` trees (a missing booster, or zero rounds, is the prior alone)."""
    features = np.empty((batch.num_rows, len(FEATURE_COLUMNS)), dtype=np.float32)
    for position, name in enumerate(FEATURE_COLUMNS):
        features[:, position] = batch.column(name).to_numpy(zero_copy_only=False)
    scores = prior_from_ranks(batch.column("baseline_rank").to_numpy(zero_copy_only=False).astype(np.float64))
    for value in np.unique(booster_index):
        index = np.flatnonzero(booster_index == value)
        # One thread per Python worker: Spark already runs one worker per core.
        scores[index] = boosted_scores(boosters[value], features[index], scores[index], num_threads=1,
                                       rounds=rounds[value])
    return scores


def score_rows(rows, ranker_strings: dict, ranker_rounds: dict | None = None):
    """Spark `session, type, aid, score` for candidate feature rows computed in the plan: each row
    scored by the booster of its type with its first `ranker_rounds[type]` trees (all when not
    given; a type without a booster is the prior alone). Rows already in the lake go through
    `score_lake_rows`, which reads the files itself.

    Arrow batches go straight to NumPy (`mapInArrow`): through pandas, the conversion of every
    batch cost more than LightGBM's prediction."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql.types import DoubleType

    rounds = ranker_rounds or {}
    passed = ["session", "type", "aid"]
    needed = rows.select(*dict.fromkeys([*passed, "baseline_rank", *FEATURE_COLUMNS]))
    output = rows.select(*passed).schema.add("score", DoubleType())
    keys = sorted(ranker_strings)

    def score(batches):
        import lightgbm as lgb

        boosters = [lgb.Booster(model_str=ranker_strings[value]) if ranker_strings[value] else None for value in keys]
        key_set = pa.array(keys)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            # A type without a key gets index len(keys): no booster, the prior alone.
            booster_index = pc.fill_null(pc.index_in(batch.column("type"), value_set=key_set), len(keys))
            scores = _batch_scores(batch, boosters + [None], booster_index.to_numpy(zero_copy_only=False),
                                   [rounds.get(value) for value in keys] + [None])
            yield pa.RecordBatch.from_arrays([*(batch.column(name) for name in passed), pa.array(scores)],
                                             names=[*passed, "score"])

    return needed.mapInArrow(score, output)


def score_lake_rows(features, ranker_strings: dict, ranker_rounds: dict | None = None, folds: int | None = None,
                    seed: int = 0, keep=()):
    """Spark `session, type, aid, *keep, score` for a features table read from the lake (a Parquet
    read), each row scored by the booster of its type (`ranker_strings` keyed by type: serving) or,
    with `folds`, of its type and fold (keyed `type/fold`, `fold_array(session, folds, seed)` giving
    the fold: out of fold); rows of a type without a key are left out, a key without a booster
    scores the prior alone.

    Python tasks read the files' row groups straight with pyarrow: sending every feature column
    through Spark to Python cost several times LightGBM's prediction. Every executor must see
    the lake (it must anyway: README, "Running on a Spark cluster")."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

    files = features.inputFiles()
    if not files:
        raise ValueError("score_lake_rows reads the features' Parquet files: pass the partition as read from the lake")
    rounds = ranker_rounds or {}
    tasks = [(path, group) for path in files for group in range(_parquet_file(path).metadata.num_row_groups)]
    passed = ["session", "type", "aid", *[c for c in keep if c != "type"]]
    columns = list(dict.fromkeys([*passed, "baseline_rank", *FEATURE_COLUMNS]))
    schema = StructType([*(features.schema[name] for name in passed), StructField("score", DoubleType())])
    types = sorted({key.split("/")[0] for key in ranker_strings})
    # Booster of (type, fold) at index type_index * folds + fold; of a type at its index.
    keys = [f"{event_type}/{fold}" for event_type in types for fold in range(folds)] if folds else types
    work = features.sparkSession.createDataFrame(
        tasks, StructType([StructField("path", StringType()), StructField("row_group", IntegerType())]))

    def score(batches):
        import lightgbm as lgb

        boosters = [lgb.Booster(model_str=ranker_strings[key]) if ranker_strings.get(key) else None for key in keys]
        key_rounds = [rounds.get(key) for key in keys]
        type_set = pa.array(types)
        for batch in batches:
            for path, group in zip(batch.column("path").to_pylist(), batch.column("row_group").to_pylist()):
                table = _parquet_file(path).read_row_group(group, columns=columns)
                table = table.filter(pc.is_in(table.column("type"), value_set=type_set))
                for part in table.to_batches(max_chunksize=65_536):
                    booster_index = pc.index_in(part.column("type"), value_set=type_set).to_numpy(zero_copy_only=False)
                    if folds:
                        sessions = part.column("session").to_numpy(zero_copy_only=False)
                        booster_index = booster_index * folds + fold_array(sessions, folds, seed)
                    scores = _batch_scores(part, boosters, booster_index, key_rounds)
                    yield pa.RecordBatch.from_arrays([*(part.column(name) for name in passed), pa.array(scores)],
                                                     names=[*passed, "score"])

    # One task per row group, spread over the cluster.
    return work.repartition(max(len(tasks), 1)).mapInArrow(score, schema)


def _parquet_file(uri: str):
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    return pq.ParquetFile(filesystem.open_input_file(path))


def ranked_top_k(scored, k: int = K, score_column: str = SCORE_COLUMN):
    """The k best rows of Spark `scored` per (session, type), with `rank` (1 = best): score
    descending, ties by smaller aid, missing (null or NaN) scores last."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    value = F.when(~F.isnan(score_column), F.col(score_column))
    order = Window.partitionBy("session", "type").orderBy(value.desc_nulls_last(), F.asc("aid"))
    return scored.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)


def ranked_by(rows, rank_column: str, k: int = K):
    """Spark predictions of a rule that already ranks the rows (e.g. `baseline_rank`); unranked rows drop out."""
    from pyspark.sql import functions as F

    return rows.where(F.col(rank_column).between(1, k)).select(
        "session", "type", "aid", F.col(rank_column).cast("int").alias("rank"))


@dataclass
class RankerEvaluation:
    results: dict[str, TargetResult]
    # ranking name -> Spark top-k `session, type, aid, rank` (persisted; `release` frees them)
    predictions: dict[str, object]
    metrics: dict[str, dict[str, float]]  # ranking name -> spark_score(...)
    ceiling: dict[str, float]  # recall of the unordered candidate set
    # seconds: `sample.<type>` (Spark to the driver), `fit.<type>` (LightGBM), `score_and_metrics`
    # (out-of-fold scoring, rankings, scores; lazy Spark work runs there)
    timings: dict[str, float]

    @property
    def score(self) -> float:
        return self.metrics[RANKER]["score"]

    def release(self) -> None:
        for frame in self.predictions.values():
            frame.unpersist()


RANKER = "ranker"
BASELINE_COVISITATION = "baseline_covisitation"
BASELINE_POPULARITY = "baseline_popularity"
BASELINES = (BASELINE_COVISITATION, BASELINE_POPULARITY)


def evaluate_ranker(features, labels, top_sellers, config: RankerConfig, types=EVENT_TYPES, k: int = K,
                    earlier_weeks=(), training_cuts=(), item_factors=None, mmr_lambdas=()) -> RankerEvaluation:
    """Fit every target on week W's evaluation sessions (Spark `features` and long `labels`), those
    of `earlier_weeks` ((features, labels), newest first) and `training_cuts`, score W's out-of-fold
    predictions, the hand rule on the same candidate rows and the popularity baseline
    (`top_sellers`' lists) on the same sessions; with `item_factors`, also the out-of-fold lists
    reranked by MMR at each of `mmr_lambdas` (`pipelines.diversity`)."""
    from pyspark import StorageLevel

    labels = labels.select(*KEY_COLUMNS).persist(StorageLevel.MEMORY_AND_DISK)
    results: dict[str, TargetResult] = {}
    predictions: dict = {}
    scored = positives = None
    timings: dict[str, float] = {}
    try:
        rows = labelled_rows_of_weeks(features, labels, config, earlier_weeks, training_cuts)
        positives = sessions_with_a_positive(rows).persist(StorageLevel.MEMORY_AND_DISK)
        for event_type in types:
            clock = time.perf_counter()
            sample = training_sample(rows, event_type, config, positives)
            timings[f"sample.{event_type}"] = round(time.perf_counter() - clock, 1)
            results[event_type] = fit_target(sample, event_type, config)
            del sample
            timings[f"fit.{event_type}"] = round(results[event_type].seconds, 1)
        positives.unpersist()
        clock = time.perf_counter()
        # Every type in one pass over the features' files, each row by the booster of its (type,
        # fold); the rankings and the ceiling all read these rows.
        boosters = {f"{t}/{fold}": text for t, r in results.items() for fold, text in r.fold_model_strings().items()}
        rounds = {f"{t}/{fold}": n for t, r in results.items() for fold, n in r.fold_rounds.items()}
        scored = score_lake_rows(features, boosters, rounds, folds=config.folds, seed=config.seed,
                                 keep=("baseline_rank",)).persist(StorageLevel.MEMORY_AND_DISK)
        rankings = {
            RANKER: ranked_top_k(scored, k).select("session", "type", "aid", "rank"),
            BASELINE_COVISITATION: ranked_by(scored, "baseline_rank", k),
            BASELINE_POPULARITY: popularity_predictions(labels, top_sellers, k),
        }
        if item_factors is not None and mmr_lambdas:
            unit = unit_factors(item_factors)
            pool = ranked_top_k(scored, MMR_POOL).select("session", "type", "aid", SCORE_COLUMN)
            rankings.update({mmr_ranking_name(lam): mmr_rerank(pool, unit, lam, k) for lam in mmr_lambdas})
        predictions = {name: frame.persist(StorageLevel.MEMORY_AND_DISK) for name, frame in rankings.items()}
        metrics = {name: spark_score(frame, labels, k) for name, frame in predictions.items()}
        truth = broadcast_if_small(labels.select(*KEY_COLUMNS).distinct())
        ceiling = spark_candidate_recall(scored.select(*KEY_COLUMNS).join(truth, list(KEY_COLUMNS), "left_semi"), labels, k)
        timings["score_and_metrics"] = round(time.perf_counter() - clock, 1)
    except BaseException:
        for frame in predictions.values():
            frame.unpersist()
        raise
    finally:
        # The predictions are cached by now; what they were computed from is not needed again.
        for frame in (scored, labels, positives):
            if frame is not None:
                frame.unpersist()
    return RankerEvaluation(results=results, predictions=predictions, metrics=metrics, ceiling=ceiling, timings=timings)
