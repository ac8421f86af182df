"""The model registry gate: which registered version is the `champion`.

Every week's model is registered. The `champion` alias moves to the new version only if it beats
both baselines of its own evaluation and its total score is at least the current champion's minus
a tolerance, the champion being scored on the same sessions (this week's evaluation sessions)
when the caller can: scores of different weeks' sessions differ with the data, not only the model.
Otherwise the version is tagged `gate=rejected` with the reason and the champion stays.
MLflow has no compare-and-set for aliases: the gate re-reads the alias just before moving it and
leaves it alone when another run moved it in between (the reason says so). A champion the
current code cannot load or score is no comparable champion: the gate says why and decides on
the baselines alone.
Rolling back is moving the alias by hand: `MlflowClient().set_registered_model_alias(name,
"champion", version)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CHAMPION_ALIAS = "champion"
SCORE_TAG = "score"
GATE_TAG = "gate"
GATE_REASON_TAG = "gate_reason"
WEEK_TAG = "week"
RUN_ID_TAG = "mlflow_run_id"
FORWARD_SCORE_TAG = "forward_score"
FORWARD_WEEK_TAG = "forward_week"
FORWARD_METRIC_PREFIX = "forward"
PROMOTED = "promoted"
REJECTED = "rejected"


@dataclass(frozen=True)
class GateDecision:
    version: str
    promoted: bool
    reason: str
    score: float
    champion_before: str | None
    champion_score: float | None
    champion_after: str | None
    previous_week_version: str | None = None
    previous_week_forward_score: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def current_champion(client, name: str):
    """(version, score) of the champion, or (None, None) when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None, None
    score = version.tags.get(SCORE_TAG)
    return str(version.version), (float(score) if score is not None else None)


def version_of_week(client, name: str, week_key: str):
    """The latest version of `name` registered for week `week_key` (its `week` tag), or None."""
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get(WEEK_TAG) == week_key]
    return max(versions, key=lambda v: int(v.version), default=None)


def record_forward_score(client, name: str, version, scores: dict[str, float], week_key: str, artifacts=()) -> None:
    """What `version` scored on the sessions of the week after its own (`week_key`): the backtest of
    what it served. Tagged on the version and logged as `forward.*` metrics (and `artifacts`, under
    `forward/`) into the MLflow run that trained it."""
    import time

    from mlflow.entities import Metric

    client.set_model_version_tag(name, version.version, FORWARD_SCORE_TAG, f"{scores['score']:.6f}")
    client.set_model_version_tag(name, version.version, FORWARD_WEEK_TAG, week_key)
    run_id = version.tags.get(RUN_ID_TAG) or version.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"{FORWARD_METRIC_PREFIX}.{key}", float(value), now, 0)
                                      for key, value in scores.items()])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=FORWARD_METRIC_PREFIX)


def decide(score: float, baselines: dict[str, float], champion_score: float | None, tolerance: float) -> tuple[bool, str]:
    """(promote?, reason) for a candidate version's score."""
    for name, baseline in sorted(baselines.items()):
        if not score > baseline:
            return False, f"score {score:.4f} does not beat the {name} baseline {baseline:.4f}"
    if champion_score is None:
        return True, f"first version to pass the gate (score {score:.4f})"
    if score >= champion_score - tolerance:
        return True, f"score {score:.4f} >= champion {champion_score:.4f} - tolerance {tolerance}"
    return False, f"score {score:.4f} < champion {champion_score:.4f} - tolerance {tolerance}"


def version_description(week: str | None, score: float, baselines: dict[str, float], promoted: bool, reason: str) -> str:
    """What the MLflow UI shows on a version's page: its week, its scores and the gate's verdict."""
    compared = ", ".join(f"{name} {value:.4f}" for name, value in baselines.items())
    return (f"Trained for week {week or 'unknown'}: score {score:.4f} on the week's evaluation sessions "
            f"({compared}).\n\nGate: {'promoted to champion' if promoted else 'not promoted'}. {reason}")


def gate_version(client, name: str, version: str, score: float, baselines: dict[str, float], tolerance: float,
                 extra_tags: dict[str, str] | None = None, champion_score_now: float | None = None,
                 previous_week_forward: tuple[str, float] | None = None,
                 champion_unusable: str | None = None, champion_scored: str | None = None) -> GateDecision:
    """Tag `version` with its score and the gate's verdict; move `champion` to it if it passes.

    `champion_score_now`: the champion scored on the same sessions as `score` (this week's
    evaluation sessions). Without it the champion's own recorded score is used, which comes from
    another week's sessions and so moves with the data, not only with the model.
    `previous_week_forward`: (version, score) of the week before's model on the same sessions, its
    forward score, quoted in the reason.
    `champion_unusable`: why the champion could not be scored (it does not load with this code):
    then it is not compared against. `champion_scored`: the version `champion_score_now` and
    `champion_unusable` are about; when the alias points elsewhere by now, they are ignored.
    """
    champion_before, champion_score = current_champion(client, name)
    if champion_scored is not None and champion_scored != champion_before:
        champion_score_now, champion_unusable = None, None
    if champion_before is not None and champion_unusable is not None:
        champion_score = None
    elif champion_before is not None and champion_score_now is not None:
        champion_score = champion_score_now
    promoted, reason = decide(score, baselines, champion_score, tolerance)
    if champion_before is not None and champion_unusable is not None:
        reason += f" (champion v{champion_before} not comparable: {champion_unusable})"
    elif champion_before is not None and champion_score_now is not None:
        reason += f" (champion v{champion_before} scored on this week's evaluation sessions)"
    if previous_week_forward is not None:
        reason += (f"; the week before's model v{previous_week_forward[0]} scored {previous_week_forward[1]:.4f} "
                   "forward on these sessions")
    champion_after = champion_before
    if promoted:
        champion_now, _ = current_champion(client, name)
        if champion_now != champion_before:
            promoted, champion_after = False, champion_now
            reason += (f"; not promoted: the champion moved from v{champion_before} to v{champion_now} "
                       "while this gate ran")
    tags = {SCORE_TAG: f"{score:.6f}", GATE_TAG: PROMOTED if promoted else REJECTED, GATE_REASON_TAG: reason,
            **{f"baseline.{k}": f"{v:.6f}" for k, v in baselines.items()}, **(extra_tags or {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=version_description(
        (extra_tags or {}).get(WEEK_TAG), score, baselines, promoted, reason))
    if promoted:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        champion_after = str(version)
    return GateDecision(
        version=str(version),
        promoted=promoted,
        reason=reason,
        score=score,
        champion_before=champion_before,
        champion_score=champion_score,
        champion_after=champion_after,
        previous_week_version=previous_week_forward[0] if previous_week_forward else None,
        previous_week_forward_score=previous_week_forward[1] if previous_week_forward else None,
    )
