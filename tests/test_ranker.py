"""The ranker's K-fold protocol and the champion gate, on small synthetic frames.

The rows live in Spark as in production (the suite's local session); only the training sample
reaches pandas."""

from __future__ import annotations

import dataclasses
import tempfile

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from pipelines.features import FEATURE_COLUMNS
from pipelines.metrics import score_predictions, spark_score
from pipelines.popularity import popularity_predictions
from pipelines.ranker import (
    BASELINE_COVISITATION,
    LABEL_COLUMN,
    RANKER,
    TARGET_LABEL,
    RankerConfig,
    choose_rounds,
    earlier_labelled_weeks,
    evaluate_ranker,
    fit_target,
    fold_array,
    fold_column,
    graded_labels,
    labelled_rows,
    labelled_rows_of_weeks,
    predict_scores,
    ranked_top_k,
    score_lake_rows,
    score_rows,
    session_uniform,
    session_uniform_array,
    training_rows,
    training_sample,
    truths_in_top_k,
)
from pipelines.registry import (
    CHAMPION_ALIAS,
    FORWARD_SCORE_TAG,
    FORWARD_WEEK_TAG,
    GATE_TAG,
    REJECTED,
    RUN_ID_TAG,
    WEEK_TAG,
    decide,
    gate_version,
    record_forward_score,
    version_of_week,
)

FAST = RankerConfig(folds=3, num_boost_round=30, min_data_in_leaf=5, num_threads=1)


def synthetic_rows(n_sessions: int = 300, per_session: int = 25, seed: int = 0) -> pd.DataFrame:
    """Candidate rows where `als_similarity` reveals the positive and `baseline_rank` is a noisy guess."""
    rng = np.random.default_rng(seed)
    sessions = np.repeat(np.arange(n_sessions), per_session)
    aids = np.tile(np.arange(per_session), n_sessions) + 1000 * rng.integers(0, 3, len(sessions))
    frame = pd.DataFrame(0.0, index=np.arange(len(sessions)), columns=FEATURE_COLUMNS, dtype=np.float32)
    frame.insert(0, "aid", aids)
    frame.insert(0, "type", "carts")
    frame.insert(0, "session", sessions)
    positive_slot = rng.integers(0, per_session, n_sessions)
    is_positive = np.arange(len(sessions)) % per_session == np.repeat(positive_slot, per_session)
    frame[LABEL_COLUMN] = (TARGET_LABEL * is_positive).astype(np.int8)
    frame["als_similarity"] = (rng.normal(0, 1, len(frame)) + 2.5 * is_positive).astype(np.float32)
    noisy = rng.normal(0, 1, len(frame)) + 0.8 * is_positive
    frame["baseline_rank"] = (
        pd.Series(-noisy).groupby(frame["session"]).rank(method="first").to_numpy().astype(np.float32)
    )
    return frame


