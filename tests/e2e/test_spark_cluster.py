"""The whole graph on a real standalone cluster (one master, two workers) gives what local mode gives.

The reference is the end-to-end shop (`e2e_stack`, tests/e2e/conftest.py): two generated weeks
that the daemon's backfill ran through every asset in local mode, where the ranker beats both
baselines so every gate passes and the week is published. The cluster starts from that lake's
first week (its features are what the second week's ranker trains on beside its own) and runs
every asset of the second week, publish included, with every check (tests/e2e/cluster_run.py:
started by `e2e_stack` once the backfill's first week succeeded, so it runs beside the rest of
the suite). The lakes are then compared:

- every table that depends neither on partitioning nor on ALS: row for row;
- ALS (factors, similar items, the published similar items): by shape, since its solver blocks
  and the order of its float sums depend on partitioning;
- candidates, features, the ranker and the session lists read ALS, so local and cluster runs
  differ where ALS does. They are checked two ways: the hand rule's part (which reads no ALS)
  and the baselines' scores equal local mode's exactly, the ranker's out-of-fold score is within
  RANKER_TOLERANCE of it; and each stage, re-run here on the cluster's own inputs, reproduces the
  cluster's table (floats to FLOAT_TOLERANCE, for sums in another order) and the ranker its score.

The lake is a local tmp folder, readable by the workers because master, workers and driver
share this machine. On a real cluster it must be a filesystem every node mounts at the same
path (README, "Running on a Spark cluster").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from definitions import build_definitions
from pipelines.lake import Lake
from pipelines.weeks import Week
from tests.conftest import TIMEZONE, make_resources
from tests.e2e.cluster_run import WORKERS, master_state
from tests.e2e.conftest import E2E_START, PARTITIONS, E2EStack, run_config_for_tiny_data
from tests.spark_stages import FAST_ALS, GRAPH_ASSETS

pytestmark = pytest.mark.cluster

FIRST_WEEK, WEEK = E2E_START, PARTITIONS[1]
# Tables whose content depends neither on partitioning nor on which executor ran what, nor on
# ALS: they must match row for row (floats to FLOAT_TOLERANCE).
DETERMINISTIC_TABLES = [
    "events", "events_quarantine", "sessions", "eval_sessions", "eval_labels", "top_sellers", "covisitation",
    "item_stats", "published_top_sellers", "published_frequently_bought_together",
]
# ALS is compared by shape only (see below): table -> key column.
ALS_TABLES = {"als_item_factors": "aid", "als_session_factors": "session", "similar_items": "aid",
              "published_similar_items": "aid"}
# Sums of the same doubles in another order (another partitioning) agree to about 1e-15 (top
# sellers' decayed scores differ in the last digit); the features are float32.
FLOAT_TOLERANCE = 1e-6
# The out-of-fold score of the ranker, cluster against local mode: their ALS factors differ in the
# last digits, which moves a few ALS candidates and features (the end-to-end shop: about 500
# evaluation sessions, where one session more or less with a hit moves the score by ~0.002).
RANKER_TOLERANCE = 0.01


def assert_passed(runs: list[dict], log: str = "") -> None:
    assert [run["week"] for run in runs] == [WEEK], runs
    run = runs[0]
    assert run["success"], (run["week"], run["failures"], log)
    assert set(run["materialized"]) == set(GRAPH_ASSETS), run
    assert run["checks"] and all(run["checks"].values()), run["checks"]


def read_rows(lake: Path, table: str, week: str = WEEK) -> list[dict]:
    folder = lake / table / f"week={week}"
    assert (folder / "_SUCCESS").exists(), f"{folder} was not written"
    return pq.read_table(folder).to_pylist()


def rounded(value):
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def canonical_rows(lake: Path, table: str, week: str = WEEK) -> list[dict]:
    """A week's rows in one order whatever the files and the row order (floats rounded to order them)."""
    return sorted(read_rows(lake, table, week), key=lambda row: json.dumps(rounded(row), sort_keys=True))


