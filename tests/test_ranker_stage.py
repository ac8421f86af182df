"""The `ranker` stage without Dagster (`pipelines.stages.ranker_week`): a lake of two weeks (the
warm-up week and one with labelled rows), then the stage's two steps called directly, as the bench
and the asset call them: train, score, log and stage the record; register and gate once audited."""

from __future__ import annotations

import dataclasses

import pytest
from dagster import DagsterInstance

from definitions import build_definitions
from pipelines.diversity import MMR_LAMBDAS, mmr_ranking_name
from pipelines.generate import generate_raw
from pipelines.lake import Lake
from pipelines.ranker import RankerConfig
from pipelines.registry import CHAMPION_ALIAS, FORWARD_METRIC_PREFIX, WEEK_TAG
from pipelines.stages.ranker_week import RANKER_TABLE, register_and_gate, train_ranker_week
from pipelines.stages.registered_scores import FORWARD_PREDICTIONS_CSV
from pipelines.tracking import experiment_id
from pipelines.weeks import Week
from resources import MlflowResource
from tests.conftest import TIMEZONE, make_resources
from tests.spark_stages import FAST_ALS, FEATURE_ASSETS, materialize

WEEKS = ("2022-08-01", "2022-08-08")
LOOSE = {"drift_min_volume_ratio": 0.01, "drift_max_volume_ratio": 100.0, "drift_max_type_share_delta": 1.0,
         "min_source_coverage": 0.0}
FAST = RankerConfig(folds=2, num_boost_round=10, min_data_in_leaf=5, num_threads=1, use_training_cuts=True)


@pytest.mark.timeout(900)
def test_the_ranker_stage_trains_logs_stages_its_record_and_gates_after_the_audit(spark, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    raw_dir, lake_dir, tracking_uri = tmp_path / "raw", tmp_path / "lake", f"sqlite:///{tmp_path / 'mlflow.db'}"
    generate_raw(raw_dir, n_sessions=800, n_weeks=len(WEEKS), start=WEEKS[0], seed=3, timezone=TIMEZONE)
    definitions = build_definitions(make_resources(str(raw_dir), str(lake_dir), mlflow_uri=tracking_uri,
                                                   training_cuts=2, **LOOSE))
    runs = materialize(definitions, [(week, FEATURE_ASSETS) for week in WEEKS], {"ops": {"als": {"config": FAST_ALS}}},
                       instance=DagsterInstance.ephemeral())
    assert all(run["success"] for run in runs), [run["failures"] for run in runs]

    week, sources_week = (Week.parse(key, TIMEZONE) for key in reversed(WEEKS))
    audited = Lake(str(lake_dir)).audited(week)
    tracking = MlflowResource(tracking_uri=tracking_uri, experiment_name="stage", registered_model_name="stage")

    def open_run():
        mlflow.set_tracking_uri(tracking_uri)
        return mlflow.start_run(experiment_id=experiment_id(tracking_uri, "stage"))

    trained = train_ranker_week(spark, audited, week, sources_week, FAST, tracking, open_run, tmp_path / "scratch")
    assert trained.trained.label_weeks == [week.key] and trained.trained.cut_weeks == [week.key]
    assert trained.summary == audited.read_stats(RANKER_TABLE, week)
    assert set(trained.baselines) == {"baseline_covisitation", "baseline_popularity"}
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.metrics["ranker.score"] == pytest.approx(trained.score)
    assert run.data.metrics["ranker.training_cut_weeks_used"] == 1
    assert run.data.metrics["ranker.sample_rows.carts"] > 0
    assert {f"training_cuts/{week.folder}"} <= {d.dataset.name for d in run.inputs.dataset_inputs}
    # The MMR trade-off beside the ranker's: accuracy and diversity at each lambda.
    for lam in MMR_LAMBDAS:
        name = mmr_ranking_name(lam)
        assert 0 < run.data.metrics[f"{name}.score"] <= run.data.metrics["ranker.score"] + 0.05
        assert f"diversity.{name}.intra_list_diversity" in run.data.metrics
    assert {a.path for a in client.list_artifacts(trained.run_id, "evaluation")} >= {
        "evaluation/oof_predictions.csv", "evaluation/labels.jsonl", "evaluation/recall_at_k.png"}
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {f"training_features/{week.folder}", f"features/{week.folder}"} <= inputs
    assert not client.search_model_versions("name='stage'"), "nothing is registered before the audit"

    # Registered as the week before's version, the first model is scored forward by the next
    # training, and the gate logs those lists into its run from that training's scratch folder.
    previous = mlflow.register_model(trained.model_uri, "stage")
    client.set_model_version_tag("stage", previous.version, WEEK_TAG, sources_week.key)
    again = train_ranker_week(spark, audited, week, sources_week, FAST, tracking, open_run, tmp_path / "scratch2")
    assert again.registered_scores.previous_week_forward[0] == str(previous.version)

    # The gate promotes a version only if it is at most the tolerance below the hand rule.
    lenient = dataclasses.replace(again, baselines={name: 0.0 for name in again.baselines})
    outcome = register_and_gate(lenient, tracking, audited)
    assert outcome.version == "2" and outcome.decision.promoted
    assert str(client.get_model_version_by_alias("stage", CHAMPION_ALIAS).version) == "2"
    record = audited.read_stats(RANKER_TABLE, week)
    assert str(record["model_version"]) == "2" and record["gate"] == outcome.decision.as_dict()
    assert client.get_run(again.run_id).data.tags["model.gate"] == "promoted"
    forward = {a.path for a in client.list_artifacts(trained.run_id, FORWARD_METRIC_PREFIX)}
    assert f"{FORWARD_METRIC_PREFIX}/{FORWARD_PREDICTIONS_CSV}" in forward


def test_mlflow_ui_links_only_where_a_tracking_server_serves_them(tmp_path):
    from pipelines.recommendations import HAND_RULE_MODEL
    from pipelines.tracking import ui_links

    assert ui_links(f"sqlite:///{tmp_path / 'mlflow.db'}", "abc", "stage", "3") == {}
    assert ui_links("http://mlflow:5000/", "abc", "stage", 3, experiment="7") == {
        "mlflow_run": "http://mlflow:5000/#/experiments/7/runs/abc",
        "mlflow_model_version": "http://mlflow:5000/#/models/stage/versions/3",
    }
    assert ui_links("http://mlflow:5000", None, HAND_RULE_MODEL, None) == {}
