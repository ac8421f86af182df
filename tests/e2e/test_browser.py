"""The UIs an operator uses, in a real (headless) browser, on the stack of the e2e backfill.

Playwright's sync API drives Debian's Chromium (`executable_path`; no browser download). Each
page is checked for what an operator looks for, then saved to test-output/screenshots/; with
RECSYS_UPDATE_SCREENSHOTS=1 the PNGs are also copied to docs/screenshots/ for the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from urllib.parse import quote

import pytest

from tests.e2e.conftest import (
    DOCS_SCREENSHOT_DIR,
    EXPERIMENT_NAME,
    JOB_NAME,
    LOCATION_NAME,
    MODEL_NAME,
    SCREENSHOT_DIR,
    E2EStack,
)

pytestmark = pytest.mark.e2e

VIEWPORT = {"width": 1600, "height": 1000}
PAGE_TIMEOUT_MS = 90_000
# Stages every view of the asset graph must name (the graph may grow).
GRAPH_ASSETS = ("events", "sessions", "eval_split", "top_sellers", "covisitation", "als", "candidates")


def save_screenshot(page, name: str, full_page: bool = False) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    if os.environ.get("RECSYS_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SCREENSHOT_DIR / path.name)


LOCAL_HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture()
def page(browser, e2e_stack: E2EStack):
    # What clicking "Skip" on Dagster's first-visit community dialog does (stored in DAGSTER_HOME).
    e2e_stack.graphql("mutation SetNuxSeen { setNuxSeen }")
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    # The UIs only ever talk to the local servers here; anything else (newsletter iframes,
    # telemetry, web fonts) is refused instead of waiting on a network that is not there.
    context.route(re.compile(r"^https?://(?!(127\.0\.0\.1|localhost)[:/]).*"), lambda route: route.abort())
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()


def wait_for_texts(page, texts, what: str, timeout_ms: float = PAGE_TIMEOUT_MS) -> None:
    """Each text visible on the page (or inside a locator), exact match of an element's text, within one deadline."""
    deadline = time.monotonic() + timeout_ms / 1000
    missing = []
    for text in texts:
        remaining_ms = max(1000.0, (deadline - time.monotonic()) * 1000)
        try:
            page.get_by_text(text, exact=True).first.wait_for(state="visible", timeout=remaining_ms)
        except Exception:  # noqa: BLE001 - collect them all for one message
            missing.append(text)
    if missing:
        save_screenshot(getattr(page, "page", page), f"FAILED-{what}")
        pytest.fail(f"{what}: {missing} not shown at {getattr(page, 'page', page).url} (screenshot in {SCREENSHOT_DIR})")


def expanded_groups_query(stack: E2EStack) -> str:
    """`?expanded=` of the asset graph: every group open (ids with and without per-location grouping)."""
    groups = sorted({node["groupName"] for node in stack.job_assets} | {"landing"})
    ids = [f"global@global:{g}" for g in groups] + [f"{stack.repository_name}@{LOCATION_NAME}:{g}" for g in groups]
    return "expanded=" + quote(",".join(ids))


def open_asset_graph(page, url: str, names, what: str) -> None:
    """Load an asset graph with every group expanded; fall back to the UI's ⌥E ("Expand all groups")."""
    page.goto(url)
    try:
        wait_for_texts(page, names[:1], what, timeout_ms=30_000)
    except pytest.fail.Exception:
        page.keyboard.press("Alt+KeyE")
    wait_for_texts(page, names, what)
    page.wait_for_timeout(1500)  # let the graph finish its zoom-to-fit animation before the screenshot


def job_asset_names(stack: E2EStack) -> list[str]:
    return sorted(node["assetKey"]["path"][-1] for node in stack.job_assets)


def test_dagster_asset_lineage_shows_every_asset(e2e_stack: E2EStack, page):
    """The Dagster UI's asset lineage shows every asset, in a real browser. Its setup is the e2e stack
    and backfill (`e2e_stack`), shared by every e2e and cluster test."""
    # The global asset lineage (Assets → Lineage in the top bar).
    open_asset_graph(page, f"{e2e_stack.dagster_url}/asset-groups?{expanded_groups_query(e2e_stack)}", GRAPH_ASSETS,
                     "dagster-asset-lineage")
    save_screenshot(page, "dagster-asset-lineage")