def labels_of(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.loc[rows[LABEL_COLUMN] > 0, ["session", "type", "aid"]]


def spark_frames(spark, rows: pd.DataFrame, labels: pd.DataFrame | None = None):
    """`features` and long `labels` as Spark frames, shaped like the lake's: the features are read
    back from Parquet files (three, rows in no particular order), as the ranker reads the lake."""
    features = spark.createDataFrame(rows[["session", "type", "aid", *FEATURE_COLUMNS]].astype({c: "float32" for c in FEATURE_COLUMNS}))
    folder = tempfile.mkdtemp(prefix="ranker-features-")
    features.repartition(3).write.mode("overwrite").parquet(folder)
    labels = labels_of(rows) if labels is None else labels
    return spark.read.parquet(folder), spark.createDataFrame(labels[["session", "type", "aid"]].astype({"session": "int64", "aid": "int64"}))


def top_sellers_of(spark, rows: pd.DataFrame):
    """A `top_sellers` table for synthetic rows: each type's items by how many sessions propose them."""
    counts = rows.groupby(["type", "aid"]).size().rename("events").reset_index()
    counts = counts.sort_values(["type", "events", "aid"], ascending=[True, False, True], ignore_index=True)
    counts["rank"] = counts.groupby("type").cumcount() + 1
    return spark.createDataFrame(counts.assign(list="popular", score=counts["events"].astype(float))[
        ["list", "type", "rank", "aid", "score", "events"]])


def sample_of(spark, rows: pd.DataFrame, config: RankerConfig = FAST, event_type: str = "carts") -> pd.DataFrame:
    features, labels = spark_frames(spark, rows)
    return training_sample(labelled_rows(features, graded_labels(labels), config), event_type, config)


def test_python_workers_draw_the_same_folds_and_uniforms_as_spark(spark):
    sessions = np.r_[np.arange(3000), [0, 2**40 + 17, 2**62, 14_571_581]]
    frame = spark.createDataFrame([(int(s),) for s in sessions], "session BIGINT")
    for seed, salt in [(42, "fold"), (7, "sample"), (42, "validation"), (3, "a salt of 20 bytes.."), (2**33, "fold")]:
        spark_values = np.array([row[0] for row in frame.select(session_uniform(seed, salt)).collect()])
        assert np.array_equal(session_uniform_array(sessions, seed, salt), spark_values), (seed, salt)
    spark_folds = np.array([row[0] for row in frame.select(fold_column(3, 42)).collect()])
    assert np.array_equal(fold_array(sessions, 3, 42), spark_folds)


def test_folds_are_balanced_deterministic_and_seeded(spark):
    sessions = spark.range(3000).withColumnRenamed("id", "session")
    folds = lambda frame, seed: dict(map(tuple, frame.select("session", fold_column(5, seed).alias("f")).collect()))  # noqa: E731
    first = folds(sessions, 1)
    sizes = np.bincount(list(first.values()), minlength=5)
    assert set(first.values()) == set(range(5)) and sizes.min() > 520 and sizes.max() < 680, sizes
    assert folds(sessions.repartition(7), 1) == first  # a hash of the id, not of where the row is
    assert folds(sessions, 2) != first


def test_training_rows_keep_every_positive_and_cap_negatives():
    rows = synthetic_rows(50, 25)
    rows.loc[rows["session"] == 0, LABEL_COLUMN] = 0  # a query without a positive teaches nothing
    train = training_rows(rows, negatives_per_session=5, seed=3)
    assert 0 not in set(train["session"])
    assert (train.groupby("session")[LABEL_COLUMN].agg(["sum", "size"]).to_numpy() == [TARGET_LABEL, 6]).all()

    assert train["session"].is_monotonic_increasing
    assert train.equals(training_rows(rows, negatives_per_session=5, seed=3))


def test_buy_targets_get_graded_labels_from_the_other_buy_type(spark):
    labels = spark.createDataFrame([(1, "orders", 10), (1, "carts", 11), (1, "clicks", 12)], "session BIGINT, type STRING, aid BIGINT")
    graded = {(t, a): label for _, t, a, label in graded_labels(labels).collect()}
    assert graded[("orders", 10)] == 2 and graded[("orders", 11)] == 1 and ("orders", 12) not in graded
    assert graded[("carts", 11)] == 2 and graded[("carts", 10)] == 1 and graded[("clicks", 12)] == 2


def test_the_training_sample_is_bounded_by_the_configuration_not_the_week(spark):
    """What reaches the driver follows `max_train_sessions` and `max_sample_rows`, not the week's size:
    needs enough sessions that the caps bite."""
    rows = synthetic_rows(400, 25)
    rows.loc[rows["session"] < 40, LABEL_COLUMN] = 0  # sessions without a positive are never drawn
    config = RankerConfig(folds=3, max_train_sessions=100, validation_share=0.25, num_threads=1,
                          negatives_per_session={"clicks": 5, "carts": 5, "orders": 5})
    sample = sample_of(spark, rows, config)
    sessions = sample.groupby("session")
    # About 200 of the 360 sessions with a positive: 100 per fit x 3 folds / 2 training folds,
    # and a quarter of those held out.
    assert 150 <= sample["session"].nunique() <= 250
    assert sample["session"].min() >= 40 and (sessions[LABEL_COLUMN].max() == TARGET_LABEL).all()
    validation = sessions["validation"].first()
    assert 0.1 < validation.mean() < 0.4
    assert (sessions.size() == 25).all()  # every candidate of a sampled session
    assert set(sample.columns) >= {"session", "aid", LABEL_COLUMN, "fold", "validation", *FEATURE_COLUMNS}
    assert set(sample[FEATURE_COLUMNS].dtypes) == {np.dtype(np.float32)}
    assert sample[["session", "aid"]].equals(sample[["session", "aid"]].sort_values(["session", "aid"], ignore_index=True))
    assert sample.equals(sample_of(spark, rows, config))

    # Rows cap the draw too: 2,500 rows are 100 sessions of 25 candidates.
    by_rows = sample_of(spark, rows, dataclasses.replace(config, max_sample_rows=2_500))
    assert 70 <= by_rows["session"].nunique() <= 130 and set(by_rows["session"]) < set(sample["session"])


def test_fit_target_records_one_model_per_fold(spark):
    result = fit_target(sample_of(spark, synthetic_rows()), "carts", FAST)
    assert [record.fold for record in result.folds] == [0, 1, 2] == sorted(result.fold_models)
    assert all(record.train_sessions and record.held_out_sessions > 0 for record in result.folds)


def test_ranker_beats_the_noisy_baseline_and_falls_back_to_it_when_labels_are_shuffled(spark):
    # 80 candidates per session: the held-out top 20 is a real cut, so the folds choose to boost.
    rows = synthetic_rows(per_session=80)
    features, labels = spark_frames(spark, rows)
    learned = evaluate_ranker(features, labels, top_sellers_of(spark, rows), FAST, types=("carts",))
    recall_at_1 = lambda evaluation, name: spark_score(evaluation.predictions[name], labels, k=1)["recall_carts"]  # noqa: E731

    shuffled = rows.copy()
    # Each session gets another session's label slots: the features no longer say anything about them.
    slots = shuffled[LABEL_COLUMN].to_numpy().reshape(-1, 80)
    shuffled[LABEL_COLUMN] = np.random.default_rng(5).permutation(slots).reshape(-1)
    blind = evaluate_ranker(features, spark_frames(spark, shuffled)[1], top_sellers_of(spark, rows), FAST, types=("carts",))

    baseline_at_1 = recall_at_1(learned, BASELINE_COVISITATION)
    assert recall_at_1(learned, RANKER) > baseline_at_1 + 0.2
    # Boosting starts from the hand rule's order: with nothing to learn it stays about there.
    assert abs(recall_at_1(blind, RANKER) - baseline_at_1) < 0.1
    assert learned.metrics[RANKER]["sessions_carts"] == 300 and learned.ceiling["recall_carts"] == 1.0
    learned.release()
    blind.release()


def test_gate_decisions():
    assert decide(0.50, {"hand": 0.40, "pop": 0.10}, None, 0.002) == (True, "first version to pass the gate (score 0.5000)")
    assert decide(0.39, {"hand": 0.40, "pop": 0.10}, None, 0.002)[0] is False
    assert decide(0.499, {"hand": 0.40}, 0.500, 0.002)[0] is True
    assert decide(0.497, {"hand": 0.40}, 0.500, 0.002)[0] is False


def test_gate_promotes_keeps_and_rejects_in_the_registry(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "gate-test"
    client.create_registered_model(name)

    def new_version():
        return client.create_model_version(name, source=str(tmp_path / "model")).version

    baselines = {"baseline_covisitation": 0.40, "baseline_popularity": 0.10}
    first = gate_version(client, name, new_version(), 0.50, baselines, 0.002)
    assert first.promoted and first.champion_before is None
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == first.version

    within_tolerance = gate_version(client, name, new_version(), 0.499, baselines, 0.002)
    assert within_tolerance.promoted and within_tolerance.champion_before == first.version

    worse = gate_version(client, name, new_version(), 0.45, baselines, 0.002)
    assert not worse.promoted
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == within_tolerance.version
    tags = client.get_model_version(name, worse.version).tags
    assert tags[GATE_TAG] == REJECTED and "champion 0.4990" in tags["gate_reason"]
    described = client.get_model_version(name, worse.version).description
    assert "score 0.4500" in described and "baseline_covisitation 0.4000" in described
    assert "not promoted" in described and "champion 0.4990" in described
    assert "promoted to champion" in client.get_model_version(name, first.version).description

    below_baseline = gate_version(client, name, new_version(), 0.39, baselines, 0.002)
    assert not below_baseline.promoted and "baseline_covisitation" in below_baseline.reason
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == within_tolerance.version

    # A week whose sessions are harder: 0.45 loses to the champion's own 0.499 from its week, but
    # the champion scores only 0.44 on this week's sessions, so the new version is the better one.
    harder_week = gate_version(client, name, new_version(), 0.45, baselines, 0.002, champion_score_now=0.44)
    assert harder_week.promoted and harder_week.champion_score == 0.44
    assert "scored on this week's evaluation sessions" in harder_week.reason
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == harder_week.version
    beaten_on_same_sessions = gate_version(client, name, new_version(), 0.45, baselines, 0.002, champion_score_now=0.46)
    assert not beaten_on_same_sessions.promoted


def test_forward_score_goes_to_the_week_befores_version_and_its_training_run(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    name = "forward-test"
    client.create_registered_model(name)
    experiment = client.create_experiment("forward", artifact_location=str(tmp_path / "artifacts"))
    runs = {week: client.create_run(experiment).info.run_id for week in ("2022-08-01", "2022-08-08")}
    for week in ("2022-08-01", "2022-08-01", "2022-08-08"):  # week 1 retrained once
        version = client.create_model_version(name, source=str(tmp_path / "model")).version
        client.set_model_version_tag(name, version, WEEK_TAG, week)
        client.set_model_version_tag(name, version, RUN_ID_TAG, runs[week])
    assert version_of_week(client, name, "2022-07-25") is None
    retrained = version_of_week(client, name, "2022-08-01")
    assert str(retrained.version) == "2"

    lists = tmp_path / "forward_predictions.csv"
    lists.write_text("session_type,labels\n1_clicks,5 6\n")
    record_forward_score(client, name, retrained, {"score": 0.51, "recall_orders": 0.6}, "2022-08-08", artifacts=[lists])
    run = client.get_run(runs["2022-08-01"])
    assert run.data.metrics == {"forward.score": 0.51, "forward.recall_orders": 0.6}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "forward")] == ["forward/forward_predictions.csv"]
    tags = client.get_model_version(name, "2").tags
    assert tags[FORWARD_SCORE_TAG] == "0.510000" and tags[FORWARD_WEEK_TAG] == "2022-08-08"
    assert FORWARD_SCORE_TAG not in client.get_model_version(name, "1").tags
    assert not client.get_run(runs["2022-08-08"]).data.metrics
    mlflow.set_tracking_uri(None)

    decision = gate_version(client, name, "3", 0.55, {"hand": 0.40}, 0.002, previous_week_forward=("2", 0.51))
    assert decision.previous_week_forward_score == 0.51 and "v2 scored 0.5100 forward" in decision.reason


def test_rounds_are_chosen_on_held_out_training_sessions_and_zero_keeps_the_hand_rule(spark):
    """The held-out choice of boosting rounds inside each fold, end to end through Spark and LightGBM
    (zero rounds keeps the hand rule); no smaller input has positives the hand rule already ranks first."""
    rows = synthetic_rows()
    # The hand rule ranks every positive first: no boosting round can add a hit, so every fold
    # keeps the prior (ties go to fewer rounds) and the ranking is exactly the hand rule's.
    rows["baseline_rank"] = np.where(rows[LABEL_COLUMN] > 0, 1.0, 2.0 + rows["aid"] % 20).astype(np.float32)
    features, labels = spark_frames(spark, rows)
    evaluation = evaluate_ranker(features, labels, top_sellers_of(spark, rows), FAST, types=("carts",))
    result = evaluation.results["carts"]
    assert [record.rounds for record in result.folds] == [0] * FAST.folds and result.rounds == 0
    assert all(set(record.validation_hits) >= {0, FAST.round_step} for record in result.folds)
    # The prior alone: the hand rule's order (ties by aid).
    expected = rows.sort_values(["session", "baseline_rank", "aid"])
    expected = expected.assign(rank=expected.groupby("session").cumcount() + 1).query("rank <= 20")
    assert sorted(map(tuple, evaluation.predictions[RANKER].collect())) == sorted(
        map(tuple, expected[["session", "type", "aid", "rank"]].to_numpy().tolist()))

    # 80 candidates per session: the top 20 is a real cut, and boosting clearly adds hits.
    learnable = fit_target(sample_of(spark, synthetic_rows(per_session=80)), "carts", FAST)
    assert all(record.rounds > 0 for record in learnable.folds)
    assert all(r.validation_hits[r.rounds] > r.validation_hits[0] for r in learnable.folds)
    assert all(max(r.validation_hits.values()) == r.validation_hits[r.rounds] for r in learnable.folds)


def test_a_gain_within_noise_keeps_the_hand_rule():
    from pipelines.ranker import beats_hand_rule

    hand_rule = np.array([True] * 50 + [False] * 50)

    def boosted(gained: int, lost: int) -> np.ndarray:
        found = hand_rule.copy()
        found[50:50 + gained] = True
        found[:lost] = False
        return found

    assert beats_hand_rule(boosted(10, 0), hand_rule, z=1.0)  # 10 > sqrt(10)
    assert beats_hand_rule(boosted(3, 0), hand_rule, z=1.0)  # 3 > 1.73
    assert not beats_hand_rule(boosted(3, 1), hand_rule, z=1.0)  # 2 = sqrt(4): not more than noise
    assert not beats_hand_rule(boosted(1, 0), hand_rule, z=1.0)
    assert not beats_hand_rule(hand_rule, hand_rule, z=0.0)  # no change is no gain
    assert beats_hand_rule(boosted(30, 20), hand_rule, z=1.0)  # 10 > 7.07
    assert not beats_hand_rule(boosted(30, 20), hand_rule, z=2.0)  # 10 < 14.1


def test_held_out_hits_add_up_trees_exactly_as_scoring_each_round_count_from_scratch():
    rows = synthetic_rows(per_session=80)
    train = training_rows(rows, negatives_per_session=20, seed=1)
    held_rows = rows[rows["session"] % 4 == 0]
    model, _, hits = choose_rounds(held_rows, train, FAST)
    assert len(hits) > 2
    for rounds, found in hits.items():
        assert truths_in_top_k(held_rows, predict_scores(model, held_rows, 1, rounds)).sum() == found


def test_spark_top_k_and_held_out_ranks_order_like_a_pandas_sort_with_ties_and_missing_scores(spark):
    rng = np.random.default_rng(4)
    n = 5000
    scored = pd.DataFrame({
        "session": rng.integers(0, 60, n),
        "type": rng.choice(["orders", "clicks", "carts"], n),
        "aid": rng.integers(0, 400, n),
        # Few distinct values, so ties are broken by aid; some scores are missing.
        "score": np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 8, n).astype(float)),
    }).drop_duplicates(["session", "type", "aid"], ignore_index=True)

    expected = scored.fillna({"score": -np.inf}).sort_values(["session", "type", "score", "aid"], ascending=[True, True, False, True])
    expected = expected.assign(rank=expected.groupby(["session", "type"], sort=False).cumcount() + 1)
    expected = expected[expected["rank"] <= 5]
    got = ranked_top_k(spark.createDataFrame(scored), k=5).select("session", "type", "aid", "rank").toPandas()
    key = ["session", "type", "aid", "rank"]
    assert sorted(map(tuple, got[key].to_numpy().tolist())) == sorted(map(tuple, expected[key].to_numpy().tolist()))

    one_type = scored[scored["type"] == "carts"].assign(**{LABEL_COLUMN: np.int8(TARGET_LABEL)})
    in_top = truths_in_top_k(one_type, one_type["score"].to_numpy(), k=5)
    assert np.array_equal(in_top, one_type.index.isin(expected[expected["type"] == "carts"].index))


