"""`ranker`: LightGBM LambdaRank per target, K-fold evaluation, the MLflow model and the champion gate."""

import dataclasses
import tempfile
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

from assets.partitions import labelled_weeks, weekly_partitions
from assets.pools import SPARK_POOL
from assets.quality_checks import AuditedChecks, StagedLake, check_result_from_report, table_preview
from pipelines.evaluation import warm_up_week_reason
from pipelines.quality import ranker_suite, validate
from pipelines.ranker import BASELINES, RankerConfig
from pipelines.stages.ranker_week import RANKER_TABLE, TrainedWeek, register_and_gate, train_ranker_week
from pipelines.tracking import ui_links
from pipelines.vocabulary import EVENT_TYPES
from resources import LakeResource, MlflowResource, PipelineConfigResource, SparkResource

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


def scores_table(metrics: dict):
    import pandas as pd

    rows = [
        {"ranking": name, **{t: round(values[f"recall_{t}"], 4) for t in EVENT_TYPES}, "score": round(values["score"], 4),
         "ndcg@20 orders": round(values["ndcg_orders"], 4), "mrr@20 clicks": round(values["mrr_clicks"], 4)}
        for name, values in metrics.items()
    ]
    return table_preview(pd.DataFrame(rows))


@asset(
    pool=SPARK_POOL,
    deps=[AssetDep("features", partition_mapping=labelled_weeks), "top_sellers", "covisitation", "als"],
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
    week = pipeline_config.week(context.partition_key)
    audited = lake.lake.audited(week)
    sources_week = pipeline_config.sources_week(context.partition_key)
    if sources_week is None:
        reason = warm_up_week_reason(week)
        audited.write_document({"week": week.key, "warm_up": reason}, RANKER_TABLE, week)
        return RANKER_CHECKS.warm_up(context, audited, reason, metadata={"week": week.key})
    ranker_config = dataclasses.replace(config.to_ranker_config(), use_training_cuts=pipeline_config.training_cuts > 0)
    # The gate, after the audit, logs the week before's forward lists from the scratch folder.
    with tempfile.TemporaryDirectory(prefix="ranker-") as scratch:
        trained = train_ranker_week(spark.session, audited, week, sources_week, ranker_config, mlflow_tracking,
                                    open_run=lambda: mlflow_tracking.week_run(context), scratch=Path(scratch),
                                    log=context.log)
        return RANKER_CHECKS.audit(
            context, audited, spark=spark, mlflow_tracking=mlflow_tracking, pipeline_config=pipeline_config,
            on_pass=lambda: gate_passed_version(context, trained, mlflow_tracking, audited),
            metadata=ranker_metadata(trained, mlflow_tracking.registered_model_name),
        )


def gate_passed_version(context: AssetExecutionContext, trained: TrainedWeek, mlflow_tracking: MlflowResource,
                        audited) -> dict:
    """Register and gate the audited version; the week before's partition gets its forward score."""
    outcome = register_and_gate(trained, mlflow_tracking, audited)
    name, week = mlflow_tracking.registered_model_name, trained.week
    context.log.info(f"ranker {trained.score:.4f} vs baselines {trained.baselines}; gate: {outcome.decision.reason}")
    previous_week = trained.registered_scores.previous_week_forward
    if previous_week is not None:
        context.log_event(AssetObservation(asset_key=context.asset_key, partition=week.shift(-1).key, metadata={
            "forward_score": previous_week[1], "forward_week": week.key, "model": f"{name} v{previous_week[0]}",
            "forward_scores": scores_table({"forward": trained.registered_scores.forward}),
        }))
    links = ui_links(mlflow_tracking.tracking_uri, trained.run_id, name, outcome.version, trained.experiment_id)
    return {"model": f"{name} v{outcome.version}", "champion_gate": MetadataValue.json(outcome.decision.as_dict()),
            "model_uri": f"models:/{name}/{outcome.version}", **{key: MetadataValue.url(url) for key, url in links.items()}}


def ranker_metadata(trained: TrainedWeek, model_name: str) -> dict:
    evaluation, previous_week = trained.trained.evaluation, trained.registered_scores.previous_week_forward
    return {
        "week": trained.week.key,
        "rows_built_from_sources_of": trained.sources_week.key,
        "bundled_sources_of": trained.week.key,
        "score": trained.score,
        **{f"{name}_score": value for name, value in trained.baselines.items()},
        **({} if previous_week is None else {
            "previous_week_model_forward_score": previous_week[1],
            "previous_week_model": f"{model_name} v{previous_week[0]}"}),
        "scores": scores_table(trained.metrics),
        "candidate_ceiling": MetadataValue.json(evaluation.ceiling),
        "catalogue_coverage": trained.coverage,
        "mlflow_run_id": trained.run_id,
        "fit_seconds": round(trained.fit_seconds, 1),
        # The weeks whose labelled sessions the ranker trained on; only this week's are scored.
        "label_weeks": MetadataValue.json({"used": trained.trained.label_weeks, "training_cuts": trained.trained.cut_weeks,
                                           "skipped": trained.trained.skipped}),
        # The model in MLflow holds the rankers; the tables it reads stay in the lake.
        "bundle_bytes": trained.bundle_size["bundle"],
        "bundle_table_bytes": trained.bundle_size["tables"],
        "seconds_by_phase": MetadataValue.json(evaluation.timings),
        # 0 for a type means held-out sessions preferred the hand rule's order to any boosting.
        "boosting_rounds": MetadataValue.json(trained.rounds),
    }


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