def test_dagster_catalog_lists_every_asset_of_the_job(e2e_stack: E2EStack, page):
    # The catalog lists every asset of the job, including stages added after these tests were written.
    page.goto(f"{e2e_stack.dagster_url}/assets")
    wait_for_texts(page, job_asset_names(e2e_stack), "dagster-asset-catalog")
    save_screenshot(page, "dagster-asset-catalog")


def test_dagster_backfill_page_shows_the_weeks(e2e_stack: E2EStack, page):
    page.goto(f"{e2e_stack.dagster_url}/runs/b/{e2e_stack.backfill_id}")
    wait_for_texts(page, [f"{len(e2e_stack.partitions)} partitions", "Succeeded", JOB_NAME], "dagster-backfill")
    save_screenshot(page, "dagster-backfill")
    page.get_by_role("tab", name="Runs").click()
    wait_for_texts(page, [run["runId"][:8] for run in e2e_stack.runs], "dagster-backfill-runs")
    save_screenshot(page, "dagster-backfill-runs")


def test_dagster_materialize_dialog_selects_a_range_of_weeks(e2e_stack: E2EStack, page):
    """What an operator does to backfill: the job's "Materialize all…" dialog with a range of weeks typed in.

    The dialog is closed without launching; the e2e backfill itself was sent over GraphQL exactly as
    this dialog's "Launch backfill" button sends it.
    """
    page.goto(f"{e2e_stack.dagster_url}/locations/{LOCATION_NAME}/jobs/{JOB_NAME}")
    page.get_by_text(f"View {len(e2e_stack.job_assets)} assets").first.wait_for(state="visible")
    page.get_by_role("button", name="Materialize all").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Partition selection").first.wait_for(state="visible")
    try:  # the dialog starts on the last 90 days; the sample weeks are older
        dialog.get_by_text("Show all partitions").first.click(timeout=15_000)
    except Exception:  # noqa: BLE001 - every partition is already shown
        pass
    weeks = f"[{e2e_stack.partitions[0]}...{e2e_stack.partitions[-1]}]"
    selection = dialog.locator("input").first  # "ex: 2022-08-01, 2022-08-08, [2022-08-15...]"
    selection.fill(weeks)
    selection.press("Enter")
    wait_for_texts(dialog, [f"{len(e2e_stack.partitions)} partitions"], "dagster-launch-backfill")
    page.wait_for_timeout(500)
    save_screenshot(page, "dagster-launch-backfill")
    dialog.get_by_role("button", name="Cancel", exact=True).first.click()


def test_dagster_asset_checks_of_a_week(e2e_stack: E2EStack, page):
    page.goto(f"{e2e_stack.dagster_url}/assets/events?view=checks")
    wait_for_texts(page, ["events_contract", "events_quarantine_rate", "events_drift"], "dagster-asset-checks")
    save_screenshot(page, "dagster-asset-checks")


SCHEDULES_QUERY = """
query Schedules($repositorySelector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $repositorySelector) {
    ... on Repository { schedules { name pipelineName } }
  }
}
"""


def test_dagster_schedule_page_has_the_on_off_switch(e2e_stack: E2EStack, page):
    data = e2e_stack.graphql(SCHEDULES_QUERY, {"repositorySelector": e2e_stack.repository_selector})
    names = [s["name"] for s in data["repositoryOrError"].get("schedules", []) if s["pipelineName"] == JOB_NAME]
    if not names:
        pytest.skip(f"the code location defines no schedule for {JOB_NAME} yet")
    page.goto(f"{e2e_stack.dagster_url}/locations/{LOCATION_NAME}/schedules/{names[0]}")
    wait_for_texts(page, ["Running", "Execution timezone", JOB_NAME], "dagster-schedule")
    page.get_by_text(names[0]).first.wait_for(state="visible")  # in the breadcrumb
    page.get_by_role("checkbox").first.wait_for(state="attached")  # the running/stopped toggle
    page.wait_for_timeout(1000)
    save_screenshot(page, "dagster-schedule")


def mlflow_experiment_and_runs(stack: E2EStack) -> tuple[str, dict[str, str]]:
    client = stack.mlflow_client()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    names = {run.data.tags.get("dagster.partition"): run for run in runs}
    return experiment.experiment_id, {week: names[week].info.run_id for week in stack.partitions if week in names}


