"""Scoring the registered champion on a week's rows (`pipelines.stages.registered_scores`):
only a version this code cannot serve (`IncompatibleModelError`: other feature columns) is "not
comparable"; any other error while scoring it fails the step, so a bug never lets a new version be
promoted past a champion that was never compared. The registry holds synthetic bundles
(tests/bundles.py), logged as the `ranker` asset logs them."""

from __future__ import annotations

import json
import logging

import pytest

import pipelines.stages.registered_scores as registered_scores
from pipelines.stages.registered_scores import score_registered_versions
from pipelines.model import INFO_FILE
from pipelines.weeks import Week
from resources import MlflowResource
from tests.bundles import register_bundle, write_bundle

NAME = "champion-scoring"
WEEK = Week.parse("2022-08-22", "Europe/Berlin")


class Context:
    log = logging.getLogger("test")


@pytest.fixture
def registry(tmp_path):
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = register_bundle(tracking_uri, NAME, write_bundle(tmp_path / "bundle", tmp_path / "tables"),
                              tmp_path / "artifacts")
    client = MlflowClient(tracking_uri=tracking_uri)
    client.set_registered_model_alias(NAME, "champion", version)
    return {"root": tmp_path, "uri": tracking_uri, "client": client, "version": version,
            "resource": MlflowResource(tracking_uri=tracking_uri, experiment_name=NAME, registered_model_name=NAME)}


def test_a_bug_while_scoring_the_champion_fails_the_step(registry, monkeypatch):
    def broken(*_args, **_kwargs):
        raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'float'")

    monkeypatch.setattr(registered_scores, "registered_scores_on", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        score_registered_versions(registry["resource"], WEEK, None, None, registry["root"] / "scratch", Context.log)


def test_a_champion_with_other_feature_columns_is_not_comparable(registry, monkeypatch):
    """The one case reported instead of raised: the gate then compares with the baselines only."""
    root = registry["root"]
    bundle = write_bundle(root / "old-bundle", root / "old-tables", seed=3)
    info = json.loads((bundle / INFO_FILE).read_text())
    info["feature_columns"] = info["feature_columns"][:-1]  # trained before the last feature existed
    (bundle / INFO_FILE).write_text(json.dumps(info))
    old = register_bundle(registry["uri"], NAME, bundle, root / "artifacts")
    registry["client"].set_registered_model_alias(NAME, "champion", old)
    monkeypatch.setattr(registered_scores, "registered_scores_on",
                        lambda *a, **k: pytest.fail("an unusable champion was scored"))

    scores = score_registered_versions(registry["resource"], WEEK, None, None, root / "scratch", Context.log)
    previous, champion_now, unusable, champion = (scores.previous, scores.champion_now, scores.champion_unusable,
                                                  scores.champion_version)
    assert previous is None and champion_now is None and champion == old
    assert unusable.startswith("IncompatibleModelError: model bundle") and "other features" in unusable