@pytest.mark.parametrize("folds", [2, 3])
def test_every_session_is_scored_once_by_its_folds_model(spark, folds):
    rows = synthetic_rows(120, 25)
    features, labels = spark_frames(spark, rows)
    config = RankerConfig(folds=folds, num_boost_round=10, min_data_in_leaf=5, num_threads=1)
    evaluation = evaluate_ranker(features, labels, top_sellers_of(spark, rows), config, types=("carts",))
    predictions = evaluation.predictions[RANKER].toPandas()
    evaluation.release()
    assert predictions.groupby("session").size().eq(20).all() and predictions["session"].nunique() == 120
    assert not predictions.duplicated(["session", "aid"]).any()

    # Each session's list is its fold model's top 20, and the fold models never trained on it.
    result = evaluation.results["carts"]
    sessions = spark.createDataFrame(rows[["session"]].drop_duplicates().astype("int64"))
    fold_of = dict(map(tuple, sessions.select("session", fold_column(folds, config.seed)).collect()))
    carts = rows[rows["type"] == "carts"].assign(fold=lambda frame: frame["session"].map(fold_of))
    scores = np.full(len(carts), np.nan)
    for fold, model in result.fold_models.items():
        in_fold = (carts["fold"] == fold).to_numpy()
        scores[in_fold] = predict_scores(model, carts[in_fold], rounds=result.fold_rounds[fold])
        trained_on = {fold_of[s] for s in result.folds[fold].train_sessions}
        assert fold not in trained_on, (fold, trained_on)
    expected = carts.assign(score=scores).sort_values(["session", "score", "aid"], ascending=[True, False, True])
    expected = expected.groupby("session").head(20)
    assert set(zip(predictions["session"], predictions["aid"])) == set(zip(expected["session"], expected["aid"]))


