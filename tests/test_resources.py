"""Resource wiring that operators rely on when they edit run config in the launchpad."""

from __future__ import annotations

from dagster import asset, materialize

from resources import SparkResource


def test_spark_conf_in_run_config_keeps_the_deployments_master(monkeypatch):
    """Run config that sets only `conf` replaces the resource's whole config (Dagster merges no
    fields): the master must then come from SPARK_MASTER, not fall back to local mode."""
    monkeypatch.setenv("SPARK_MASTER", "spark://cluster.example:7077")
    seen = {}

    @asset
    def probe(spark: SparkResource) -> None:
        seen.update(master=spark.resolved_master, conf=spark.conf)

    result = materialize(
        [probe], resources={"spark": SparkResource(master="spark://cluster.example:7077")},
        run_config={"resources": {"spark": {"config": {"conf": {"spark.sql.shuffle.partitions": "3"}}}}},
    )
    assert result.success
    assert seen == {"master": "spark://cluster.example:7077", "conf": {"spark.sql.shuffle.partitions": "3"}}

    monkeypatch.delenv("SPARK_MASTER")
    assert SparkResource().resolved_master == "local[*]"
    assert SparkResource(master="local[1]").resolved_master == "local[1]"
