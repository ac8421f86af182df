"""`ranker`: LightGBM LambdaRank per target, K-fold evaluation, the MLflow model and the champion gate."""

import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    AssetObservation,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.als import als
from assets.candidates import CANDIDATE_CONFIG
from assets.covisitation import covisitation
from assets.features import features
from assets.partitions import labelled_weeks, weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report, markdown_table
from assets.top_sellers import top_sellers
from pipelines.als import ALS_ITEM_FACTORS_TABLE
from pipelines.diversity import diversity_report
from pipelines.evaluation import EVAL_LABELS_TABLE, TRAINING_CUTS_TABLE, warm_up_week_reason
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
from pipelines.quality import ranker_suite, validate
from pipelines.ranker import BASELINES, RANKER, RankerConfig, evaluate_week
from pipelines.registry import RUN_ID_TAG, WEEK_TAG, gate_version
from pipelines.spark import release_driver_heap
from pipelines.stages.registered_scores import score_registered_versions
from pipelines.tracking import code_version, flatten_metrics, log_lake_inputs
from pipelines.vocabulary import EVENT_TYPES
from resources import LakeResource, MlflowResource, PipelineConfigResource, SparkResource

RANKER_TABLE = "ranker"
RANKER_BEATS_BASELINES_CHECK = "ranker_beats_baselines"
RANKER_CHECKS = AuditedChecks("ranker", {
    RANKER_BEATS_BASELINES_CHECK: (
        "GE: the ranker's out-of-fold OTTO score is at most RECSYS_CHAMPION_TOLERANCE below the hand rule (a ranker "
        "that found no significant gain keeps its order; it is never promoted) and above popularity, on the same sessions."
    ),
})


class RankerRunConfig(Config):
    """LightGBM and K-fold knobs, editable per run in the launchpad; defaults are the benchmarked ones."""

    folds: int = RankerConfig.folds
    seed: int = RankerConfig.seed
    num_boost_round: int = RankerConfig.num_boost_round
    learning_rate: float = RankerConfig.learning_rate
    num_leaves: int = RankerConfig.num_leaves
    min_data_in_leaf: int = RankerConfig.min_data_in_leaf
    label_weeks: int = RankerConfig.label_weeks

    def to_ranker_config(self) -> RankerConfig:
        return RankerConfig(**self.model_dump())


def scores_table(metrics: dict) -> str:
    import pandas as pd

    rows = [
        {"ranking": name, **{t: round(values[f"recall_{t}"], 4) for t in EVENT_TYPES}, "score": round(values["score"], 4),
         "ndcg@20 orders": round(values["ndcg_orders"], 4), "mrr@20 clicks": round(values["mrr_clicks"], 4)}
        for name, values in metrics.items()
    ]
    return markdown_table(pd.DataFrame(rows))