def test_scoring_the_lake_files_by_type_equals_scoring_the_rows_in_the_plan(spark, tmp_path):
    """The two scoring paths (Python tasks reading the lake's files, `mapInArrow` over rows in the plan)
    give the same scores for every type and fold: only real Parquet files and real boosters show it."""
    rows = synthetic_rows(200, 25, seed=3)
    rows["type"] = np.select([rows["aid"] % 3 == 0, rows["aid"] % 3 == 1], ["carts", "clicks"], "orders")
    rows["baseline_rank"] = np.where(rows["aid"] % 7 == 0, np.nan, rows["baseline_rank"])  # ALS-only rows
    booster = fit_target(sample_of(spark, rows), "carts", FAST).model.model_to_string()
    # Carts with every tree, clicks with 3, orders without a booster (the prior alone).
    strings, rounds = {"carts": booster, "clicks": booster, "orders": ""}, {"clicks": 3}
    frame = spark.createDataFrame(rows[["session", "type", "aid", *FEATURE_COLUMNS]])
    frame.repartition(3).write.option("parquet.block.size", 16_384).parquet(str(tmp_path / "features"))
    files = spark.read.parquet(str(tmp_path / "features"))
    assert sum(pq.ParquetFile(path.removeprefix("file:")).metadata.num_row_groups for path in files.inputFiles()) > 3
    from_files = score_lake_rows(files, strings, rounds)
    in_plan = score_rows(frame, strings, rounds)
    key = ["session", "type", "aid", "score"]
    got, expected = sorted(map(tuple, from_files.select(*key).collect())), sorted(map(tuple, in_plan.select(*key).collect()))
    assert len(got) == len(rows) and got == expected
    # Both equal the pandas scorer, type by type.
    model = lgb.Booster(model_str=booster)
    by_type = {"carts": (model, None), "clicks": (model, 3), "orders": (None, None)}
    wanted = {}
    for event_type, (type_model, type_rounds) in by_type.items():
        part = rows[rows["type"] == event_type]
        wanted.update(zip(zip(part["session"], part["aid"]), predict_scores(type_model, part, rounds=type_rounds)))
    assert all(score == wanted[(session, aid)] for session, _, aid, score in got)


