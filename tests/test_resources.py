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


def test_the_project_launchers_default_to_the_projects_instance(monkeypatch):
    """`recsys materialize` and `jobs.run_weeks` share the project's instance unless told otherwise:
    Dagster's CLI alone would run on a throwaway instance, where the project's pools do not hold."""
    from pipelines import cli
    from pipelines.config import PROJECT_DAGSTER_HOME, PROJECT_ROOT, with_dagster_home

    assert PROJECT_DAGSTER_HOME == PROJECT_ROOT / "dagster_home" and (PROJECT_DAGSTER_HOME / "dagster.yaml").exists()
    assert with_dagster_home({})["DAGSTER_HOME"] == str(PROJECT_DAGSTER_HOME)
    assert with_dagster_home({"DAGSTER_HOME": ""})["DAGSTER_HOME"] == str(PROJECT_DAGSTER_HOME)
    assert with_dagster_home({"DAGSTER_HOME": "/elsewhere"})["DAGSTER_HOME"] == "/elsewhere"

    launched = {}
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setattr("subprocess.run", lambda command, env: launched.update(command=command, env=env) or
                        type("Done", (), {"returncode": 0})())
    assert cli.main(["materialize", "--select", "events+", "--partition", "2022-08-08"]) == 0
    assert launched["env"]["DAGSTER_HOME"] == str(PROJECT_DAGSTER_HOME)
    assert launched["command"][1:] == ["-m", "dagster", "asset", "materialize", "-m", "definitions",
                                       "--select", "events+", "--partition", "2022-08-08"]


def test_publish_gates_and_transfer_come_from_one_resource_the_launchpad_can_set(monkeypatch):
    from definitions import build_definitions
    from pipelines.publish import MB
    from resources import PublishResource, build_resources

    monkeypatch.setenv("RECSYS_PUBLISH_MAX_LIST_LENGTH", "15")
    monkeypatch.setenv("RECSYS_PUBLISH_MULTIPART_CHUNKSIZE_MB", "8")
    publish = build_resources()["publish"]
    assert isinstance(publish, PublishResource)
    assert publish.gates.max_list_length == 15 and publish.transfer.multipart_chunksize == 8 * MB
    assert PublishResource().gates.max_list_length == 20  # the defaults are the documented ones

    job = build_definitions().resolve_job_def("weekly_recommender")
    fields = job.run_config_schema.config_type.fields["resources"].config_type.fields["publish"].config_type.fields
    publish_config = fields["config"].config_type.fields
    assert {"max_list_length", "min_row_ratio", "lease_wait_seconds", "verify_checksums"} <= set(publish_config)


def test_deploy_time_values_are_env_vars_only_where_the_environment_sets_them(monkeypatch, tmp_path):
    from dagster import EnvVar

    from resources import build_resources, deploy_value

    monkeypatch.setenv("RECSYS_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("RECSYS_PUBLISH_URI", "relative/published")  # made absolute by the settings
    monkeypatch.delenv("RECSYS_RAW_URI", raising=False)
    assert deploy_value("RECSYS_LAKE_DIR", str(tmp_path / "lake")) == EnvVar("RECSYS_LAKE_DIR")
    assert deploy_value("RECSYS_LAKE_DIR", "/elsewhere") == "/elsewhere"
    resources = build_resources()
    assert isinstance(resources["lake"].root, EnvVar)
    assert resources["lake"].process_config_and_initialize().root == str(tmp_path / "lake")
    publish_uri = resources["pipeline_config"].publish_uri
    assert not isinstance(publish_uri, EnvVar) and publish_uri.endswith("relative/published") and publish_uri != "relative/published"
    assert not isinstance(resources["pipeline_config"].raw_uri, EnvVar)
