"""Candidate sources as Dagster assets on generated data: two weeks through the whole graph."""

from __future__ import annotations

import pytest
from dagster import AssetSelection, DagsterInstance, define_asset_job, in_process_executor

import assets.covisitation
from assets.partitions import weekly_partitions
from definitions import build_definitions
from jobs import WEEKLY_JOB_NAME
from pipelines.generate import generate_raw
from pipelines.lake import Lake
from tests.conftest import make_resources

WEEKS = ["2022-08-01", "2022-08-08"]
# Small and fast: the stage logic is the same at rank 64.
FAST_RUN_CONFIG = {"ops": {"als": {"config": {"rank": 8, "max_iter": 4, "similarity_blocks": 2}}}}


@pytest.fixture(scope="module")
def two_weeks(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("candidate-assets")
    generate_raw(root / "raw", n_sessions=int(__import__("os").environ.get("T_SESSIONS", 2500)), n_weeks=2, start=WEEKS[0], seed=11)
    resources = make_resources(str(root / "raw"), str(root / "lake"))
    definitions = build_definitions(resources)
    instance = DagsterInstance.ephemeral()
    job = definitions.resolve_job_def(WEEKLY_JOB_NAME)
    results = {
        week: job.execute_in_process(partition_key=week, instance=instance, run_config=FAST_RUN_CONFIG, raise_on_error=False)
        for week in WEEKS
    }
    return {"root": root, "resources": resources, "definitions": definitions, "instance": instance, "results": results}


def _metadata(result, asset_key: str) -> dict:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset_key)
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_every_week_materializes_every_source_with_passing_checks(two_weeks):
    for week, result in two_weeks["results"].items():
        assert result.success, week
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {"events", "sessions", "eval_split", "top_sellers", "covisitation", "als", "candidates"} <= materialized
        evaluations = result.get_asset_check_evaluations()
        failed = [e.check_name for e in evaluations if not e.passed]
        assert failed == [], (week, failed)
        assert len(evaluations) >= 14


def test_combined_ceiling_beats_every_single_source_for_carts_and_orders(two_weeks):
    for week, result in two_weeks["results"].items():
        recall = _metadata(result, "candidates")["recall"]
        for event_type in ("carts", "orders"):
            combined = recall["combined"][f"ceiling_recall_{event_type}"]
            for source in ("history", "covisitation", "als", "top_sellers"):
                assert combined > recall[source][f"ceiling_recall_{event_type}"], (week, event_type, source)
        # The hand rules must beat popularity by a wide margin on data with real structure.
        assert recall["baseline_covisitation"]["score"] > recall["baseline_popularity"]["score"] + 0.1


def test_mlflow_has_one_run_per_week_with_baseline_scores(two_weeks):
    import mlflow

    resource = two_weeks["resources"]["mlflow_tracking"]
    mlflow.set_tracking_uri(resource.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[resource.experiment_name])
    assert sorted(runs["tags.dagster.partition"]) == WEEKS
    assert runs["metrics.baseline_covisitation.score"].notna().all()
    assert runs["metrics.recall.combined.ceiling_recall_orders"].notna().all()
    assert runs["metrics.als.item_factor_norm.mean"].notna().all()
    assert (runs["params.als.rank"] == "8").all()


def test_sources_learn_only_from_weeks_before_and_visible_prefixes(two_weeks, spark):
    """No hidden (label) event of week W may reach W's co-visitation table."""
    from pyspark.sql import functions as F

    from pipelines.evaluation import EVAL_LABELS_TABLE, EVAL_SESSIONS_TABLE
    from pipelines.weeks import Week

    lake = Lake(str(two_weeks["root"] / "lake"))
    week = Week.parse(WEEKS[1], "Europe/Berlin")
    sessions_with_only_hidden_buys = (
        lake.read_partition(spark, EVAL_LABELS_TABLE, week)
        .join(lake.read_partition(spark, EVAL_SESSIONS_TABLE, week), "session")
        .where((F.size("orders") > 0) & F.forall("prefix", lambda e: e["type"] == "clicks"))
        .count()
    )
    assert sessions_with_only_hidden_buys > 0  # the leak test below has something to catch
    # Rebuild week W's training data exactly as the assets do and check no event is after a cut.
    from pipelines.evaluation import training_events

    train = training_events(spark, lake, [Week.parse(WEEKS[0], "Europe/Berlin")], lake.read_partition(spark, EVAL_SESSIONS_TABLE, week))
    cuts = lake.read_partition(spark, EVAL_SESSIONS_TABLE, week).select("session", "cut_ts")
    leaked = train.join(cuts, "session").where(F.col("ts") > F.col("cut_ts")).count()
    assert leaked == 0
    assert train.where(F.col("ts") >= week.end_ms).count() == 0


def test_a_corrupted_covisitation_table_fails_its_check_and_blocks_candidates(two_weeks, monkeypatch, spark):
    from pyspark.sql import functions as F

    real_builder = assets.covisitation.build_covisitation

    def with_self_pairs(*args, **kwargs):
        table = real_builder(*args, **kwargs)
        return table.withColumn("neighbour", F.when(F.col("rank") == 1, F.col("aid")).otherwise(F.col("neighbour")))

    monkeypatch.setattr(assets.covisitation, "build_covisitation", with_self_pairs)
    definitions = build_definitions(two_weeks["resources"])
    rerun = define_asset_job(
        "rerun_covisitation", selection=AssetSelection.assets("covisitation", "candidates"),
        partitions_def=weekly_partitions, executor_def=in_process_executor,
    ).resolve(asset_graph=definitions.resolve_asset_graph())
    result = rerun.execute_in_process(partition_key=WEEKS[1], instance=two_weeks["instance"], raise_on_error=False)

    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["covisitation_contract"].passed
    failed = checks["covisitation_contract"].metadata["failed_expectations"].value
    assert any(f["kwargs"].get("column") == "is_self_pair" for f in failed)
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"covisitation"}