def test_popularity_baseline_gives_every_labelled_session_its_types_top_sellers(spark):
    top_sellers = spark.createDataFrame(
        [("popular", "carts", rank, 100 + rank, 1.0 / rank, 1) for rank in range(1, 31)]
        + [("popular", "orders", rank, 200 + rank, 1.0 / rank, 1) for rank in range(1, 31)]
        + [("trending", "carts", rank, 300 + rank, 1.0 / rank, 1) for rank in range(1, 31)],
        "list string, type string, rank int, aid bigint, score double, events bigint")
    # Session 1's carts are the 1st and the 25th seller, session 2's orders the 3rd and a non-seller.
    labels = pd.DataFrame({"session": [1, 1, 2, 2], "type": ["carts", "carts", "orders", "orders"],
                           "aid": [101, 125, 203, 999]})
    predictions = popularity_predictions(spark.createDataFrame(labels), top_sellers, 20).toPandas()
    assert sorted(predictions.groupby(["session", "type"]).groups) == [(1, "carts"), (2, "orders")]
    carts = predictions[predictions["type"] == "carts"].sort_values("rank")
    assert carts["aid"].tolist() == list(range(101, 121)) and carts["rank"].tolist() == list(range(1, 21))
    score = spark_score(spark.createDataFrame(predictions), spark.createDataFrame(labels))
    assert score == pytest.approx(score_predictions(predictions, labels))
    assert score["recall_carts"] == 0.5 and score["recall_orders"] == 0.5


