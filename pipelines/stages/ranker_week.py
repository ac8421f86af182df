"""The `ranker` stage of week W, without Dagster.

`train_ranker_week` trains and scores the week (`pipelines.ranker.evaluate_week`), logs the week's
MLflow run (metrics, diversity, plots, out-of-fold predictions and labels, the lake partitions it
trained on), saves the bundle with W's sources and logs it as the pyfunc model, scores the
registered versions on W's rows (`score_registered_versions`) and stages the week's record for
the audit. Only after the audit passed does `register_and_gate` register the version, record the
week before's forward score and move `champion` through the gate.

`tracking` is anything with `client`, `registered_model_name`, `champion_tolerance` and
`tracking_uri` (the `mlflow_tracking` resource); `open_run` opens the week's MLflow run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.als import ALS_ITEM_FACTORS_TABLE
from pipelines.candidates import CANDIDATE_CONFIG
from pipelines.diversity import MMR_LAMBDAS, diversity_report
from pipelines.evaluation import EVAL_LABELS_TABLE, TRAINING_CUTS_TABLE
from pipelines.features import (
    FEATURE_CODE_VERSION,
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    ITEM_STATS_TABLE,
    TRAINING_FEATURES_TABLE,
    source_tables,
)
from pipelines.metrics import spark_recall_curve, spark_write_labels_jsonl, spark_write_predictions_csv
from pipelines.model import Bundle, log_recommender, save_bundle
from pipelines.plots import plot_feature_importance, plot_recall_curves
from pipelines.ranker import BASELINES, RANKER, RankerConfig, WeekTraining, evaluate_week
from pipelines.registry import RUN_ID_TAG, WEEK_TAG, GateDecision, gate_version
from pipelines.spark import release_driver_heap
from pipelines.stages.registered_scores import RegisteredScores, score_registered_versions
from pipelines.tracking import code_version, flatten_metrics, log_lake_inputs
from pipelines.weeks import Week

RANKER_TABLE = "ranker"


@dataclass
class TrainedWeek:
    """What `train_ranker_week` trained, logged and staged for week W."""

    week: Week
    sources_week: Week  # whose sources built W's rows
    trained: WeekTraining
    score: float
    baselines: dict[str, float]
    coverage: float
    fit_seconds: float
    run_id: str
    experiment_id: str
    model_uri: str
    bundle_size: dict[str, int]
    registered_scores: RegisteredScores
    summary: dict  # the record staged in the lake's `ranker` table

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return self.trained.evaluation.metrics

    @property
    def rounds(self) -> dict[str, int]:
        return {t: r.rounds for t, r in self.trained.evaluation.results.items()}


@dataclass
class GateOutcome:
    version: str
    decision: GateDecision


def train_ranker_week(spark, lake, week, sources_week, config: RankerConfig, tracking,
                      open_run: Callable, scratch: Path, log: logging.Logger | None = None) -> TrainedWeek:
    """Train, score and log week W (see the module docstring); `lake` is the week's audited lake.
    `scratch`: an empty folder for the artefacts, kept until `register_and_gate` has run (the week
    before's forward lists are logged from it then)."""
    import mlflow

    log = log or logging.getLogger(__name__)
    started = time.perf_counter()
    # The fits run in this process beside the JVM: it gives its idle heap back first.
    release_driver_heap(spark)
    trained = evaluate_week(spark, lake, week, sources_week, config, mmr_lambdas=MMR_LAMBDAS)
    for skipped_week, why in trained.skipped.items():
        log.info(f"ranker: week {skipped_week} not trained on: {why}")
    evaluation, labels = trained.evaluation, trained.labels
    fit_seconds = time.perf_counter() - started
    results, metrics, score = evaluation.results, evaluation.metrics, evaluation.score
    baselines = {name: metrics[name]["score"] for name in BASELINES}

    scratch.mkdir(parents=True, exist_ok=True)
    with open_run() as run:
        try:
            # Lists are built from week W-1's sources: their items are the catalogue, their ALS
            # factors say how alike two items are.
            diversity = diversity_report(
                evaluation.predictions, lake.read_partition(spark, ALS_ITEM_FACTORS_TABLE, sources_week),
                lake.read_partition(spark, ITEM_STATS_TABLE, sources_week))
            spark_write_predictions_csv(evaluation.predictions[RANKER], scratch / "oof_predictions.csv")
            spark_write_labels_jsonl(labels, scratch / "labels.jsonl")
            curves = {name: spark_recall_curve(frame, labels) for name, frame in evaluation.predictions.items()}
        finally:
            evaluation.release()
        coverage = diversity[RANKER]["catalogue_coverage"]
        plot_recall_curves(curves, scratch / "recall_at_k.png")
        for event_type, result in results.items():
            plot_feature_importance(result.feature_importance, scratch / f"feature_importance_{event_type}.png")
        mlflow.log_params({f"ranker.{k}": v for k, v in config.params().items()})
        mlflow.log_params({"features.code_version": FEATURE_CODE_VERSION, "features.count": len(FEATURE_COLUMNS)})
        mlflow.log_metrics({
            **flatten_metrics("", metrics),
            **flatten_metrics("ceiling", evaluation.ceiling),
            **flatten_metrics("diversity", diversity),
            "catalogue_coverage": coverage,
            "ranker.seconds": fit_seconds,
            "ranker.label_weeks_used": len(trained.label_weeks),
            "ranker.training_cut_weeks_used": len(trained.cut_weeks),
            **{f"ranker.train_rows.{t}": r.train_rows for t, r in results.items()},
            **{f"ranker.sample_rows.{t}": r.sample_rows for t, r in results.items()},
            **{f"ranker.rounds.{t}": r.rounds for t, r in results.items()},
        })
        for path in sorted(scratch.iterdir()):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
        log_lake_inputs(_trained_on_partitions(lake, week, trained), context="training")

        bundle = save_bundle(
            scratch / "bundle",
            source_tables(spark, lake, week),
            {t: r.model for t, r in results.items()},
            {"week": week.key, "sources_week": week.key, "rows_sources_week": sources_week.key,
             "candidate_config": asdict(CANDIDATE_CONFIG), "score": score, "baselines": baselines,
             "ranker_rounds": {t: r.rounds for t, r in results.items()},
             "mlflow_run_id": run.info.run_id, "code_version": code_version()},
            lake.model_tables_dir(run.info.run_id),
        )
        saved = Bundle(bundle)
        bundle_size = saved.size_bytes()
        mlflow.log_params({f"bundle.tables.{name}": location for name, location in saved.info["tables"].items()})
        mlflow.log_metrics({"bundle.bytes": bundle_size["bundle"], "bundle.table_bytes": bundle_size["tables"]})
        model_info = log_recommender(bundle)
        # The logged model's page shows what it scored, next to its signature.
        mlflow.log_metrics({f"{RANKER}.score": score, **{f"{name}.score": value for name, value in baselines.items()}},
                           model_id=model_info.model_id)
        log_lake_inputs({f"{table}/{week.folder}": location for table, location in saved.info["tables"].items()},
                        context="serving")
        registered_scores = score_registered_versions(tracking, week, trained.features, labels,
                                                      scratch / "forward", log)
        if registered_scores.champion_now is not None:
            mlflow.log_metric("champion.score_on_week", registered_scores.champion_now)
        if registered_scores.previous is not None:
            mlflow.log_metric("previous_week_model.forward_score", registered_scores.forward["score"])

    previous_week = registered_scores.previous_week_forward
    summary = {
        "week": week.key, "rows_sources_week": sources_week.key, "metrics": metrics, "ceiling": evaluation.ceiling,
        "coverage": coverage, "model_name": tracking.registered_model_name, "mlflow_run_id": run.info.run_id,
        "train_rows": {t: r.train_rows for t, r in results.items()},
        "label_weeks": trained.label_weeks, "training_cut_weeks": trained.cut_weeks,
        "label_weeks_skipped": trained.skipped,
        "rounds": {t: {"final": r.rounds, "folds": [f.rounds for f in r.folds]} for t, r in results.items()},
        "previous_week_forward": None if previous_week is None else {
            "week": week.shift(-1).key, "model_version": previous_week[0], "metrics": registered_scores.forward},
    }
    # Staged for the audit; the gate's decision joins it once the audit passed.
    lake.write_document(summary, RANKER_TABLE, week)
    return TrainedWeek(
        week=week, sources_week=sources_week, trained=trained, score=score, baselines=baselines, coverage=coverage,
        fit_seconds=fit_seconds, run_id=run.info.run_id, experiment_id=run.info.experiment_id,
        model_uri=model_info.model_uri, bundle_size=bundle_size, registered_scores=registered_scores, summary=summary,
    )


def _trained_on_partitions(lake, week, trained: WeekTraining) -> dict[str, Path]:
    """The lake partitions the week's model learned from, by `table/week=…`."""
    tables_of_week = [(key, (FEATURES_TABLE, EVAL_LABELS_TABLE)) for key in trained.label_weeks]
    tables_of_week += [(key, (TRAINING_FEATURES_TABLE, TRAINING_CUTS_TABLE)) for key in trained.cut_weeks]
    partitions = {}
    for key, tables in tables_of_week:
        labelled = Week.parse(key, week.timezone)
        partitions.update({f"{table}/{labelled.folder}": lake.partition_dir(table, labelled) for table in tables})
    return partitions


def register_and_gate(trained: TrainedWeek, tracking, lake) -> GateOutcome:
    """Only for a version whose audit passed: register it, record the week before's forward score,
    run the champion gate, and stage the record the week's tables are published from."""
    import mlflow

    client, name = tracking.client, tracking.registered_model_name
    registered = mlflow.register_model(trained.model_uri, name)
    scores = trained.registered_scores
    scores.record_forward(client, name, trained.week.key)
    decision = gate_version(
        client, name, registered.version, trained.score, trained.baselines, tracking.champion_tolerance,
        extra_tags={WEEK_TAG: trained.week.key, RUN_ID_TAG: trained.run_id},
        champion_score_now=scores.champion_now, champion_unusable=scores.champion_unusable,
        champion_scored=scores.champion_version, previous_week_forward=scores.previous_week_forward,
    )
    for key, value in {"model.version": registered.version, "model.gate_reason": decision.reason,
                       "model.gate": "promoted" if decision.promoted else "rejected"}.items():
        client.set_tag(trained.run_id, key, value)
    lake.write_document({**trained.summary, "gate": decision.as_dict(), "model_version": registered.version},
                        RANKER_TABLE, trained.week)
    return GateOutcome(version=str(registered.version), decision=decision)
