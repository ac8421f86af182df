"""ALS on a planted structure: sessions only browse one item group, so items of a group must
end up as each other's neighbours; the blocked scorers must agree with brute force."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.als import (
    AlsConfig,
    dense_index,
    factor_validation_frame,
    fit_als,
    session_item_confidence,
    similar_items,
    top_k_of_block_pair,
)

N_GROUPS = 6
ITEMS_PER_GROUP = 20
SESSIONS_PER_GROUP = 100
EVENTS_PER_SESSION = 10
NOISE_SHARE = 0.03  # events on a random item of any group
TOP_K = 5
# Small and quick, but every knob the pipeline uses is exercised (checkpoints, several blocks).
CONFIG = AlsConfig(rank=8, max_iter=6, top_k=TOP_K, similarity_blocks=3, checkpoint_interval=2, num_blocks=2)


def planted_events(seed: int = 7):
    """Rows `session, aid, ts, type` and `group_of_aid`, `group_of_session` dicts. Aids are a
    random permutation so that the groups are not visible in the ids."""
    rng = np.random.default_rng(seed)
    n_items = N_GROUPS * ITEMS_PER_GROUP
    aids = rng.permutation(np.arange(10_000, 10_000 + n_items * 7, 7))
    group_of_aid = {int(aid): index // ITEMS_PER_GROUP for index, aid in enumerate(aids)}
    group_of_session: dict[int, int] = {}
    rows = []
    session = 500
    for group in range(N_GROUPS):
        group_aids = aids[group * ITEMS_PER_GROUP : (group + 1) * ITEMS_PER_GROUP]
        for _ in range(SESSIONS_PER_GROUP):
            session += int(rng.integers(1, 4))
            group_of_session[session] = group
            ts = 1_659_304_800_000 + int(rng.integers(0, 10**8))
            for _ in range(EVENTS_PER_SESSION):
                noise = rng.random() < NOISE_SHARE
                aid = int(rng.choice(aids) if noise else rng.choice(group_aids))
                kind = rng.choice(["clicks", "carts", "orders"], p=[0.85, 0.1, 0.05])
                ts += int(rng.integers(1_000, 60_000))
                rows.append((session, aid, ts, str(kind)))
    return rows, group_of_aid, group_of_session


@pytest.fixture(scope="module")
def planted():
    return planted_events()


@pytest.fixture(scope="module")
def events(spark, planted):
    rows, _, _ = planted
    return spark.createDataFrame(rows, "session BIGINT, aid BIGINT, ts BIGINT, type STRING").repartition(3).cache()


@pytest.fixture(scope="module")
def fitted(events, tmp_path_factory):
    result = fit_als(events, CONFIG, str(tmp_path_factory.mktemp("als-checkpoints")))
    yield result
    result.release()


@pytest.fixture(scope="module")
def neighbours(fitted):
    return similar_items(fitted.item_factors, CONFIG).toPandas()


def factors_as_dict(frame, key: str) -> dict[int, np.ndarray]:
    return {row[key]: np.asarray(row["factors"], dtype=np.float64) for row in frame.collect()}


def test_confidence_sums_type_weights_and_ignores_unknown_types(spark):
    events = spark.createDataFrame(
        [(1, 10, 0, "clicks"), (1, 10, 1, "clicks"), (1, 10, 2, "carts"), (1, 11, 3, "orders"), (2, 10, 4, "views")],
        "session BIGINT, aid BIGINT, ts BIGINT, type STRING",
    )
    rows = {(r["session"], r["aid"]): r["confidence"] for r in session_item_confidence(events, CONFIG.type_weights).collect()}
    assert rows == {(1, 10): 8.0, (1, 11): 3.0}


def test_dense_index_numbers_distinct_ids_in_order(spark, tmp_path):
    spark.sparkContext.setCheckpointDir(str(tmp_path))
    ids = [90, 7, 7, 10**12, 3, 55, 90, 41, 8, 2**40]
    frame = spark.createDataFrame([(i,) for i in ids], "session BIGINT").repartition(4)
    index = {row["session"]: row["idx"] for row in dense_index(frame, "session", "idx").collect()}
    assert index == {value: position for position, value in enumerate(sorted(set(ids)))}


def test_fit_reports_counts_norms_and_params(fitted, planted):
    rows, group_of_aid, group_of_session = planted
    stats = fitted.stats
    assert stats["n_items"] == len(group_of_aid) == fitted.item_factors.count()
    assert stats["n_sessions"] == len(group_of_session) == fitted.session_factors.count()
    assert stats["n_ratings"] == len({(s, a) for s, a, _, _ in rows})
    for name in ("item_factor_norm", "session_factor_norm"):
        assert 0 < stats[name]["min"] <= stats[name]["mean"] <= stats[name]["max"] < 1e3
    assert set(stats["timings"]) >= {"prepare", "fit", "factors", "total"}
    assert stats["params"]["rank"] == CONFIG.rank and stats["params"]["num_blocks"] == 2
    assert stats["params"]["type_weights"] == {"clicks": 1.0, "carts": 6.0, "orders": 3.0}
    assert "native_blas" in stats["linear_algebra"]
    assert dict(fitted.item_factors.dtypes) == {"aid": "bigint", "factors": "array<float>"}
    assert dict(fitted.session_factors.dtypes) == {"session": "bigint", "factors": "array<float>"}


def test_factor_validation_frame_flags_bad_vectors(spark, fitted):
    frame = spark.createDataFrame(
        [(1, [3.0, 4.0]), (2, [float("nan"), 0.0]), (3, [float("inf"), 1.0]), (4, [1.0, None]), (5, None)],
        "aid BIGINT, factors ARRAY<FLOAT>",
    )
    rows = {r["aid"]: r for r in factor_validation_frame(frame).collect()}
    assert rows[1]["norm"] == pytest.approx(5.0) and rows[1]["all_finite"] and rows[1]["dims"] == 2
    assert [rows[a]["all_finite"] for a in (2, 3, 4, 5)] == [False, False, False, False]
    checked = factor_validation_frame(fitted.item_factors)
    assert checked.columns == ["aid", "norm", "all_finite", "dims"]
    assert checked.where("NOT all_finite OR dims != 8 OR norm <= 0").count() == 0


def test_similar_items_recover_planted_groups(neighbours, planted):
    _, group_of_aid, _ = planted
    same_group = neighbours.assign(
        same=[group_of_aid[a] == group_of_aid[n] for a, n in zip(neighbours["aid"], neighbours["neighbour"])]
    )
    all_in_group = same_group.groupby("aid")["same"].all()
    assert len(all_in_group) == len(group_of_aid)
    assert all_in_group.mean() > 0.9


def test_similar_items_contract(neighbours):
    assert list(neighbours.columns) == ["aid", "neighbour", "score", "rank"]
    assert not (neighbours["aid"] == neighbours["neighbour"]).any()
    assert neighbours["score"].between(-1.0, 1.0).all()
    assert not neighbours.duplicated(["aid", "neighbour"]).any()
    for _, group in neighbours.groupby("aid"):
        group = group.sort_values("rank")
        assert group["rank"].tolist() == list(range(1, TOP_K + 1))  # 119 other items: always k
        assert (np.diff(group["score"].to_numpy()) <= 0).all()


def test_similar_items_equal_brute_force_cosine(fitted, neighbours):
    factors = factors_as_dict(fitted.item_factors, "aid")
    aids = np.array(sorted(factors))
    matrix = np.stack([factors[a] for a in aids])
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    position = {a: i for i, a in enumerate(aids)}
    for aid, group in neighbours.groupby("aid"):
        row = cosine[position[aid]]
        expected = np.sort(row)[::-1][:TOP_K]
        got_scores = row[[position[n] for n in group["neighbour"]]]
        # Same scores as brute force for the returned pairs, and they are the k best (ties
        # at the k-th score may pick either neighbour).
        np.testing.assert_allclose(group["score"].to_numpy(), got_scores, atol=1e-5)
        np.testing.assert_allclose(np.sort(got_scores)[::-1], expected, atol=1e-5)
        clear = set(aids[row > expected[-1] + 1e-5])
        assert clear <= set(group["neighbour"])


def test_fit_is_deterministic_for_a_seed(events, fitted, tmp_path):
    again = fit_als(events, CONFIG, str(tmp_path))
    try:
        for frame_a, frame_b, key in (
            (fitted.item_factors, again.item_factors, "aid"),
            (fitted.session_factors, again.session_factors, "session"),
        ):
            first, second = factors_as_dict(frame_a, key), factors_as_dict(frame_b, key)
            assert first.keys() == second.keys()
            np.testing.assert_allclose(np.stack([first[k] for k in first]), np.stack([second[k] for k in first]), atol=1e-5)
    finally:
        again.release()


def test_block_pair_top_k_is_exact_in_small_chunks():
    rng = np.random.default_rng(3)
    left_keys, right_keys = np.arange(0, 50, 2), np.arange(0, 90, 3)  # shared keys: 0, 6, 12, ...
    left, right = rng.normal(size=(25, 4)), rng.normal(size=(30, 4))
    frames = list(
        top_k_of_block_pair(left_keys, left.ravel(), right_keys, right.ravel(), 4, cosine=True,
                            exclude_same_key=True, chunk_elements=70)
    )
    assert len(frames) > 5  # really chunked
    got = {}
    for frame in frames:
        for l, r, s in frame.itertuples(index=False):
            got.setdefault(l, {})[r] = s
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(left) @ unit(right).T
    for i, key in enumerate(left_keys):
        row = np.where(right_keys == key, -np.inf, cosine[i])
        best = np.argsort(-row)[:4]
        assert set(got[key]) == set(right_keys[best])
        np.testing.assert_allclose([got[key][r] for r in right_keys[best]], row[best], atol=1e-5)


def clustered_factors(n_items: int = 4000, n_directions: int = 40, rank: int = 16, seed: int = 3):
    """Item factors scattered around a few directions, as ALS factors of a catalogue are (plus some
    zero vectors: items ALS shrank away)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_directions, rank))
    vectors = directions[rng.integers(0, n_directions, n_items)] + rng.normal(scale=0.6, size=(n_items, rank))
    vectors[rng.choice(n_items, 10, replace=False)] = 0.0
    aids = rng.permutation(np.arange(n_items) * 3 + 11)
    return aids, vectors.astype(np.float32)