@asset(
    pool=SPARK_POOL,
    deps=[AssetDep(features, partition_mapping=labelled_weeks), top_sellers, covisitation, als],
    partitions_def=weekly_partitions,
    group_name="ranking",
    kinds={"lightgbm", "mlflow"},
    check_specs=RANKER_CHECKS.specs,
    description=(
        "One LightGBM LambdaRank model per target (clicks, carts, orders), session-grouped K-fold on the labelled "
        "rows of W and up to three weeks before it (each week's rows from the sources of the week before it), "
        "scoring W's. The OTTO score of W's out-of-fold predictions is the week's result, beside the popularity and "
        "hand-rule baselines on the same sessions; the week before's model and the champion score W's same rows "
        "with their boosters (the forward score). Logs the week's MLflow run (metrics, plots, OOF predictions and "
        "labels), registers the pyfunc recommender with week W's sources (what it serves during W+1) and moves "
        "`champion` only through the gate. The warm-up week trains nothing."
    ),
)
def ranker(
    context: AssetExecutionContext,
    config: RankerRunConfig,
    spark: SparkResource,
    lake: LakeResource,
    mlflow_tracking: MlflowResource,
    pipeline_config: PipelineConfigResource,
) -> MaterializeResult:
    import mlflow

    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    sources_week = pipeline_config.sources_week(context.partition_key)
    if sources_week is None:
        reason = warm_up_week_reason(week)
        audited.write_document({"week": week.key, "warm_up": reason}, RANKER_TABLE, week)
        return RANKER_CHECKS.warm_up(context, audited, reason, metadata={"week": week.key})
    ranker_config = config.to_ranker_config()
    started = time.perf_counter()
    # The fits run in this process beside the JVM: it gives its idle heap back first.
    release_driver_heap(spark.session)
    trained = evaluate_week(spark.session, audited, week, sources_week, ranker_config)
    for skipped_week, why in trained.skipped.items():
        context.log.info(f"ranker: week {skipped_week} not trained on: {why}")
    evaluation, week_features, labels = trained.evaluation, trained.features, trained.labels
    fit_seconds = time.perf_counter() - started
    results, metrics, score = evaluation.results, evaluation.metrics, evaluation.score
    baselines = {name: metrics[name]["score"] for name in BASELINES}

    with tempfile.TemporaryDirectory(prefix="ranker-") as scratch:
        scratch = Path(scratch)
        with mlflow_tracking.week_run(context) as run:
            try:
                # Lists are built from week W-1's sources: their items are the catalogue, their ALS
                # factors say how alike two items are.
                diversity = diversity_report(
                    evaluation.predictions, audited.read_partition(spark.session, ALS_ITEM_FACTORS_TABLE, sources_week),
                    audited.read_partition(spark.session, ITEM_STATS_TABLE, sources_week))
                coverage = diversity[RANKER]["catalogue_coverage"]
                spark_write_predictions_csv(evaluation.predictions[RANKER], scratch / "oof_predictions.csv")
                spark_write_labels_jsonl(labels, scratch / "labels.jsonl")
                curves = {name: spark_recall_curve(frame, labels) for name, frame in evaluation.predictions.items()}
            finally:
                evaluation.release()
            plot_recall_curves(curves, scratch / "recall_at_k.png")
            for event_type, result in results.items():
                plot_feature_importance(result.feature_importance, scratch / f"feature_importance_{event_type}.png")
            mlflow.log_params({f"ranker.{k}": v for k, v in ranker_config.params().items()})
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
            trained_on = [(pipeline_config.week(key), (FEATURES_TABLE, EVAL_LABELS_TABLE)) for key in trained.label_weeks]
            trained_on += [(pipeline_config.week(key), (TRAINING_FEATURES_TABLE, TRAINING_CUTS_TABLE)) for key in trained.cut_weeks]
            log_lake_inputs({f"{table}/{labelled.folder}": audited.partition_dir(table, labelled)
                             for labelled, tables in trained_on for table in tables},
                            context="training")

            bundle = save_bundle(
                scratch / "bundle",
                source_tables(spark.session, audited, week),
                {t: r.model for t, r in results.items()},
                {"week": week.key, "sources_week": week.key, "rows_sources_week": sources_week.key,
                 "candidate_config": asdict(CANDIDATE_CONFIG), "score": score, "baselines": baselines,
                 "ranker_rounds": {t: r.rounds for t, r in results.items()},
                 "mlflow_run_id": run.info.run_id, "code_version": code_version()},
                audited.model_tables_dir(run.info.run_id),
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
            registered_scores = score_registered_versions(mlflow_tracking, week, week_features, labels,
                                                          scratch / "forward", context.log)
            if registered_scores.champion_now is not None:
                mlflow.log_metric("champion.score_on_week", registered_scores.champion_now)
            if registered_scores.previous is not None:
                mlflow.log_metric("previous_week_model.forward_score", registered_scores.forward["score"])
        run_id, experiment_id = run.info.run_id, run.info.experiment_id
        previous_week = registered_scores.previous_week_forward
        summary = {
            "week": week.key, "rows_sources_week": sources_week.key, "metrics": metrics, "ceiling": evaluation.ceiling,
            "coverage": coverage, "model_name": mlflow_tracking.registered_model_name, "mlflow_run_id": run_id,
            "train_rows": {t: r.train_rows for t, r in results.items()},
            "label_weeks": trained.label_weeks, "training_cut_weeks": trained.cut_weeks,
            "label_weeks_skipped": trained.skipped,
            "rounds": {t: {"final": r.rounds, "folds": [f.rounds for f in r.folds]} for t, r in results.items()},
            "previous_week_forward": None if previous_week is None else {
                "week": week.shift(-1).key, "model_version": previous_week[0], "metrics": registered_scores.forward},
        }
        # Staged for the audit; the gate's decision joins it once the audit passed.
        audited.write_document(summary, RANKER_TABLE, week)

        def register_and_gate() -> dict:
            """Only for a version whose audit passed: register it, record the week before's forward
            score, run the champion gate, and stage the record the week's tables are published from."""
            client, name = mlflow_tracking.client, mlflow_tracking.registered_model_name
            registered = mlflow.register_model(model_info.model_uri, name)
            registered_scores.record_forward(client, name, week.key)
            decision = gate_version(
                client, name, registered.version, score, baselines, mlflow_tracking.champion_tolerance,
                extra_tags={WEEK_TAG: week.key, RUN_ID_TAG: run_id},
                champion_score_now=registered_scores.champion_now, champion_unusable=registered_scores.champion_unusable,
                champion_scored=registered_scores.champion_version, previous_week_forward=previous_week,
            )
            for key, value in {"model.version": registered.version, "model.gate_reason": decision.reason,
                               "model.gate": "promoted" if decision.promoted else "rejected"}.items():
                client.set_tag(run_id, key, value)
            audited.write_document({**summary, "gate": decision.as_dict(), "model_version": registered.version},
                                   RANKER_TABLE, week)
            context.log.info(f"ranker {score:.4f} vs baselines {baselines}; gate: {decision.reason}")
            if previous_week is not None:
                # The week before's partition gets its model's forward score once this week's rows exist.
                context.log_event(AssetObservation(asset_key=context.asset_key, partition=week.shift(-1).key, metadata={
                    "forward_score": previous_week[1], "forward_week": week.key,
                    "model": f"{name} v{previous_week[0]}",
                    "forward_scores": MetadataValue.md(scores_table({"forward": registered_scores.forward})),
                }))
            links = {}
            if mlflow_tracking.tracking_uri.startswith(("http://", "https://")):  # the MLflow UI serves these
                ui = mlflow_tracking.tracking_uri.rstrip("/")
                links = {"mlflow_run": MetadataValue.url(f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"),
                         "mlflow_model_version": MetadataValue.url(f"{ui}/#/models/{name}/versions/{registered.version}")}
            return {
                "model": f"{name} v{registered.version}",
                "champion_gate": MetadataValue.json(decision.as_dict()),
                "model_uri": f"models:/{name}/{registered.version}",
                **links,
            }

        return RANKER_CHECKS.audit(
            context, audited, spark=spark, mlflow_tracking=mlflow_tracking, pipeline_config=pipeline_config,
            on_pass=register_and_gate,
            metadata={
                "week": week.key,
                "rows_built_from_sources_of": sources_week.key,
                "bundled_sources_of": week.key,
                "score": score,
                **{f"{name}_score": value for name, value in baselines.items()},
                **({} if previous_week is None else {
                    "previous_week_model_forward_score": previous_week[1],
                    "previous_week_model": f"{mlflow_tracking.registered_model_name} v{previous_week[0]}"}),
                "scores": MetadataValue.md(scores_table(metrics)),
                "candidate_ceiling": MetadataValue.json(evaluation.ceiling),
                "catalogue_coverage": coverage,
                "mlflow_run_id": run_id,
                "fit_seconds": round(fit_seconds, 1),
                # The weeks whose labelled sessions the ranker trained on; only this week's are scored.
                "label_weeks": MetadataValue.json({"used": trained.label_weeks, "training_cuts": trained.cut_weeks,
                                                   "skipped": trained.skipped}),
                # The model in MLflow holds the rankers; the tables it reads stay in the lake.
                "bundle_bytes": bundle_size["bundle"],
                "bundle_table_bytes": bundle_size["tables"],
                "seconds_by_phase": MetadataValue.json(evaluation.timings),
                # 0 for a type means held-out sessions preferred the hand rule's order to any boosting.
                "boosting_rounds": MetadataValue.json({t: r.rounds for t, r in results.items()}),
            },
        )


@RANKER_CHECKS.implements(RANKER_BEATS_BASELINES_CHECK)
def ranker_beats_baselines(
    context: AssetExecutionContext, lake: StagedLake, mlflow_tracking: MlflowResource, pipeline_config: PipelineConfigResource
) -> AssetCheckResult:
    import pandas as pd

    week = pipeline_config.week(context.partition_key)
    metrics = lake.lake.read_stats(RANKER_TABLE, week)["metrics"]
    score = metrics["ranker"]["score"]
    margins = pd.DataFrame([{
        "margin_over_covisitation": score - metrics["baseline_covisitation"]["score"],
        "margin_over_popularity": score - metrics["baseline_popularity"]["score"],
    }])
    report = validate(margins, RANKER_BEATS_BASELINES_CHECK, ranker_suite(mlflow_tracking.champion_tolerance))
    return check_result_from_report(
        report, week=week.key, score=score, **{f"{b}_score": metrics[b]["score"] for b in BASELINES}
    )