def test_earlier_weeks_join_the_training_sample_and_only_this_weeks_sessions_are_scored(spark):
    """Several label weeks in one evaluation: earlier weeks train, only W is scored, and a session that
    runs into a later week counts once; needs two weeks of rows, fitted for real."""
    this_week = synthetic_rows(200, 25, seed=1)
    earlier = synthetic_rows(300, 25, seed=2)
    earlier["session"] += 1000
    # Sessions 1000-1009 ran on into this week: this week's rows (other items, other labels) are theirs.
    ran_on = synthetic_rows(10, 25, seed=3)
    ran_on["session"] += 1000
    ran_on["aid"] += 5
    this_week = pd.concat([this_week, ran_on], ignore_index=True)
    features, labels = spark_frames(spark, this_week)
    earlier_features, earlier_labels = spark_frames(spark, earlier)

    rows = labelled_rows_of_weeks(features, labels, FAST, [(earlier_features, earlier_labels)]).toPandas()
    assert len(rows) == len(this_week) + len(earlier) - 10 * 25
    expected = pd.concat([this_week, earlier[earlier["session"] >= 1010]])
    merged = rows.merge(expected[["session", "aid", LABEL_COLUMN]], on=["session", "aid"], suffixes=("", "_truth"))
    assert len(merged) == len(rows) and (merged[LABEL_COLUMN] == merged[f"{LABEL_COLUMN}_truth"]).all()

    evaluation = evaluate_ranker(features, labels, top_sellers_of(spark, this_week), FAST, types=("carts",),
                                 earlier_weeks=[(earlier_features, earlier_labels)])
    scored = evaluation.predictions[RANKER].toPandas()
    evaluation.release()
    assert set(scored["session"]) == set(this_week["session"])
    assert evaluation.metrics[RANKER]["sessions_carts"] == 210
    folds = evaluation.results["carts"].folds
    trained_on = set().union(*(record.train_sessions for record in folds))
    assert trained_on & set(range(1010, 1300)) and trained_on & set(range(200))
    # Fold k's model never saw a session of fold k, of either week.
    for record in folds:
        assert not {s for s in record.train_sessions if fold_array(np.array([s]), FAST.folds, FAST.seed)[0] == record.fold}


