"""A small synthetic shop's model bundle, built without Spark: for the scorer and serving tests.

Source tables with the lake's columns (co-visitation with its matrices and two-hop list, ALS similar items,
top sellers, item statistics), boosters trained on random rows of FEATURE_COLUMNS, and sessions
whose items are in the catalogue. `register_bundle` logs a bundle into an MLflow registry exactly as
the `ranker` asset does (`pipelines.model.log_recommender`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.candidates import CandidateConfig
from pipelines.covisitation import COVISITATION_LISTS
from pipelines.features import FEATURE_CODE_VERSION, FEATURE_COLUMNS, ITEM_FEATURES, KEY_COLUMNS
from pipelines.model import INFO_FILE, TABLE_NAMES
from pipelines.vocabulary import EVENT_TYPES

CATALOGUE = 400
WEEK_START_MS = 1_659_304_800_000  # 2022-08-01 00:00 Europe/Berlin


def source_tables(seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    aids = np.arange(1, CATALOGUE + 1, dtype=np.int64)
    covisitation = []
    for matrix in COVISITATION_LISTS:
        for aid in aids[rng.random(len(aids)) < 0.8]:
            neighbours = rng.choice(aids[aids != aid], size=int(rng.integers(3, 25)), replace=False)
            weights = np.sort(rng.gamma(1.0, 3.0, len(neighbours)))[::-1]
            covisitation += [(matrix, int(aid), int(n), float(w), rank + 1) for rank, (n, w) in enumerate(zip(neighbours, weights))]
    similar = []
    for aid in aids[rng.random(len(aids)) < 0.7]:
        neighbours = rng.choice(aids[aids != aid], size=12, replace=False)
        scores = np.sort(rng.uniform(-0.3, 1.0, 12))[::-1]
        similar += [(int(aid), int(n), float(s), rank + 1) for rank, (n, s) in enumerate(zip(neighbours, scores))]
    top_sellers = []
    for event_type in EVENT_TYPES:
        for list_name in ("popular", "trending"):
            chosen = rng.choice(aids, size=30, replace=False)
            scores = np.sort(rng.gamma(2.0, 10.0, 30))[::-1]
            top_sellers += [(list_name, event_type, rank + 1, int(a), float(s), int(s * 3))
                            for rank, (a, s) in enumerate(zip(chosen, scores))]
    stats_aids = aids[rng.random(len(aids)) < 0.9]
    item_stats = pd.DataFrame({"aid": stats_aids})
    for name in ITEM_FEATURES:
        integer = not name.endswith(("trend", "rate"))
        item_stats[name] = rng.integers(0, 500, len(stats_aids)) if integer else rng.gamma(1.0, 0.5, len(stats_aids))
    return {
        "covisitation": pd.DataFrame(covisitation, columns=["matrix", "aid", "neighbour", "weight", "rank"]),
        "similar_items": pd.DataFrame(similar, columns=["aid", "neighbour", "score", "rank"]).astype({"rank": "int32"}),
        "top_sellers": pd.DataFrame(top_sellers, columns=["list", "type", "rank", "aid", "score", "events"]).astype(
            {"rank": "int32"}),
        "item_stats": item_stats,
    }


def session_events(n_sessions: int, seed: int = 1, first_session: int = 1_000) -> pd.DataFrame:
    """`session, aid, ts, type`: sessions of 1 to 60 events (a few past the 100-event history cap),
    repeated items, shared timestamps, every type; some aids outside the catalogue."""
    rng = np.random.default_rng(seed)
    rows = []
    for session in range(first_session, first_session + n_sessions):
        length = int(rng.integers(1, 60)) if rng.random() > 0.03 else int(rng.integers(100, 140))
        ts = WEEK_START_MS + int(rng.integers(0, 6 * 86_400_000))
        items = rng.integers(1, CATALOGUE + 40, size=max(2, length // 3))
        for _ in range(length):
            ts += int(rng.choice([0, 1_000, 30_000, 600_000]))
            rows.append((session, int(rng.choice(items)), ts, str(rng.choice(EVENT_TYPES, p=[0.8, 0.14, 0.06]))))
    return pd.DataFrame(rows, columns=["session", "aid", "ts", "type"])


def boosters(seed: int = 2) -> dict[str, str]:
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    models = {}
    for event_type in EVENT_TYPES:
        features = rng.normal(size=(3000, len(FEATURE_COLUMNS))).astype(np.float32)
        features[rng.random(features.shape) < 0.3] = np.nan
        labels = (np.nan_to_num(features[:, 0]) + np.nan_to_num(features[:, -1]) + rng.normal(size=3000) > 1.5).astype(int)
        dataset = lgb.Dataset(features, label=labels, group=[30] * 100, feature_name=list(FEATURE_COLUMNS))
        booster = lgb.train({"objective": "lambdarank", "num_leaves": 7, "min_data_in_leaf": 5, "verbosity": -1,
                             "num_threads": 1, "seed": seed}, dataset, num_boost_round=12)
        models[event_type] = booster.model_to_string()
    return models


def write_bundle(directory: Path, tables_dir: Path, week: str = "2022-08-01", seed: int = 0,
                 rounds: dict[str, int] | None = None) -> Path:
    """A bundle folder like `save_bundle` writes: rankers, model_info.json, its tables as Parquet."""
    (directory / "rankers").mkdir(parents=True)
    locations = {}
    for name, frame in source_tables(seed).items():
        target = tables_dir / name
        target.mkdir(parents=True)
        frame.to_parquet(target / "part-00000.parquet", index=False)
        locations[name] = str(target)
    assert set(locations) == set(TABLE_NAMES)
    for event_type, text in boosters(seed + 2).items():
        (directory / "rankers" / f"{event_type}.txt").write_text(text)
    info = {"feature_columns": FEATURE_COLUMNS, "feature_code_version": FEATURE_CODE_VERSION, "tables": locations,
            "table_bytes": {}, "week": week, "candidate_config": CandidateConfig().__dict__,
            "ranker_rounds": rounds or {"clicks": 12, "carts": 5, "orders": 0}}
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
    return directory


def register_bundle(tracking_uri: str, name: str, bundle_dir: Path, artifacts_dir: Path) -> str:
    """Log `bundle_dir` as the pyfunc recommender in a run of its own and register it; returns the
    version. The experiment `name` stores its artifacts under `artifacts_dir` (MLflow's default is
    ./mlruns in the working directory)."""
    import mlflow

    from pipelines.model import log_recommender

    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        name, artifact_location=artifacts_dir.resolve().as_uri())
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_recommender(bundle_dir)
    return str(mlflow.register_model(info.model_uri, name).version)


def assert_same_features(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    """Every (session, type, aid) row in both, every FEATURE_COLUMNS value equal as float32 (NaN = null)."""
    expected = expected.sort_values(list(KEY_COLUMNS), ignore_index=True)
    actual = actual.sort_values(list(KEY_COLUMNS), ignore_index=True)
    assert len(expected) == len(actual), (len(expected), len(actual))
    assert (expected[list(KEY_COLUMNS)].to_numpy() == actual[list(KEY_COLUMNS)].to_numpy()).all()
    differing = {}
    for name in FEATURE_COLUMNS:
        left = expected[name].to_numpy(np.float32, na_value=np.nan)
        right = actual[name].to_numpy(np.float32, na_value=np.nan)
        # One float32 step apart at most: sums of the same doubles in another order.
        same = (np.isnan(left) & np.isnan(right)) | (left == right) | np.isclose(left, right, rtol=2e-7, atol=0)
        if not same.all():
            differing[name] = int((~same).sum())
    assert not differing, f"feature columns differ (rows per column): {differing}"
