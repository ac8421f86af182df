"""The ranker's K-fold protocol and the champion gate, on small synthetic frames."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features import FEATURE_COLUMNS
from pipelines.metrics import score_predictions
from pipelines.ranker import (
    LABEL_COLUMN,
    TARGET_LABEL,
    RankerConfig,
    assign_folds,
    fit_target,
    prior_score,
    ranked_by,
    top_k,
    training_rows,
)
from pipelines.registry import CHAMPION_ALIAS, GATE_TAG, REJECTED, decide, gate_version

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


def test_folds_are_balanced_deterministic_and_seeded():
    sessions = np.arange(1000)
    folds = assign_folds(sessions, 5, seed=1)
    assert folds.value_counts().tolist() == [200] * 5
    assert folds.equals(assign_folds(sessions[::-1], 5, seed=1))
    assert not folds.equals(assign_folds(sessions, 5, seed=2))


def test_training_rows_keep_every_positive_and_cap_negatives():
    rows = synthetic_rows(50, 25)
    rows.loc[rows["session"] == 0, LABEL_COLUMN] = 0  # a query without a positive teaches nothing
    train = training_rows(rows, negatives_per_session=5, seed=3)
    assert 0 not in set(train["session"])
    assert (train.groupby("session")[LABEL_COLUMN].agg(["sum", "size"]).to_numpy() == [TARGET_LABEL, 6]).all()

    assert train["session"].is_monotonic_increasing
    assert train.equals(training_rows(rows, negatives_per_session=5, seed=3))


def test_buy_targets_get_graded_labels_from_the_other_buy_type():
    from pipelines.ranker import attach_labels

    candidates = pd.DataFrame({"session": [1, 1, 1], "type": ["orders"] * 3, "aid": [10, 11, 12]})
    labels = pd.DataFrame({"session": [1, 1, 1], "type": ["orders", "carts", "clicks"], "aid": [10, 11, 12]})
    assert attach_labels(candidates, labels)[LABEL_COLUMN].tolist() == [2, 1, 0]

def test_kfold_never_scores_a_session_it_trained_on():
    rows = synthetic_rows()
    result = fit_target(rows, "carts", FAST)
    scored_union = set()
    for record in result.folds:
        assert record.train_sessions.isdisjoint(record.scored_sessions), record.fold
        assert scored_union.isdisjoint(record.scored_sessions)
        scored_union |= record.scored_sessions
    assert scored_union == set(rows["session"])
    assert result.oof["score"].notna().all()


def test_ranker_beats_the_noisy_baseline_and_falls_back_to_it_when_labels_are_shuffled():
    rows = synthetic_rows()
    labels = labels_of(rows)
    learned = score_predictions(top_k(fit_target(rows, "carts", FAST).oof, k=1), labels, k=1)["recall_carts"]

    shuffled = rows.copy()
    # Each session gets another session's label slots: the features no longer say anything about them.
    slots = shuffled[LABEL_COLUMN].to_numpy().reshape(-1, 25)
    shuffled[LABEL_COLUMN] = np.random.default_rng(5).permutation(slots).reshape(-1)
    blind = score_predictions(top_k(fit_target(shuffled, "carts", FAST).oof, k=1), labels, k=1)["recall_carts"]
    baseline_at_1 = score_predictions(ranked_by(rows, "baseline_rank", k=1), labels, k=1)["recall_carts"]

    assert learned > baseline_at_1 + 0.2
    # Boosting starts from the hand rule's order: with nothing to learn it stays about there.
    assert abs(blind - baseline_at_1) < 0.1


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


def test_rounds_are_chosen_on_held_out_training_sessions_and_zero_keeps_the_hand_rule():
    rows = synthetic_rows()
    # The hand rule ranks every positive first: no boosting round can add a hit, so every fold
    # keeps the prior (ties go to fewer rounds) and the scores are exactly the hand rule's.
    rows["baseline_rank"] = np.where(rows[LABEL_COLUMN] > 0, 1.0, 2.0 + rows["aid"] % 20).astype(np.float32)
    result = fit_target(rows, "carts", FAST)
    assert [record.rounds for record in result.folds] == [0] * FAST.folds and result.rounds == 0
    assert all(set(record.validation_hits) >= {0, FAST.round_step} for record in result.folds)
    assert np.allclose(result.oof["score"], prior_score(rows))

    # 80 candidates per session: the top 20 is a real cut, and boosting clearly adds hits.
    learnable = fit_target(synthetic_rows(per_session=80), "carts", FAST)
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
    from pipelines.ranker import choose_rounds, predict_scores, truths_in_top_k

    rows = synthetic_rows(per_session=80)
    train = training_rows(rows, negatives_per_session=20, seed=1)
    model, _, hits = choose_rounds(rows, train, FAST, seed=5)
    sessions = np.sort(train["session"].unique())
    held_sessions = sessions[np.random.default_rng(5).random(len(sessions)) < FAST.validation_share]
    held_rows = rows[rows["session"].isin(held_sessions)]
    assert len(hits) > 2
    for rounds, found in hits.items():
        assert truths_in_top_k(held_rows, predict_scores(model, held_rows, 1, rounds)).sum() == found


def test_feature_rows_load_as_float32_sorted_for_one_type(tmp_path):
    from pipelines.ranker import attach_labels, load_feature_rows

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((12, len(FEATURE_COLUMNS))), columns=FEATURE_COLUMNS)  # doubles, as older weeks wrote
    frame.insert(0, "aid", rng.permutation(12) + 100)
    frame.insert(0, "type", ["clicks", "orders"] * 6)
    frame.insert(0, "session", [3, 1, 2] * 4)
    frame.to_parquet(tmp_path / "part-0.parquet")

    rows = load_feature_rows(tmp_path, "orders")
    expected = frame[frame["type"] == "orders"].sort_values(["session", "aid"], ignore_index=True)
    assert rows[["session", "aid"]].equals(expected[["session", "aid"]])
    assert (rows["type"] == "orders").all() and set(rows[FEATURE_COLUMNS].dtypes) == {np.dtype(np.float32)}
    assert np.array_equal(rows[FEATURE_COLUMNS].to_numpy(), expected[FEATURE_COLUMNS].to_numpy(dtype=np.float32))

    first = expected.iloc[0]
    labels = pd.DataFrame({"session": [first["session"]], "type": ["orders"], "aid": [first["aid"]]})
    assert attach_labels(rows, labels)[LABEL_COLUMN].tolist() == [TARGET_LABEL] + [0] * (len(rows) - 1)


def test_held_out_top_k_counts_agree_with_top_k_with_ties_and_missing_scores():
    from pipelines.ranker import truths_in_top_k

    rng = np.random.default_rng(4)
    n = 5000
    scored = pd.DataFrame({
        "session": rng.integers(0, 60, n),
        "type": pd.Categorical(rng.choice(["orders", "clicks", "carts"], n), categories=["clicks", "carts", "orders"]),
        "aid": rng.integers(0, 400, n),
        # Few distinct values, so ties are broken by aid; some scores are missing.
        "score": np.where(rng.random(n) < 0.05, np.nan, rng.integers(0, 8, n).astype(float)),
    }).drop_duplicates(["session", "type", "aid"], ignore_index=True)

    expected = scored.sort_values(["session", "type", "score", "aid"], ascending=[True, True, False, True])
    expected = expected.assign(rank=expected.groupby(["session", "type"], sort=False, observed=True).cumcount() + 1)
    expected = expected[expected["rank"] <= 5][["session", "type", "aid", "rank"]]
    assert top_k(scored, k=5).equals(expected)

    one_type = scored[scored["type"] == "carts"].assign(**{LABEL_COLUMN: np.int8(TARGET_LABEL)})
    in_top = truths_in_top_k(one_type, one_type["score"].to_numpy(), k=5)
    assert np.array_equal(in_top, one_type.index.isin(expected[expected["type"] == "carts"].index))