def test_earlier_labelled_weeks_reads_the_weeks_the_lake_holds_with_every_feature_column(spark, tmp_path):
    from pipelines.evaluation import EVAL_LABELS_TABLE
    from pipelines.features import FEATURES_TABLE
    from pipelines.lake import Lake
    from pipelines.weeks import Week

    lake = Lake(str(tmp_path / "lake"))
    week = Week.parse("2022-08-29", "UTC")
    rows = synthetic_rows(20, 5)
    features, labels = spark_frames(spark, rows)
    wide_labels = labels.groupBy("session").agg(
        *[F.collect_list(F.when(F.col("type") == t, F.col("aid"))).alias(t) for t in ("carts", "orders")],
    ).withColumn("clicks", F.lit(None).cast("bigint"))
    for back, table in [(1, features), (2, features.drop(FEATURE_COLUMNS[0])), (4, features)]:
        lake.write_partition(table, FEATURES_TABLE, week.shift(-back))
        lake.write_partition(wide_labels, EVAL_LABELS_TABLE, week.shift(-back))
    weeks, skipped = earlier_labelled_weeks(spark, lake, week, FAST)
    assert list(weeks) == ["2022-08-22"] and weeks["2022-08-22"][1].count() == labels.count()
    assert skipped["2022-08-15"].startswith("features of older code: no " + FEATURE_COLUMNS[0])
    assert skipped["2022-08-08"] == "no features or evaluation labels in the lake"
    assert "2022-08-01" not in skipped  # beyond label_weeks


