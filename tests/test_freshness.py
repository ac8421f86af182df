"""One fit per week, on the whole week: what is published for week W knows W's last day.

The warm-up week (the first partition) runs through the weekly job as the schedule runs it: its
sources are fitted on every event of the week, it trains no ranker, and it publishes the sources'
tables with the hand rule's session lists. A pair of new items bought together only on the
week's last evening must be in the published frequently-bought-together table, counted in every
session that bought it, also those whose cut hides the buys (the old protocol fitted the sources
on the visible prefixes only).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dagster import DagsterInstance

from definitions import build_definitions
from pipelines.covisitation import COVISITATION_TABLE
from pipelines.evaluation import EVAL_SESSIONS_TABLE
from pipelines.generate import generate_raw
from pipelines.lake import Lake
from pipelines.weeks import Week
from tests.conftest import TIMEZONE, make_resources

WEEK = "2022-08-01"
NEW_ITEMS = (9_000_001, 9_000_002)
LATE_SESSIONS = range(900_000, 900_004)
LOOSE = {"drift_min_volume_ratio": 0.01, "drift_max_volume_ratio": 100.0, "drift_max_type_share_delta": 1.0,
         "min_source_coverage": 0.0}


def _add_late_buyers(raw_dir, week: Week) -> None:
    """Sessions that start on the week's last evening and cart and order both new items: the
    last event of the week is theirs."""
    last_evening = week.end_ms - 2 * 3_600_000
    with open(next((raw_dir / week.folder).glob("*.jsonl")), "a") as handle:
        for offset, session in enumerate(LATE_SESSIONS):
            ts = last_evening + offset * 60_000
            events = [{"aid": NEW_ITEMS[0], "ts": ts, "type": "clicks"},
                      {"aid": NEW_ITEMS[0], "ts": ts + 1_000, "type": "carts"},
                      {"aid": NEW_ITEMS[1], "ts": ts + 2_000, "type": "clicks"},
                      {"aid": NEW_ITEMS[1], "ts": ts + 3_000, "type": "carts"},
                      {"aid": NEW_ITEMS[1], "ts": ts + 4_000, "type": "orders"}]
            handle.write(json.dumps({"session": session, "events": events}) + "\n")


@pytest.mark.timeout(600)
def test_the_warm_up_week_publishes_sources_fitted_on_its_last_evening(spark, tmp_path):
    from pyspark.sql import functions as F

    """The only test of the warm-up week through the weekly job: sources fitted on the whole week,
    nothing trained, every check passed, and the tables published with the hand rule's lists."""
    raw_dir, lake_dir = tmp_path / "raw", tmp_path / "lake"
    generate_raw(raw_dir, n_sessions=300, n_weeks=1, start=WEEK, seed=5, timezone=TIMEZONE)
    week = Week.parse(WEEK, TIMEZONE)
    _add_late_buyers(raw_dir, week)

    resources = make_resources(str(raw_dir), str(lake_dir), **LOOSE)
    definitions = build_definitions(resources)
    result = definitions.resolve_job_def("weekly_recommender").execute_in_process(
        partition_key=WEEK, instance=DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"ops": {"als": {"config": {"rank": 8, "max_iter": 4, "similarity_blocks": 2}}}})
    assert result.success, [str(e.message) for e in result.all_events if e.is_failure]
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)
    metadata = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    for skipped in ("candidates", "features", "ranker"):
        assert metadata[skipped]["warm_up"].value is True, skipped
        assert "first partition" in metadata[skipped]["warm_up_reason"].value
    assert metadata["top_sellers"]["training_window"].value == [WEEK]

    # The late sessions are labelled sessions too: a fit on visible prefixes would see the pair in
    # fewer sessions than the fit on the whole week, which sees it in all of them.
    lake = Lake(str(lake_dir))
    prefixes = lake.read_partition(spark, EVAL_SESSIONS_TABLE, week).where(
        F.col("session").isin(*LATE_SESSIONS)).collect()
    bought_in_prefix = [{e.aid for e in row.prefix if e.type != "clicks"} for row in prefixes]
    assert len(prefixes) == len(LATE_SESSIONS) and any(set(NEW_ITEMS) - bought for bought in bought_in_prefix)
    pair = lake.read_partition(spark, COVISITATION_TABLE, week).where(
        (F.col("matrix") == "buy2buy") & (F.col("aid") == NEW_ITEMS[0]) & (F.col("neighbour") == NEW_ITEMS[1])).collect()
    assert [row.weight for row in pair] == [len(LATE_SESSIONS)]

    published = tmp_path / "published"
    latest = json.loads((published / "_latest.json").read_text())
    assert latest["week"] == WEEK
    manifest = json.loads((published / week.folder / "_manifest.json").read_text())
    assert manifest["model"]["name"] == "hand-rule"
    together = pd.read_parquet(published / week.folder / "frequently_bought_together")
    lists = {int(row.aid): [int(aid) for aid in row.recs] for row in together.itertuples()}
    assert NEW_ITEMS[1] in lists[NEW_ITEMS[0]] and NEW_ITEMS[0] in lists[NEW_ITEMS[1]]

    sessions = pd.read_parquet(published / week.folder / "session_recommendations")
    late = sessions[sessions["session"].isin(list(LATE_SESSIONS))]
    assert len(late) == 3 * len(LATE_SESSIONS)  # every active session has its three lists
    top_sellers = pd.read_parquet(published / week.folder / "top_sellers")
    assert NEW_ITEMS[1] in set(top_sellers.loc[top_sellers["type"] == "orders", "aid"])

    # A rerun with the same inputs and model (here the hand rule) publishes the same bytes.
    from dagster import AssetSelection, define_asset_job, in_process_executor

    from assets.partitions import weekly_partitions
    from pipelines.publish import read_manifest

    def contents(manifest) -> dict:
        return {table: sorted((f["sha256"], f["size"], f["rows"]) for f in entry["files"])
                for table, entry in manifest["tables"].items()}

    rerun_resources = make_resources(str(raw_dir), str(lake_dir), publish_uri=str(tmp_path / "republished"), **LOOSE)
    rerun_definitions = build_definitions(rerun_resources)
    rerun = define_asset_job(
        "rerun_publication", selection=AssetSelection.assets("recommendation_tables", "published_recommendations"),
        partitions_def=weekly_partitions, executor_def=in_process_executor,
    ).resolve(asset_graph=rerun_definitions.resolve_asset_graph())
    rerun_result = rerun.execute_in_process(partition_key=WEEK, instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert rerun_result.success, [str(e.message) for e in rerun_result.all_events if e.is_failure]
    republished = read_manifest(str(tmp_path / "republished"), WEEK)
    assert republished["model"] == manifest["model"]
    assert contents(republished) == contents(manifest)
