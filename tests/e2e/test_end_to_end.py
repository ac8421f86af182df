"""End to end: a backfill of the weekly job launched over GraphQL on real servers, and what it left behind.

The stack and the backfill come from the `e2e_stack` fixture (tests/e2e/conftest.py). The
assertions iterate over whatever the code location defines (the job's asset graph and its
checks, the schedules), and also name the parts that exist today, so a stage that silently
drops out of the job fails here. The registry, publishing and schedule assertions switch on
as soon as the code location defines the corresponding assets or schedule.

Run alone: `.venv/bin/python -m pytest -m e2e tests/e2e` (the timings print at the end).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.conftest import (
    E2E_TIMEZONE,
    EXPERIMENT_NAME,
    JOB_NAME,
    MODEL_NAME,
    E2EStack,
    tag,
)

pytestmark = pytest.mark.e2e

# What the job holds today (README, "What runs today"); the graph may grow, never shrink.
EXPECTED_ASSETS = {"events", "sessions", "eval_split", "top_sellers", "covisitation", "als", "candidates"}
EXPECTED_CHECKS = {
    "events": {"events_contract", "events_quarantine_rate", "events_drift"},
    "sessions": {"sessions_contract", "sessions_drift"},
    "eval_split": {"eval_split_contract"},
    "top_sellers": {"top_sellers_contract", "top_sellers_every_type"},
    "covisitation": {"covisitation_contract", "covisitation_coverage"},
    "als": {"als_factors", "similar_items_contract", "als_coverage"},
    "candidates": {"candidates_contract"},
}
# Candidate-stage metrics every weekly MLflow run carries (assets/candidates.py).
CANDIDATE_METRICS = (
    "recall.combined.ceiling_score",
    "recall.combined.ceiling_recall_clicks",
    "recall.combined.ceiling_recall_carts",
    "recall.combined.ceiling_recall_orders",
    "baseline_covisitation.score",
    "baseline_popularity.score",
)
RANKER_ASSET = "ranker"
RANKER_METRICS = ("ranker.score", "baseline_covisitation.score", "baseline_popularity.score")
PUBLISHING_ASSETS = ("recommendation_tables", "published_recommendations", "published_tables")
PUBLISHED_TABLES = {
    "top_sellers": {"type", "rank", "aid", "score"},
    "frequently_bought_together": {"aid", "recs", "scores"},
    "similar_items": {"aid", "recs", "scores"},
    "session_recommendations": {"session", "type", "recs", "scores"},
}
CHAMPION_ALIAS = "champion"
MAX_RECS = 20

MATERIALIZATIONS_QUERY = """
query Materializations($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions) { partition runId } }
  }
}
"""

CHECK_EXECUTIONS_QUERY = """
query CheckExecutions($assetKey: AssetKeyInput!, $checkName: String!, $partition: String) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, partition: $partition, limit: 10) {
    runId
    status
    partition
    evaluation { success severity description partition }
  }
}
"""

SCHEDULES_QUERY = """
query Schedules($repositorySelector: RepositorySelector!, $cursor: Float) {
  repositoryOrError(repositorySelector: $repositorySelector) {
    __typename
    ... on Repository {
      schedules {
        name
        pipelineName
        cronSchedule
        executionTimezone
        scheduleState { status }
        futureTicks(cursor: $cursor, limit: 1) { results { timestamp } }
      }
    }
  }
}
"""

# The UI's "Test schedule" dialog (ScheduleDryRunMutation): evaluate the schedule for one tick.
SCHEDULE_DRY_RUN_MUTATION = """
mutation ScheduleDryRun($selectorData: ScheduleSelector!, $timestamp: Float) {
  scheduleDryRun(selectorData: $selectorData, timestamp: $timestamp) {
    __typename
    ... on DryRunInstigationTick {
      timestamp
      evaluationResult {
        runRequests { runKey jobName tags { key value } }
        skipReason
        error { message stack }
      }
    }
    ... on PythonError { message stack }
    ... on ScheduleNotFoundError { message }
  }
}
"""


# --- helpers the assertions share --------------------------------------------------------


def asset_name(node: dict) -> str:
    return "/".join(node["assetKey"]["path"])


def checks_of(node: dict) -> list[dict]:
    checks = node["assetChecksOrError"]
    return checks.get("checks", []) if checks["__typename"] == "AssetChecks" else []


def backfill_run_ids(stack: E2EStack) -> set[str]:
    return {run["runId"] for run in stack.runs}


def weekly_mlflow_runs(stack: E2EStack) -> dict[str, list]:
    """MLflow runs of the experiment, by their `dagster.partition` tag."""
    client = stack.mlflow_client()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT_NAME!r} on {stack.mlflow_url}"
    by_week: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        by_week.setdefault(run.data.tags.get("dagster.partition"), []).append(run)
    return by_week


def assert_metric(run, name: str, low: float = 0.0, high: float = 1.0) -> None:
    assert name in run.data.metrics, f"MLflow run {run.info.run_name}: no metric {name!r} (has {sorted(run.data.metrics)[:50]})"
    value = run.data.metrics[name]
    assert math.isfinite(value) and low <= value <= high, f"MLflow run {run.info.run_name}: {name} = {value}"


def assert_champion_alias(stack: E2EStack, model_name: str = MODEL_NAME) -> None:
    """The registry after the backfill: one version per week from that week's MLflow run, each judged by
    the champion gate, and `champion` on a promoted version whose model loads and predicts."""
    client = stack.mlflow_client()
    runs = {week: found[0] for week, found in weekly_mlflow_runs(stack).items() if found}
    run_ids = {run.info.run_id: week for week, run in runs.items()}
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert versions, f"no version of the registered model {model_name!r}"
    weeks_with_versions = {run_ids.get(version.run_id) for version in versions}
    trained = set(stack.partitions[1:])  # the first partition is the warm-up week: it trains nothing
    assert weeks_with_versions == trained, (
        f"registered versions come from the runs of weeks {weeks_with_versions}, expected every trained week {trained}"
    )
    for week, run in runs.items():
        if week not in trained:
            continue
        assert run.data.tags.get("model.gate") in {"promoted", "rejected"}, (
            f"week {week}: the MLflow run has no champion-gate verdict: {run.data.tags}"
        )
    champion = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    champion_week = run_ids.get(champion.run_id)
    assert champion_week, f"champion v{champion.version} comes from run {champion.run_id}, not from a weekly run"
    assert runs[champion_week].data.tags.get("model.gate") == "promoted", (
        f"champion v{champion.version} (week {champion_week}) was not promoted by the gate"
    )
    promoted = [week for week, run in runs.items() if run.data.tags.get("model.gate") == "promoted"]
    assert champion_week == max(promoted), f"champion is week {champion_week}, the last promoted week is {max(promoted)}"
    # That the champion loads and predicts through the server: test_weekly_outputs.py (predict and serve).


def _s3_json(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _manifest_files(node, found: list[dict]) -> list[dict]:
    """Every {"key": ..., "sha256": ...} entry anywhere in a manifest."""
    if isinstance(node, dict):
        if "key" in node and "sha256" in node:
            found.append(node)
        for value in node.values():
            _manifest_files(value, found)
    elif isinstance(node, list):
        for value in node:
            _manifest_files(value, found)
    return found


def assert_published_latest(stack: E2EStack) -> None:
    """The published tables in S3 as a downstream reader sees them: `_latest.json` -> the last week's
    `_manifest.json` -> its files, every one present with the listed sha256 and the contract's columns."""
    import pyarrow.parquet as pq

    s3, bucket, root = stack.s3_client(), stack.bucket, stack.publish_prefix.strip("/")
    latest = _s3_json(s3, bucket, f"{root}/_latest.json")
    last_week = stack.partitions[-1]
    assert latest.get("week") == last_week, f"_latest.json points at {latest}, expected week {last_week}"
    manifest_ref = latest["manifest"]
    manifest_key = (manifest_ref.split(f"s3://{bucket}/", 1)[1] if manifest_ref.startswith("s3://")
                    else f"{root}/{manifest_ref.lstrip('/')}")
    assert f"week={last_week}/" in manifest_key, manifest_key
    weekly_run_ids = {found[0].info.run_id for found in weekly_mlflow_runs(stack).values() if found}
    client = stack.mlflow_client()

    for week in stack.partitions:
        key = manifest_key if week == last_week else f"{root}/week={week}/_manifest.json"
        manifest = _s3_json(s3, bucket, key)
        assert manifest.get("week", week) == week, (key, manifest.get("week"))
        model = manifest.get("model") or {}
        if model.get("name") and model.get("version"):
            # The tables of week W come from the champion when W was published: a registered version
            # logged by one of the weekly runs; the last week's is the champion now.
            version = client.get_model_version(model["name"], str(model["version"]))
            assert version.run_id in weekly_run_ids, (key, model, version.run_id)
            assert manifest.get("mlflow_run_id", version.run_id) == version.run_id, (key, manifest.get("mlflow_run_id"))
            if week == last_week:
                champion = client.get_model_version_by_alias(model["name"], CHAMPION_ALIAS)
                assert str(champion.version) == str(model["version"]), (
                    f"_latest.json's tables come from v{model['version']}, the champion is v{champion.version}"
                )
        files = _manifest_files(manifest, [])
        assert files, f"{key} lists no files with a sha256: {json.dumps(manifest)[:2000]}"
        tables_seen: dict[str, int] = {}
        for entry in files:
            object_key = f"{root}/{entry['key'].lstrip('/')}" if not entry["key"].startswith(root + "/") else entry["key"]
            body = s3.get_object(Bucket=bucket, Key=object_key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry["sha256"], f"{object_key}: sha256 differs from the manifest"
            table_name = object_key.split(f"week={week}/", 1)[1].split("/", 1)[0]
            frame = pq.read_table(io.BytesIO(body)).to_pandas()
            tables_seen[table_name] = tables_seen.get(table_name, 0) + len(frame)
            if table_name in PUBLISHED_TABLES:
                assert PUBLISHED_TABLES[table_name] <= set(frame.columns), (object_key, list(frame.columns))
            if "recs" in frame.columns:
                for recs in frame["recs"]:
                    assert 0 < len(recs) <= MAX_RECS and len(set(recs)) == len(recs), (object_key, list(recs))
        assert set(PUBLISHED_TABLES) <= set(tables_seen), f"week {week}: published tables {tables_seen}"
        assert all(rows > 0 for rows in tables_seen.values()), f"week {week}: empty published table {tables_seen}"
        if "row_counts" in manifest:
            assert {t: manifest["row_counts"][t] for t in tables_seen} == tables_seen, (manifest["row_counts"], tables_seen)


def week_that_just_ended(timestamp: float, timezone: str = E2E_TIMEZONE) -> str:
    """The Monday starting the last complete week at `timestamp` (weeks start Monday 00:00 in `timezone`)."""
    moment = datetime.fromtimestamp(timestamp, ZoneInfo(timezone))
    this_monday = (moment - timedelta(days=moment.weekday())).date()
    return (this_monday - timedelta(days=7)).isoformat()


# --- the tests ---------------------------------------------------------------------------


def test_backfill_launched_over_graphql_ran_every_week_successfully(e2e_stack: E2EStack):
    stack = e2e_stack
    assert sorted(stack.backfill["partitionNames"]) == stack.partitions
    by_week = {}
    for run in stack.runs:
        by_week.setdefault(tag(run, "dagster/partition"), []).append(run)
    failures = []
    for week in stack.partitions:
        runs = by_week.get(week, [])
        if len(runs) != 1:
            failures.append(f"week {week}: {len(runs)} runs")
            continue
        run = runs[0]
        assert tag(run, "dagster/backfill") == stack.backfill_id
        assert tag(run, "dagster/from_ui") == "true"
        if run["status"] != "SUCCESS":
            failures.append(f"week {week}: run {run['runId']} {run['status']}\n{stack.run_errors(run['runId'])}")
    assert not failures, "\n\n".join(failures)
    assert stack.backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, (
        f"backfill {stack.backfill_id}: {stack.backfill['status']} {stack.backfill.get('error')}"
    )


def test_job_holds_every_stage_and_every_asset_has_blocking_checks(e2e_stack: E2EStack):
    nodes = {asset_name(node): node for node in e2e_stack.job_assets}
    assert EXPECTED_ASSETS <= set(nodes), f"the job {JOB_NAME} lost assets: {EXPECTED_ASSETS - set(nodes)}"
    for name, node in nodes.items():
        checks = {check["name"]: check for check in checks_of(node)}
        assert checks, f"asset {name} has no asset check (design: every asset has at least one blocking check)"
        assert all(check["blocking"] for check in checks.values()), f"{name}: non-blocking checks {checks}"
        assert EXPECTED_CHECKS.get(name, set()) <= set(checks), f"{name}: checks {sorted(checks)} lack {EXPECTED_CHECKS[name]}"
        assert node["isPartitioned"], f"{name} is not partitioned by week"


def test_every_asset_of_the_job_was_materialized_for_every_week(e2e_stack: E2EStack):
    stack = e2e_stack
    run_ids = backfill_run_ids(stack)
    missing = []
    for node in stack.job_assets:
        data = stack.graphql(MATERIALIZATIONS_QUERY, {"assetKey": {"path": node["assetKey"]["path"]},
                                                      "partitions": stack.partitions})["assetOrError"]
        assert data["__typename"] == "Asset", (asset_name(node), data)
        events = data["assetMaterializations"]
        by_week = {event["partition"]: event for event in events}
        for week in stack.partitions:
            if week not in by_week:
                missing.append(f"{asset_name(node)}[{week}]")
            else:
                assert by_week[week]["runId"] in run_ids, (asset_name(node), week, by_week[week]["runId"])
    assert not missing, f"not materialized by the backfill: {missing}"


def test_every_asset_check_passed_for_every_week(e2e_stack: E2EStack):
    stack = e2e_stack
    run_ids = backfill_run_ids(stack)
    problems = []
    evaluated = 0
    for node in stack.job_assets:
        for check in checks_of(node):
            for week in stack.partitions:
                executions = stack.graphql(CHECK_EXECUTIONS_QUERY, {
                    "assetKey": {"path": node["assetKey"]["path"]}, "checkName": check["name"], "partition": week,
                })["assetCheckExecutions"]
                executions = [e for e in executions if e["runId"] in run_ids]
                label = f"{asset_name(node)}.{check['name']}[{week}]"
                if len(executions) != 1:
                    problems.append(f"{label}: {len(executions)} executions in the backfill's runs")
                    continue
                execution = executions[0]
                evaluation = execution["evaluation"] or {}
                if execution["status"] != "SUCCEEDED" or not evaluation.get("success"):
                    problems.append(f"{label}: {execution['status']} {evaluation.get('description') or ''}")
                evaluated += 1
    assert not problems, "asset checks that did not pass:\n" + "\n".join(problems)
    assert evaluated >= sum(len(c) for c in EXPECTED_CHECKS.values()) * len(stack.partitions)


def test_mlflow_holds_one_run_per_week_with_candidate_and_baseline_metrics(e2e_stack: E2EStack):
    stack = e2e_stack
    by_week = weekly_mlflow_runs(stack)
    assert set(stack.partitions) <= set(by_week), f"MLflow runs per week: { {w: len(r) for w, r in by_week.items()} }"
    for week in stack.partitions:
        runs = by_week[week]
        assert len(runs) == 1, f"week {week}: {len(runs)} MLflow runs"
        run = runs[0]
        dagster_run = stack.run_for(week)
        assert run.data.tags.get("dagster.run_id") == dagster_run["runId"], (week, run.data.tags)
        assert run.data.tags.get("dagster.job") == JOB_NAME
        assert run.info.status == "FINISHED", (week, run.info.status)
        assert any(name.startswith("als.") for name in run.data.params), f"week {week}: no ALS params"
        if week == stack.partitions[0]:  # the warm-up week fits sources only
            assert not any(name.startswith(("recall.", "ranker.")) for name in run.data.metrics), (week, run.data.metrics)
            continue
        for metric in CANDIDATE_METRICS:
            assert_metric(run, metric)
        if stack.has_asset(RANKER_ASSET):
            for metric in RANKER_METRICS:
                assert_metric(run, metric)
    if stack.run_config.get("ops", {}).get("als"):
        # The backfill's run config reached the runs (the launchpad path).
        rank = stack.run_config["ops"]["als"]["config"].get("rank")
        if rank is not None:
            assert {by_week[w][0].data.params.get("als.rank") for w in stack.partitions} == {str(rank)}


def test_model_registry_champion_alias(e2e_stack: E2EStack):
    if not e2e_stack.has_asset(RANKER_ASSET):
        pytest.skip(f"the code location has no `{RANKER_ASSET}` asset yet: nothing registers models")
    assert_champion_alias(e2e_stack)


def test_published_tables_behind_latest_json(e2e_stack: E2EStack):
    if not e2e_stack.has_asset(*PUBLISHING_ASSETS):
        pytest.skip(f"the code location has none of {PUBLISHING_ASSETS} yet: nothing publishes to S3")
    assert_published_latest(e2e_stack)


def test_weekly_schedule_targets_the_week_that_just_ended(e2e_stack: E2EStack):
    stack = e2e_stack
    # Ticks right after the last generated week ends, so that week is the one that just ended.
    last_week_end = datetime.fromisoformat(stack.partitions[-1]).replace(tzinfo=ZoneInfo(E2E_TIMEZONE)) + timedelta(days=7)
    data = stack.graphql(SCHEDULES_QUERY, {"repositorySelector": stack.repository_selector,
                                           "cursor": last_week_end.timestamp() - 1})["repositoryOrError"]
    schedules = [s for s in data["schedules"] if s["pipelineName"] == JOB_NAME]
    if not schedules:
        pytest.skip(f"the code location defines no schedule for {JOB_NAME} yet (jobs/schedules.py)")
    for schedule in schedules:
        ticks = schedule["futureTicks"]["results"]
        assert ticks, f"schedule {schedule['name']} ({schedule['cronSchedule']}) has no future tick"
        tick = ticks[0]["timestamp"]
        assert tick - last_week_end.timestamp() < 7 * 24 * 3600, (
            f"schedule {schedule['name']} ({schedule['cronSchedule']}) is not weekly: next tick {tick}"
        )
        result = stack.graphql(SCHEDULE_DRY_RUN_MUTATION, {
            "selectorData": {**stack.repository_selector, "scheduleName": schedule["name"]}, "timestamp": tick,
        })["scheduleDryRun"]
        assert result["__typename"] == "DryRunInstigationTick", result
        evaluation = result["evaluationResult"]
        assert not evaluation.get("error"), evaluation["error"]
        requests = evaluation["runRequests"] or []
        assert len(requests) == 1, f"schedule {schedule['name']} at {tick}: {requests} (skip: {evaluation.get('skipReason')})"
        partition = next((t["value"] for t in requests[0]["tags"] if t["key"] == "dagster/partition"), None)
        expected = week_that_just_ended(tick, schedule["executionTimezone"] or E2E_TIMEZONE)
        assert partition == expected, (
            f"schedule {schedule['name']} ({schedule['cronSchedule']} {schedule['executionTimezone']}) ticking at "
            f"{datetime.fromtimestamp(tick, ZoneInfo(E2E_TIMEZONE))} requests week {partition}, expected {expected}"
        )
        assert requests[0]["jobName"] in (None, JOB_NAME)

