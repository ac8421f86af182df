"""Write-audit-publish with an action: what an asset does once its outputs pass their checks (the
ranker registers, records the forward score and moves `champion`) never happens for a week whose
audit failed, and what it stages joins the week's live version only with the rest."""

from __future__ import annotations

import logging

import pytest
from dagster import AssetCheckResult, AssetCheckSeverity

from assets.quality_checks import AuditedChecks
from pipelines.lake import Lake
from pipelines.weeks import Week

WEEK = Week.parse("2022-08-08", "Europe/Berlin")


class Context:
    log = logging.getLogger("test")


def checks_that(passes: bool) -> AuditedChecks:
    checks = AuditedChecks("thing", {"score_is_good": "the staged score is above 0.5"})

    @checks.implements("score_is_good")
    def score_is_good(context, lake) -> AssetCheckResult:
        score = lake.lake.read_stats("thing", WEEK)["score"]
        return AssetCheckResult(passed=(score > 0.5) == passes, severity=AssetCheckSeverity.ERROR)

    return checks


@pytest.mark.parametrize("passes", [True, False])
def test_the_action_runs_only_after_a_passed_audit_and_its_writes_go_live_with_the_week(tmp_path, passes):
    lake = Lake(str(tmp_path / "lake"))
    audited = lake.audited(WEEK)
    audited.write_document({"score": 0.7}, "thing", WEEK)
    acted = []

    def register_and_gate() -> dict:
        acted.append(lake.has_partition("thing", WEEK))  # still staged while the action runs
        audited.write_document({"score": 0.7, "gate": "promoted"}, "thing", WEEK)
        return {"model": "thing v1"}

    result = checks_that(passes).audit(Context(), audited, metadata={"week": WEEK.key}, on_pass=register_and_gate)
    assert result.metadata["published_to_lake"] is passes
    if passes:
        assert acted == [False] and result.metadata["model"] == "thing v1"
        assert lake.read_stats("thing", WEEK) == {"score": 0.7, "gate": "promoted"}
    else:
        assert acted == [] and "model" not in result.metadata
        assert not lake.has_partition("thing", WEEK)


def test_table_previews_keep_numbers_and_show_lists_as_text():
    import numpy as np
    import pandas as pd
    from dagster import TableMetadataValue

    from assets.quality_checks import table_preview

    frame = pd.DataFrame({"aid": np.array([7, 8], dtype=np.int64), "score": [0.5, np.nan],
                          "recs": [np.arange(12), [3]], "type": ["carts", "orders"]})
    preview = table_preview(frame, max_rows=1)
    assert isinstance(preview, TableMetadataValue)
    assert [(c.name, c.type) for c in preview.schema.columns] == [
        ("aid", "int"), ("score", "float"), ("recs", "string"), ("type", "string")]
    assert [r.data for r in preview.records] == [
        {"aid": 7, "score": 0.5, "recs": "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … (12)", "type": "carts"}]
    assert table_preview(frame.iloc[1:]).records[0].data["score"] is None