def test_a_champion_that_cannot_be_scored_is_not_compared_and_a_moved_alias_is_left_alone(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from pipelines import registry

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "guard-test"
    client.create_registered_model(name)

    def new_version():
        return client.create_model_version(name, source=str(tmp_path / "model")).version

    baselines = {"hand": 0.40}
    first = gate_version(client, name, new_version(), 0.60, baselines, 0.002)
    # 0.45 would lose to the champion's 0.60, but the champion cannot be loaded by this code.
    unusable = gate_version(client, name, new_version(), 0.45, baselines, 0.002,
                            champion_unusable="ValueError: feature columns differ")
    assert unusable.promoted and unusable.champion_score is None
    assert f"champion v{first.version} not comparable: ValueError: feature columns differ" in unusable.reason
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == unusable.version

    # Another run moves the alias between this gate's read and its write: the alias stays put.
    rival = new_version()
    reads = iter([(unusable.version, 0.45), (str(rival), 0.70)])
    monkeypatch.setattr(registry, "current_champion", lambda _client, _name: next(reads))
    client.set_registered_model_alias(name, CHAMPION_ALIAS, rival)
    raced = gate_version(client, name, new_version(), 0.50, baselines, 0.002)
    assert not raced.promoted and raced.champion_after == str(rival)
    assert f"the champion moved from v{unusable.version} to v{rival}" in raced.reason
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == str(rival)
    assert client.get_model_version(name, raced.version).tags[GATE_TAG] == REJECTED


def test_a_week_publishes_with_the_champion_its_own_ranker_gate_chose():
    from pipelines.recommendations import model_for_week

    class Registry:
        def __init__(self):
            self.loaded = []

        def load_version(self, version):
            self.loaded.append(version)
            return f"v{version}"

        def load_champion(self):
            self.loaded.append("champion")
            return "the champion now"

    registry = Registry()
    summary = {"gate": {"version": "5", "promoted": False, "champion_after": "3"}}
    assert model_for_week(registry, summary, "")[0] == "v3"  # not whatever the alias points at today
    assert model_for_week(registry, summary, "champion")[0] == "the champion now"
    assert model_for_week(registry, summary, "4")[0] == "v4"
    assert registry.loaded == ["3", "champion", "4"]
    # Until a version passes the gate, and in the warm-up week, the hand rule writes the lists.
    champion, why = model_for_week(registry, {"gate": {"champion_after": None, "reason": "score ties the hand rule"}}, "")
    assert champion is None and "no version has passed the champion gate" in why and "ties the hand rule" in why
    assert model_for_week(registry, {"week": "2022-08-01", "warm_up": "first partition"}, "") == (None, "first partition")
    with pytest.raises(LookupError, match="materialize the week's ranker"):
        model_for_week(registry, None, "")


def test_a_champion_score_of_another_version_than_the_gates_champion_is_not_used(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "scored-test"
    client.create_registered_model(name)
    first = gate_version(client, name, client.create_model_version(name, source=str(tmp_path)).version, 0.60, {"hand": 0.4}, 0.002)
    # 0.10 was the score of some other version (the alias moved after it was scored): the gate
    # compares with the champion's own recorded 0.60 instead, and 0.55 loses.
    late = gate_version(client, name, client.create_model_version(name, source=str(tmp_path)).version, 0.55, {"hand": 0.4},
                        0.002, champion_score_now=0.10, champion_scored="999")
    assert not late.promoted and late.champion_score == 0.60 and late.champion_after == first.version