def same_values(left, right) -> bool:
    """Equal, floats (also inside lists and structs) to FLOAT_TOLERANCE."""
    if isinstance(left, float) or isinstance(right, float):
        if left is None or right is None:
            return left is right
        return math.isclose(left, right, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE) or (
            math.isnan(left) and math.isnan(right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_values(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same_values, left, right))
    return left == right


def assert_same_rows(expected: list[dict], actual: list[dict], keys: list[str], name: str) -> None:
    index = lambda rows: {tuple(row[key] for key in keys): row for row in rows}  # noqa: E731
    expected_by_key, actual_by_key = index(expected), index(actual)
    assert len(expected_by_key) == len(expected) and expected, f"{name}: keys {keys} not unique, or no rows"
    assert expected_by_key.keys() == actual_by_key.keys(), f"{name}: other rows"
    differing = [key for key, row in expected_by_key.items() if not same_values(row, actual_by_key[key])]
    assert not differing, f"{name}: {len(differing)} rows differ, e.g. {expected_by_key[differing[0]]} against " \
                          f"{actual_by_key[differing[0]]}"


def replayed_here(spark, cluster_lake: Path, staged: Path) -> dict[str, Path]:
    """Candidates, features and the session lists re-built in local mode from the cluster lake's
    own inputs, with the functions the assets call; returns where each landed."""
    from pipelines.candidates import CANDIDATE_CONFIG
    from pipelines.candidates import build_candidates
    from pipelines.features import add_features
    lake, week = Lake(str(cluster_lake)), Week.parse(WEEK, TIMEZONE)
    read = lambda table, at=week: lake.read_partition(spark, table, at)  # noqa: E731
    sources_week = week.shift(-1)  # the week's rows come from the week before's sources
    eval_sessions = read("eval_sessions")
    frames = {
        "candidates": build_candidates(eval_sessions, read("covisitation", sources_week),
                                       read("similar_items", sources_week), read("top_sellers", sources_week),
                                       CANDIDATE_CONFIG),
        "features": add_features(read("candidates"), eval_sessions.select("session", "prefix"),
                                 read("item_stats", sources_week)),
    }
    out = {}
    for name, frame in frames.items():
        frame.write.parquet(str(staged / name))
        out[name] = staged / name
    return out


def test_whole_graph_on_a_standalone_cluster_matches_local_mode(e2e_stack: E2EStack, spark, tmp_path):
    """Covers what no local-mode test can: tasks, shuffles and broadcasts crossing two executors of a
    standalone master, the driver configured only through the environment, and every asset and check
    of a week passing there with local mode's results. Its reference is the e2e backfill's lake, so
    the shop is built once per test session."""
    cluster = e2e_stack.cluster
    assert cluster is not None, f"the cluster run did not start: {e2e_stack.cluster_error or 'not requested'}"
    local_lake, cluster_lake = Path(e2e_stack.env["RECSYS_LAKE_DIR"]), cluster.lake
    assert run_config_for_tiny_data() == {"ops": {"als": {"config": FAST_ALS}}}, "the cluster runs ALS as the backfill did"
    local_definitions = build_definitions(make_resources(str(cluster.raw_dir), str(local_lake), partition_start=FIRST_WEEK))
    graph = {key.to_user_string() for key in local_definitions.resolve_asset_graph().materializable_asset_keys}
    assert set(GRAPH_ASSETS) == graph, "tests/spark_stages.py's GRAPH_ASSETS must name every asset of the graph"
    # The first week is the warm-up week: its sources (the second week's rows read them) and sessions.
    assert {"sessions", "eval_labels", "top_sellers", "item_stats", "covisitation", "similar_items"} <= set(
        cluster.seeded_tables), cluster.seeded_tables

    result = cluster.wait()
    assert_passed(result["runs"], cluster.driver.log_tail(60))
    assert result["returncode"] == 0, cluster.driver.log_tail(60)
    cluster.assert_running()
    state = master_state(cluster.master_ui)
    cluster_mlflow, cluster_published = cluster.mlflow_db, cluster.published
    timings = cluster.timings
    master_url = cluster.master_url

    # Each run was an application of this master that got a core on each worker, and it finished.
    assert result["spark_master"] == master_url
    apps = state["completedapps"]
    assert [(app["name"], app["state"], app["cores"]) for app in apps] == [("session-recsys", "FINISHED", WORKERS)], apps
    assert not state["activeapps"]
    # Every blocking check of the graph ran on the cluster and passed, publish's manifest check included.
    assert {"ranker_beats_baselines", "publish_gates", "published_manifest_verified"} <= set(result["runs"][-1]["checks"])

    for table in DETERMINISTIC_TABLES:
        local_rows, cluster_rows = canonical_rows(local_lake, table), canonical_rows(cluster_lake, table)
        assert same_values(local_rows, cluster_rows), f"{table} differs between local mode and the cluster"
        assert local_rows or table == "events_quarantine", f"{table} is empty: comparing it proves nothing"

    # ALS is not bitwise reproducible across partitionings (solver blocks and the order of float
    # sums differ), so it is compared by shape: the same items and sessions got finite factors
    # of the configured rank and the same items got similar items; the cluster run passed the
    # ALS checks (factor norms, similar-items contract, coverage).
    for table, key in ALS_TABLES.items():
        local_table = pq.read_table(local_lake / table / f"week={WEEK}")
        cluster_table = pq.read_table(cluster_lake / table / f"week={WEEK}")
        assert local_table.schema == cluster_table.schema, table
        assert local_table.num_rows > 0, table
        assert set(local_table[key].to_pylist()) == set(cluster_table[key].to_pylist()), table
    for table in ("als_item_factors", "als_session_factors"):
        for row in read_rows(cluster_lake, table):
            assert len(row["factors"]) == FAST_ALS["rank"] and all(map(math.isfinite, row["factors"])), table

    # The hand rule reads no ALS: its candidates and its order are local mode's.
    hand_rule = lambda lake: sorted(  # noqa: E731
        (row["session"], row["type"], row["aid"], row["baseline_rank"])
        for row in read_rows(lake, "candidates") if row["baseline_rank"] is not None)
    assert hand_rule(local_lake) == hand_rule(cluster_lake)
    local_ranker, cluster_ranker = (Lake(str(lake)).read_stats("ranker", Week.parse(WEEK, TIMEZONE))
                                    for lake in (local_lake, cluster_lake))
    for baseline in ("baseline_covisitation", "baseline_popularity"):
        assert math.isclose(local_ranker["metrics"][baseline]["score"], cluster_ranker["metrics"][baseline]["score"],
                            abs_tol=1e-12), baseline
    assert abs(local_ranker["metrics"]["ranker"]["score"] - cluster_ranker["metrics"]["ranker"]["score"]) <= RANKER_TOLERANCE
    # The cluster's registry is its own and empty: its version is gated against the baselines only.
    gate = cluster_ranker["gate"]
    assert gate["champion_before"] is None
    score, baselines = cluster_ranker["metrics"]["ranker"]["score"], [
        cluster_ranker["metrics"][name]["score"] for name in ("baseline_covisitation", "baseline_popularity")]
    assert gate["promoted"] == all(score > baseline for baseline in baselines), gate

    # Each ALS-reading stage of the cluster, re-run here on the cluster's own inputs, gives the cluster's table.
    replayed = replayed_here(spark, cluster_lake, tmp_path / "replayed")
    assert_same_rows(pq.read_table(replayed["candidates"]).to_pylist(), read_rows(cluster_lake, "candidates"),
                     ["session", "type", "aid"], "candidates")
    assert_same_rows(pq.read_table(replayed["features"]).to_pylist(), read_rows(cluster_lake, "features"),
                     ["session", "type", "aid"], "features")
    assert_replayed_ranker_and_lists(spark, cluster_lake, cluster_mlflow, cluster_ranker)

    # The cluster published the week: its manifest names every file, `_latest.json` points at it.
    latest = json.loads((cluster_published / "_latest.json").read_text())
    assert latest["week"] == WEEK, latest

    print("timings (s):", json.dumps({name: round(seconds, 1) for name, seconds in timings.items()}))


def assert_replayed_ranker_and_lists(spark, cluster_lake: Path, cluster_mlflow: Path, cluster_ranker: dict) -> None:
    """The ranker re-evaluated here on the cluster's features scores what the cluster logged (the
    sample is drawn by hashes of the session and LightGBM is deterministic), and what the cluster
    published is recomputed here: its champion from its MLflow registry, or the hand rule."""
    from pipelines.candidates import CANDIDATE_CONFIG
    from pipelines.evaluation import labels_long
    from pipelines.features import source_tables
    from pipelines.model import load_version
    from pipelines.ranker import RankerConfig, earlier_labelled_weeks, evaluate_ranker
    from pipelines.recommendations import active_sessions, hand_rule_recommendations

    lake, week = Lake(str(cluster_lake)), Week.parse(WEEK, TIMEZONE)
    earlier, _ = earlier_labelled_weeks(spark, lake, week, RankerConfig())
    assert list(earlier) == []  # the week before is the warm-up week: no labelled rows
    evaluation = evaluate_ranker(lake.read_partition(spark, "features", week),
                                 labels_long(lake.read_partition(spark, "eval_labels", week)),
                                 lake.read_partition(spark, "top_sellers", week.shift(-1)), RankerConfig())
    evaluation.release()
    assert math.isclose(evaluation.score, cluster_ranker["metrics"]["ranker"]["score"], abs_tol=1e-9)

    # The published lists: the version the gate left as champion, or the hand rule while there is none,
    # on the week's own sources.
    sessions = active_sessions(lake.read_partition(spark, "sessions", week))
    sources = source_tables(spark, lake, week)
    chosen = cluster_ranker["gate"]["champion_after"]
    if chosen is None:
        lists = hand_rule_recommendations(sessions, sources, CANDIDATE_CONFIG).collect()
    else:
        champion = load_version(f"sqlite:///{cluster_mlflow}", cluster_ranker["model_name"], str(chosen))
        lists = champion.bundle.recommend(sessions, tables=sources).collect()
    assert_same_rows([row.asDict(recursive=True) for row in lists], read_rows(cluster_lake, "published_session_recommendations"),
                     ["session", "type"], "session recommendations")