def test_clustered_similar_items_find_nearly_every_exact_neighbour(spark):
    """Above `exact_similarity_max_items` the search looks only at the probed clusters: it must keep
    the contract and find almost all of the exact top k (it never invents a score)."""
    aids, vectors = clustered_factors()
    item_factors = spark.createDataFrame([(int(a), v.tolist()) for a, v in zip(aids, vectors)],
                                         "aid BIGINT, factors ARRAY<FLOAT>").repartition(4)
    config = AlsConfig(top_k=10, similarity_blocks=3, similarity_probes=8)
    exact = similar_items(item_factors, config).toPandas()
    approximate = similar_items(item_factors, AlsConfig(top_k=10, similarity_probes=8, exact_similarity_max_items=100)).toPandas()

    nonzero = {int(a) for a, v in zip(aids, vectors) if np.abs(v).sum() > 0}
    for table in (exact, approximate):  # zero vectors have no direction: no neighbours, nobody's neighbour
        assert set(table["aid"]) == nonzero and set(table["neighbour"]) <= nonzero
    assert not (approximate["aid"] == approximate["neighbour"]).any()
    assert not approximate.duplicated(["aid", "neighbour"]).any()
    for _, group in approximate.groupby("aid"):
        group = group.sort_values("rank")
        assert group["rank"].tolist() == list(range(1, len(group) + 1)) and len(group) <= 10
        assert (np.diff(group["score"].to_numpy()) <= 0).all()

    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    position = {int(a): i for i, a in enumerate(aids)}
    true_cosine = [float(unit[position[a]] @ unit[position[n]]) for a, n in zip(approximate["aid"], approximate["neighbour"])]
    np.testing.assert_allclose(approximate["score"].to_numpy(), true_cosine, atol=1e-5)

    exact_pairs = set(zip(exact["aid"], exact["neighbour"]))
    found = len(exact_pairs & set(zip(approximate["aid"], approximate["neighbour"]))) / len(exact_pairs)
    assert found >= 0.95, found


def test_sessions_below_min_session_items_are_left_out_of_the_fit(spark, events, planted, tmp_path):
    from dataclasses import replace

    from pyspark.sql import functions as F

    rows, group_of_aid, _ = planted
    # One-item sessions on planted items: they link nothing, so dropping them must not change the groups.
    lone = spark.createDataFrame([(10**6 + i, aid, 1_659_304_800_000, "clicks") for i, aid in enumerate(group_of_aid)],
                                 "session BIGINT, aid BIGINT, ts BIGINT, type STRING")
    result = fit_als(events.unionByName(lone), replace(CONFIG, min_session_items=2), str(tmp_path))
    try:
        assert result.stats["n_sessions"] == len({session for session, *_ in rows})
        assert result.session_factors.where(F.col("session") >= 10**6).count() == 0
        assert result.stats["params"]["min_session_items"] == 2
        neighbours = similar_items(result.item_factors, CONFIG).toPandas()
        same = [group_of_aid[a] == group_of_aid[n] for a, n in zip(neighbours["aid"], neighbours["neighbour"])]
        assert np.mean(same) > 0.9
    finally:
        result.release()
