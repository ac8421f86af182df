"""Registered versions scored on a week's labelled rows: the forward score of the week before's
version and the champion's score on the week, both computed before the new version is audited and
acted on (registered, gated, recorded) only after its checks passed.

Both rank the week's rows (`features` of W, built from W-1's sources) with their boosters against
the same labels as the new version's out-of-fold predictions: no second candidate and feature build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines.model import IncompatibleModelError
from pipelines.registry import current_champion, record_forward_score, version_of_week

# What a registered version that this code cannot serve raises: other feature columns. Anything else
# (a bug while scoring it, a lake snapshot that is gone, a registry or storage outage) fails the
# step: it must not pass as "not comparable" and let the new version be promoted past the champion.
INCOMPATIBLE_MODEL_ERRORS = (IncompatibleModelError,)
FORWARD_PREDICTIONS_CSV = "forward_predictions.csv"


@dataclass
class RegisteredScores:
    """What the registry's versions score on this week's rows."""

    previous: object | None = None  # the week before's version (an MLflow ModelVersion), if it could be scored
    forward: dict[str, float] | None = None  # its scores (spark_score) on this week's rows
    forward_lists: Path | None = None  # its top-20 lists, as logged into its run
    champion_now: float | None = None  # the champion's score on this week's rows
    champion_unusable: str | None = None  # why the champion could not be scored
    champion_version: str | None = None  # the champion these are about

    @property
    def previous_week_forward(self) -> tuple[str, float] | None:
        return None if self.previous is None else (str(self.previous.version), self.forward["score"])

    def record_forward(self, client, name: str, week_key: str) -> None:
        """Tag the week before's version with its forward score and log it, with its lists, into its run."""
        if self.previous is not None:
            record_forward_score(client, name, self.previous, self.forward, week_key,
                                 artifacts=[self.forward_lists] if self.forward_lists else [])


def registered_scores_on(registered, week_features, labels, predictions_csv: Path | None = None) -> dict[str, float]:
    """A registered version's OTTO scores (`spark_score`) on this week's labelled rows (`week_features`,
    the lake's features of W): its boosters rank the same rows, against the same labels, as the new
    version's out-of-fold predictions; its lists also go to `predictions_csv`."""
    from pyspark import StorageLevel

    from pipelines.metrics import spark_score, spark_write_predictions_csv
    from pipelines.ranker import ranked_top_k, score_lake_rows

    bundle = registered.bundle
    scored = score_lake_rows(week_features, bundle.ranker_strings, bundle.ranker_rounds)
    predictions = ranked_top_k(scored).select("session", "type", "aid", "rank")
    if predictions_csv is None:
        return spark_score(predictions, labels)
    # Two actions over the lists: they are computed once.
    predictions = predictions.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        spark_write_predictions_csv(predictions, predictions_csv)
        return spark_score(predictions, labels)
    finally:
        predictions.unpersist()


def score_registered_versions(tracking, week, week_features, labels, scratch: Path,
                              log: logging.Logger | None = None) -> RegisteredScores:
    """The week before's version (its forward score, lists under `scratch`) and the champion (often
    the same version, scored once) on this week's rows. `tracking` gives `client`,
    `registered_model_name`, `load_version` and `load_champion` (the `mlflow_tracking` resource). A
    version the current code cannot serve (other feature columns) is reported, not raised."""
    log = log or logging.getLogger(__name__)
    client, name = tracking.client, tracking.registered_model_name
    scores = RegisteredScores()
    previous = version_of_week(client, name, week.shift(-1).key)
    if previous is not None:
        try:
            Path(scratch).mkdir(parents=True, exist_ok=True)
            lists = Path(scratch) / FORWARD_PREDICTIONS_CSV
            scores.forward = registered_scores_on(tracking.load_version(previous.version), week_features, labels, lists)
            scores.previous, scores.forward_lists = previous, lists
            log.info(f"v{previous.version} (week {week.shift(-1).key}) scores {scores.forward['score']:.4f} forward "
                     "on this week's labelled rows")
        except INCOMPATIBLE_MODEL_ERRORS as error:  # an old version must not fail this week's ranker
            log.warning(f"v{previous.version} (week {week.shift(-1).key}) could not be scored forward: "
                        f"{type(error).__name__}: {error}")
    champion_version, _ = current_champion(client, name)
    scores.champion_version = champion_version
    if champion_version is not None and scores.previous is not None and champion_version == str(scores.previous.version):
        scores.champion_now = scores.forward["score"]
    elif champion_version is not None:
        try:
            scores.champion_now = registered_scores_on(tracking.load_champion(), week_features, labels)["score"]
            log.info(f"champion v{champion_version} scores {scores.champion_now:.4f} on this week's labelled rows")
        except INCOMPATIBLE_MODEL_ERRORS as error:  # reported in the gate's reason instead
            scores.champion_unusable = f"{type(error).__name__}: {error}"[:500]
            log.warning(f"champion v{champion_version} cannot be scored with this code, so it is not compared "
                        f"against: {scores.champion_unusable}")
    return scores
