"""The model bundle: rankers and info in the bundle, the source tables as a snapshot in the lake."""

from __future__ import annotations

import json
import shutil

import lightgbm as lgb
import numpy as np
import pytest

from pipelines.features import FEATURE_COLUMNS, SourceTables
from pipelines.lake import Lake
from pipelines.model import INFO_FILE, TABLE_NAMES, Bundle, save_bundle


def tiny_booster():
    rng = np.random.default_rng(0)
    features = rng.random((60, len(FEATURE_COLUMNS)))
    dataset = lgb.Dataset(features, label=rng.integers(0, 2, 60), group=[20, 20, 20])
    return lgb.train({"objective": "lambdarank", "verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5}, dataset, 2)


def tiny_tables(spark) -> SourceTables:
    return SourceTables(**{
        name: spark.createDataFrame([(index, float(index) / 10) for index in range(1, 6 + position)], "aid BIGINT, score DOUBLE")
        for position, name in enumerate(TABLE_NAMES)
    })


def test_bundle_holds_the_rankers_and_reads_its_tables_from_the_lake_snapshot(spark, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    booster = tiny_booster()
    bundle_dir = save_bundle(tmp_path / "bundle", tiny_tables(spark), {t: booster for t in ("clicks", "carts", "orders")},
                             {"week": "2022-08-08"}, lake.model_tables_dir("run-1"))

    # Nothing but the rankers and the info travels with the bundle (MLflow stores and downloads this).
    files = sorted(path.relative_to(bundle_dir).as_posix() for path in bundle_dir.rglob("*") if path.is_file())
    assert files == [INFO_FILE, "rankers/carts.txt", "rankers/clicks.txt", "rankers/orders.txt"]
    info = json.loads((bundle_dir / INFO_FILE).read_text())
    assert info["tables"] == {name: str((lake.model_tables_dir("run-1") / name).resolve()) for name in TABLE_NAMES}
    assert all(size > 0 for size in info["table_bytes"].values())

    opened = Bundle(bundle_dir)
    tables = opened.tables(spark)
    assert {name: getattr(tables, name).count() for name in TABLE_NAMES} == {
        name: 5 + position for position, name in enumerate(TABLE_NAMES)}
    sizes = opened.size_bytes()
    assert sizes["tables"] == sum(info["table_bytes"].values())
    assert 0 < sizes["bundle"] < 1_000_000

    # A snapshot is written once: a second model cannot overwrite the tables the first one reads.
    with pytest.raises(FileExistsError, match="already holds"):
        save_bundle(tmp_path / "bundle-2", tiny_tables(spark), {"clicks": booster}, {}, lake.model_tables_dir("run-1"))

    # Tables gone from the lake: a clear error naming them, not a Spark stack trace at the first read.
    shutil.rmtree(lake.model_tables_dir("run-1") / "covisitation")
    with pytest.raises(FileNotFoundError, match="covisitation.*must see the lake"):
        opened.tables(spark)


def test_lake_partitions_are_logged_as_the_runs_dataset_inputs(tmp_path):
    import mlflow

    from pipelines.tracking import log_lake_inputs

    partition = tmp_path / "lake" / "features" / "week=2022-08-08"
    partition.mkdir(parents=True)
    (partition / "part-0.parquet").write_bytes(b"x" * 10)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        log_lake_inputs({"features/week=2022-08-08": partition}, context="training")
    (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.name == "features/week=2022-08-08" and str(partition) in logged.dataset.source
    assert [tag.value for tag in logged.tags if tag.key == "mlflow.data.context"] == ["training"]
    (partition / "part-1.parquet").write_bytes(b"y")
    with mlflow.start_run() as again:
        log_lake_inputs({"features/week=2022-08-08": partition}, context="training")
    assert mlflow.get_run(again.info.run_id).inputs.dataset_inputs[0].dataset.digest != logged.dataset.digest
