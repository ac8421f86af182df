"""How Spark is sized: caller settings over the environment over machine-derived defaults, and
broadcasts and single-file writes that do not depend on luck with table sizes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipelines.candidates import neighbour_scores
from pipelines.lake import Lake
from pipelines.spark import (
    BROADCAST_MAX_BYTES,
    DRIVER_MEMORY,
    SHUFFLE_PARTITIONS,
    conf_from_env,
    default_shuffle_partitions,
    parse_memory_bytes,
    resolved_conf,
)
from pipelines.weeks import Week

GIB = 2**30


def test_driver_memory_defaults_to_a_share_of_the_machine_and_the_environment_and_callers_override_it():
    local = resolved_conf("local[*]", environ={}, memory_bytes=24 * GIB)
    assert parse_memory_bytes(local[DRIVER_MEMORY]) == 12 * GIB
    assert parse_memory_bytes(local["spark.driver.maxResultSize"]) == 3 * GIB
    assert int(local[BROADCAST_MAX_BYTES]) == 12 * GIB // 8
    # Against a cluster the driver only plans and collects: a smaller share.
    assert parse_memory_bytes(resolved_conf("spark://m:7077", environ={}, memory_bytes=24 * GIB)[DRIVER_MEMORY]) == 6 * GIB
    # Never below Spark's own 1 GB.
    assert parse_memory_bytes(resolved_conf("local[2]", environ={}, memory_bytes=GIB)[DRIVER_MEMORY]) == GIB

    environ = {"RECSYS_SPARK_DRIVER_MEMORY": "4g", "RECSYS_SHUFFLE_PARTITIONS": "64",
               "RECSYS_SPARK_CONF": "spark.executor.cores=2, spark.network.timeout=300s"}
    from_env = resolved_conf("local[*]", environ=environ, memory_bytes=24 * GIB)
    assert from_env[DRIVER_MEMORY] == "4g" and from_env[SHUFFLE_PARTITIONS] == "64"
    assert from_env["spark.executor.cores"] == "2" and from_env["spark.network.timeout"] == "300s"
    # The budgets follow the driver memory that was chosen, not the machine's.
    assert parse_memory_bytes(from_env["spark.driver.maxResultSize"]) == GIB
    assert int(from_env[BROADCAST_MAX_BYTES]) == 4 * GIB // 8

    caller = resolved_conf("local[*]", {DRIVER_MEMORY: "2g"}, environ=environ, memory_bytes=24 * GIB)
    assert caller[DRIVER_MEMORY] == "2g" and caller[SHUFFLE_PARTITIONS] == "64"
    # A field left blank chooses nothing; a plain number is MiB, as Spark reads driver memory.
    assert resolved_conf("local[*]", {DRIVER_MEMORY: " "}, environ=environ, memory_bytes=24 * GIB)[DRIVER_MEMORY] == "4g"
    assert int(resolved_conf("local[*]", {DRIVER_MEMORY: "4096"}, environ={})[BROADCAST_MAX_BYTES]) == 4 * GIB // 8
    assert conf_from_env({"RECSYS_BROADCAST_MAX_MB": "100"}) == {BROADCAST_MAX_BYTES: str(100 * 2**20)}


def test_memory_sizes_read_like_spark():
    assert [parse_memory_bytes(v) for v in ("512b", "2k", "512", "3m", "12g", "12gb", "1t")] == [
        512, 2048, 512 * 2**20, 3 * 2**20, 12 * GIB, 12 * GIB, 1024 * GIB]
    with pytest.raises(ValueError, match="12x"):
        parse_memory_bytes("12x")


def test_unreadable_settings_are_refused_with_the_offending_value():
    with pytest.raises(ValueError, match="not-a-pair"):
        conf_from_env({"RECSYS_SPARK_CONF": "spark.a=1 not-a-pair"})
    with pytest.raises(ValueError, match="lots"):
        resolved_conf("local[*]", {DRIVER_MEMORY: "lots"}, environ={})


def test_shuffle_partitions_follow_the_cores():
    assert default_shuffle_partitions(2) == 8
    assert default_shuffle_partitions(16) == 64


def _neighbour_scores_plan_and_rows(spark, neighbours_dir):
    sources = spark.createDataFrame([(1, 10, 1.0, None, 0), (1, 11, 0.5, None, 1), (2, 10, 0.25, None, 0)],
                                    "session BIGINT, aid BIGINT, recency DOUBLE, buy_recency DOUBLE, position_from_end INT")
    # Read from Parquet, as the lake's tables are: Spark estimates a file's size, not an in-memory frame's.
    scores = neighbour_scores(sources, spark.read.parquet(str(neighbours_dir)))
    rows = scores.select("session", "aid", "covisitation_clicks_weight").collect()
    return scores._jdf.queryExecution().executedPlan().toString(), sorted(map(tuple, rows))


def test_a_neighbour_table_is_broadcast_only_while_it_fits_the_budget(spark, tmp_path):
    neighbours_dir = tmp_path / "neighbours"
    spark.createDataFrame([("clicks", 10, 11, 4.0), ("clicks", 10, 12, 2.0), ("clicks", 11, 10, 1.0)],
                          "list STRING, aid BIGINT, neighbour BIGINT, weight DOUBLE") \
        .write.parquet(str(neighbours_dir))
    previous = {key: spark.conf.get(key, None) for key in (BROADCAST_MAX_BYTES, "spark.sql.autoBroadcastJoinThreshold")}
    try:
        # Spark's own automatic broadcast off: only the project's decision is left.
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
        spark.conf.set(BROADCAST_MAX_BYTES, str(64 * 2**20))
        fits_plan, fits_rows = _neighbour_scores_plan_and_rows(spark, neighbours_dir)
        spark.conf.set(BROADCAST_MAX_BYTES, "1")
        too_big_plan, too_big_rows = _neighbour_scores_plan_and_rows(spark, neighbours_dir)
    finally:
        for key, value in previous.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)
    assert "BroadcastHashJoin" in fits_plan and "SortMergeJoin" not in fits_plan
    assert "SortMergeJoin" in too_big_plan and "BroadcastHashJoin" not in too_big_plan
    assert fits_rows == too_big_rows == [(1, 10, 0.5), (1, 11, 1.0), (1, 12, 0.5), (2, 11, 0.25), (2, 12, 0.125)]


def test_a_single_file_write_keeps_the_work_before_it_parallel(spark, tmp_path):
    """`num_files=1` (the quarantine, top sellers) must not pull the computation upstream of the
    write, such as a whole week's JSON parse, into one task."""
    frame = spark.range(0, 4000, numPartitions=4).selectExpr("id AS session", "id % 7 AS aid")
    tracker, group = spark.sparkContext.statusTracker(), "single-file-write"
    spark.sparkContext.setJobGroup(group, "single-file write")
    try:
        target = Lake(str(tmp_path)).write_partition(frame, "probe", Week.parse("2022-08-01", "Europe/Berlin"), num_files=1)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    tasks_per_stage = sorted(
        tracker.getStageInfo(stage).numTasks
        for job in tracker.getJobIdsForGroup(group)
        for stage in tracker.getJobInfo(job).stageIds
        if tracker.getStageInfo(stage) is not None
    )
    assert len(list(target.glob("*.parquet"))) == 1
    assert pq.read_table(target).num_rows == 4000
    assert 4 in tasks_per_stage, tasks_per_stage