def close_mlflow_assistant(page) -> None:
    """MLflow 3 opens its chat side panel on first visit; close it so the screenshots show the runs."""
    try:
        page.get_by_role("button", name="Close").first.click(timeout=5000)
    except Exception:  # noqa: BLE001 - not shown on this version or already closed
        pass


def test_mlflow_experiment_lists_the_weekly_runs(e2e_stack: E2EStack, page):
    """The MLflow UI lists one run per week with its metrics, in a real browser."""
    experiment_id, run_ids = mlflow_experiment_and_runs(e2e_stack)
    assert set(run_ids) == set(e2e_stack.partitions)
    weeks = [f"week-{week}" for week in e2e_stack.partitions]
    # `workflowType=machine_learning` is the "Model training" switch of MLflow 3's sidebar.
    page.goto(f"{e2e_stack.mlflow_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    wait_for_texts(page, weeks, "mlflow-experiment-runs")
    close_mlflow_assistant(page)
    save_screenshot(page, "mlflow-experiment-runs")

    # Chart view filtered on the scores: every week side by side, per metric.
    page.goto(f"{e2e_stack.mlflow_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
              "&compareRunsMode=CHART")
    wait_for_texts(page, weeks, "mlflow-experiment-charts")
    close_mlflow_assistant(page)
    page.get_by_placeholder("Search metric charts").fill("score")
    wait_for_texts(page, ["baseline_covisitation.score", "baseline_popularity.score"], "mlflow-experiment-charts")
    page.wait_for_timeout(1500)
    save_screenshot(page, "mlflow-experiment-charts")


def pick_option(page, combobox_index: int, option: str, max_options: int = 1000) -> None:
    """Choose `option` in one of the compare page's (virtualised, read-only) selects with the keyboard."""
    page.get_by_role("combobox").nth(combobox_index).click()
    active = page.locator("[class*=select-item-option-active]")
    first = None
    for _ in range(max_options):
        page.keyboard.press("ArrowDown")
        title = active.first.get_attribute("title") if active.count() else None
        if title == option:
            page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            return
        if title is not None and title == first:
            break  # wrapped around: not in the list
        first = first or title
    page.keyboard.press("Escape")
    save_screenshot(page, "FAILED-mlflow-compare-runs")
    pytest.fail(f"MLflow compare view: no option {option!r} in select #{combobox_index}")


def test_mlflow_compare_runs_of_the_weeks(e2e_stack: E2EStack, page):
    """The MLflow UI's compare view of the weekly runs, in a real browser: what an engineer comparing
    model versions sees."""
    experiment_id, run_ids = mlflow_experiment_and_runs(e2e_stack)
    ids = [run_ids[week] for week in e2e_stack.partitions]
    page.goto(f"{e2e_stack.mlflow_url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([experiment_id])}")
    wait_for_texts(page, [f"week-{week}" for week in e2e_stack.partitions], "mlflow-compare-runs")
    close_mlflow_assistant(page)
    # The parallel-coordinates plot of the scores: the model (once there is one), the candidate ceiling, both baselines.
    page.get_by_role("button", name="Clear All").click()
    metrics = (["ranker.score"] if e2e_stack.has_asset("ranker") else []) + [
        "baseline_covisitation.score", "baseline_popularity.score", "recall.combined.ceiling_score"]
    for metric in metrics:
        pick_option(page, 1, metric)
    page.wait_for_timeout(1500)
    save_screenshot(page, "mlflow-compare-runs")


def test_mlflow_registered_model_shows_the_champion(e2e_stack: E2EStack, page):
    if not e2e_stack.has_asset("ranker"):
        pytest.skip("the code location has no `ranker` asset yet: nothing registers models")
    page.goto(f"{e2e_stack.mlflow_url}/#/models/{MODEL_NAME}")
    versions = [f"Version {v.version}" for v in e2e_stack.mlflow_client().search_model_versions(f"name = '{MODEL_NAME}'")]
    # Each version row shows its tags (week, score, gate verdict) and the aliases column `@ champion`.
    wait_for_texts(page, [MODEL_NAME, *versions], "mlflow-registered-model")
    page.get_by_text(re.compile(r"^@\s*champion$")).first.wait_for(state="visible")  # "@&nbsp;champion"
    close_mlflow_assistant(page)
    save_screenshot(page, "mlflow-registered-model")
