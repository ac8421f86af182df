"""Static checks of the Docker stack (docker/): no Docker engine, no network.

The stack cannot be started in CI, so these tests check what would break it: missing files,
names that disagree between compose.yaml, dagster.yaml, workspace.yaml and the Dockerfile,
configuration the project's own Settings or Dagster's instance schema would reject.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docker_stack

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = DOCKER_DIR / "Dockerfile"

DAGSTER_SERVICES = ("code_location", "dagster_webserver", "dagster_daemon")
EXPECTED_SERVICES = ("postgres", "minio", "minio_setup", "mlflow", *DAGSTER_SERVICES, "serving")
# Host ports documented in docker/README.md, per service.
EXPECTED_PORTS = {
    "dagster_webserver": {3000},
    "mlflow": {5000},
    "minio": {9000, 9001},
    "serving": {8000},
}
OPTIONAL_PORTS = {"postgres": {5432}}
# The configuration table of the design (contract).
CONTRACT_VARIABLES = (
    "RECSYS_RAW_URI",
    "RECSYS_LAKE_DIR",
    "RECSYS_PUBLISH_URI",
    "RECSYS_PARTITION_START",
    "SPARK_MASTER",
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "DAGSTER_HOME",
)

_INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<required>:?\?)(?P<message>[^}]*)|:?-(?P<default>[^}]*))?\}")
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
SECRET_NAME = re.compile(r"PASSWORD|SECRET")


def env_example() -> dict[str, str]:
    """docker/.env.example's assignments (commented optional ones left out)."""
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z][A-Z0-9_]*=", line))
    return {name: value for name, value in pairs}


# What an operator's docker/.env provides: the example with every required value filled in.
OPERATOR_ENV = {name: value or f"test-{name.lower()}" for name, value in env_example().items()}


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's interpolation of `${VAR:-default}` and `${VAR:?message}` with `env` (default: an
    operator's docker/.env, OPERATOR_ENV), and `$$` -> `$`; a required variable missing fails."""
    env = OPERATOR_ENV if env is None else env
    if isinstance(value, str):

        def substitute(match):
            name = match.group("name")
            if env.get(name):
                return env[name]
            if match.group("required") is not None:
                raise KeyError(f"compose would refuse to start: {name} is required ({match.group('message')})")
            return match.group("default") or ""

        return "$".join(_INTERPOLATION.sub(substitute, piece) for piece in value.split("$$"))
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


def variable_references(text: str) -> list[re.Match]:
    return [match for piece in text.split("$$") for match in _INTERPOLATION.finditer(piece)]


def as_env(environment) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def as_argv(command) -> list[str]:
    if command is None:
        return []
    return [str(part) for part in command] if isinstance(command, list) else shlex.split(command)


def option(argv: list[str], *names: str) -> str:
    for index, part in enumerate(argv):
        if part in names:
            return argv[index + 1]
        for name in names:
            if name.startswith("--") and part.startswith(name + "="):
                return part.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def published_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(interpolate(str(entry["published"]))))
            assert int(entry["target"]), entry
        else:
            # [host_ip:]published:target[/protocol]
            parts = interpolate(str(entry)).split("/")[0].rsplit(":", 2)
            assert len(parts) >= 2, f"port {entry!r} is not bound explicitly (host:container)"
            ports.add(int(parts[-2]))
    return ports


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            result.append((str(entry["source"]), str(entry["target"])))
        else:
            source, target = str(entry).split(":")[:2]
            result.append((source, target))
    return result


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return interpolate(compose["services"])


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def docker_dagster_yaml() -> dict:
    return yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())


@pytest.fixture(scope="module")
def docker_workspace() -> dict:
    return yaml.safe_load((DOCKER_DIR / "workspace.yaml").read_text())


@pytest.fixture()
def stack_env(services, monkeypatch) -> dict[str, str]:
    """The code location's environment, applied to this process."""
    env = as_env(services["code_location"]["environment"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# --- compose.yaml -------------------------------------------------------------------------


def test_every_service_exists(services):
    assert set(EXPECTED_SERVICES) <= set(services), set(EXPECTED_SERVICES) - set(services)


def test_every_service_has_an_image_or_a_build_that_exists(services):
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image and no build"
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert dockerfile.resolve() == DOCKERFILE.resolve(), f"{name}: unexpected Dockerfile {dockerfile}"


def test_compose_value_types_follow_the_compose_spec(compose):
    """Things YAML would silently turn into non-strings, which Compose rejects or misreads."""
    for name, service in compose["services"].items():
        for key in ("command", "entrypoint"):
            value = service.get(key)
            if isinstance(value, list):
                assert all(isinstance(part, str) for part in value), f"{name}.{key}: non-string item"
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL", "NONE") and all(isinstance(p, str) for p in test), name
        environment = service.get("environment") or {}
        if isinstance(environment, dict):
            for key, value in environment.items():
                assert isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{name}.{key}"
        assert isinstance(service.get("restart", "no"), str), f"{name}.restart must be a string ('no')"
        for key in ("expose",):
            assert all(isinstance(port, (str, int)) for port in service.get(key, [])), name
        for key, spec in (service.get("healthcheck") or {}).items():
            if key in ("interval", "timeout", "start_period"):
                assert re.fullmatch(r"\d+(ms|s|m|h)", spec), f"{name}.healthcheck.{key}={spec!r}"
    assert all(key in {"name", "services", "volumes", "networks"} or key.startswith("x-") for key in compose)


def test_project_image_services_share_one_image(services):
    images = {services[name]["image"] for name in (*DAGSTER_SERVICES, "mlflow", "serving")}
    assert len(images) == 1, images


def test_published_ports_are_the_documented_ones(services):
    for name, service in services.items():
        ports = published_ports(service)
        expected = EXPECTED_PORTS.get(name, set())
        assert expected <= ports, f"{name}: publishes {ports}, expected {expected}"
        assert ports <= expected | OPTIONAL_PORTS.get(name, set()), f"{name}: undocumented ports {ports}"
    readme = (DOCKER_DIR / "README.md").read_text()
    for ports in EXPECTED_PORTS.values():
        for port in ports:
            assert f"http://localhost:{port}" in readme, f"README does not document port {port}"


def test_volumes_are_existing_files_or_declared_named_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, target in mounts(service):
            assert target.startswith("/"), f"{name}: mount target {target} is not absolute"
            if source.startswith((".", "/", "~")):
                path = (COMPOSE_FILE.parent / source).resolve()
                assert path.exists(), f"{name}: bind-mount source {path} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source!r} is not declared at top level"


def test_dagster_services_mount_instance_workspace_lake_and_logs(services, docker_dagster_yaml):
    logs_dir = docker_dagster_yaml["compute_logs"]["config"]["base_dir"]
    for name in DAGSTER_SERVICES:
        service = services[name]
        env = as_env(service["environment"])
        by_target = {target: source for source, target in mounts(service)}
        instance_file = f"{env['DAGSTER_HOME'].rstrip('/')}/dagster.yaml"
        assert Path(DOCKER_DIR / by_target[instance_file]).resolve() == (DOCKER_DIR / "dagster.yaml").resolve()
        assert by_target[env["RECSYS_LAKE_DIR"]] == "lake", f"{name}: the lake is not the shared volume"
        assert by_target[logs_dir] == "dagster_logs", f"{name}: compute logs are not shared"
    for name in ("dagster_webserver", "dagster_daemon"):
        workspace = option(as_argv(services[name]["command"]), "-w", "--workspace")
        by_target = {target: source for source, target in mounts(services[name])}
        assert (DOCKER_DIR / by_target[workspace]).resolve() == (DOCKER_DIR / "workspace.yaml").resolve()


def test_dagster_services_share_one_environment_covering_the_contract(services):
    envs = [as_env(services[name]["environment"]) for name in DAGSTER_SERVICES]
    assert envs[0] == envs[1] == envs[2], "the Dagster services' environments differ"
    env = envs[0]
    missing = [name for name in CONTRACT_VARIABLES if not env.get(name)]
    assert not missing, f"contract variables not set: {missing}"
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == env["AWS_RESPONSE_CHECKSUM_VALIDATION"] == "when_required"
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_stack_environment_is_accepted_by_the_project_settings(stack_env):
    from pipelines.config import Settings
    from pipelines.weeks import Week

    settings = Settings.from_env()
    assert settings.lake_dir == "/data/lake"
    assert settings.raw_uri == "s3://recsys-landing/raw"
    assert settings.publish_uri.startswith("s3://")
    assert settings.spark_master == "local[*]"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.aws_endpoint_url == "http://minio:9000"
    Week.parse(settings.partition_start, settings.timezone)  # raises unless a Monday


def test_stack_environment_builds_the_resources(stack_env):
    from resources import build_resources

    from dagster import EnvVar

    resources = build_resources()
    # Deploy-time values reach the launchpad as the variables they come from, read at run time.
    assert resources["lake"].root == EnvVar("RECSYS_LAKE_DIR")
    assert resources["pipeline_config"].raw_uri == EnvVar("RECSYS_RAW_URI")
    assert resources["lake"].process_config_and_initialize().root == "/data/lake"
    assert resources["pipeline_config"].process_config_and_initialize().raw_uri == "s3://recsys-landing/raw"
    assert resources["s3"].endpoint_url == "http://minio:9000"
    assert resources["s3"].region_name == "us-east-1"


def test_buckets_used_by_the_stack_are_created(services):
    setup_script = " ".join(as_argv(services["minio_setup"].get("command")))
    env = as_env(services["code_location"]["environment"])
    uris = [value for value in env.values() if value.startswith("s3://")]
    uris.append(option(as_argv(services["mlflow"]["command"]), "--artifacts-destination"))
    buckets = {uri.removeprefix("s3://").split("/", 1)[0] for uri in uris}
    assert buckets >= {"recsys-landing", "recsys-published", "recsys-mlflow"}
    for bucket in buckets:
        assert re.search(rf"(?<![\w-]){re.escape(bucket)}(?![\w-])", setup_script), (
            f"bucket {bucket} is used but not created by minio_setup"
        )
    assert "mc mb" in setup_script


def test_depends_on_waits_for_health_and_setup(services):
    conditions = {"service_healthy", "service_completed_successfully", "service_started"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must use conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = spec.get("condition")
            assert condition in conditions, f"{name} -> {target}: condition {condition}"
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") in ("no", None), f"{target} must be one-shot"
    assert services["minio_setup"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("mlflow", "code_location"):
        assert services[name]["depends_on"]["minio_setup"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("dagster_webserver", "dagster_daemon"):
        assert services[name]["depends_on"]["code_location"]["condition"] == "service_healthy"


def test_mlflow_server_uses_postgres_and_minio_and_accepts_the_stack_host(services):
    from mlflow.server.security_utils import is_allowed_host_header

    argv = as_argv(services["mlflow"]["command"])
    assert argv[:2] == ["mlflow", "server"]
    backend = option(argv, "--backend-store-uri")
    postgres_env = as_env(services["postgres"]["environment"])
    assert backend == (
        f"postgresql+psycopg2://{postgres_env['POSTGRES_USER']}:{postgres_env['POSTGRES_PASSWORD']}@postgres:5432/mlflow"
    )
    assert "CREATE DATABASE mlflow" in (DOCKER_DIR / "postgres-init.sql").read_text()
    assert option(argv, "--host") == "0.0.0.0"
    port = int(option(argv, "--port"))
    allowed = [host.strip() for host in option(argv, "--allowed-hosts").split(",")]
    # The host the Dagster containers use, and the host a browser on the machine uses.
    for host in (f"mlflow:{port}", f"localhost:{port}", f"127.0.0.1:{port}"):
        assert is_allowed_host_header(allowed, host), f"MLflow would reject Host: {host}"
    tracking_uri = as_env(services["code_location"]["environment"])["MLFLOW_TRACKING_URI"]
    assert tracking_uri == f"http://mlflow:{port}"
    assert as_env(services["mlflow"]["environment"])["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


# --- dagster.yaml, workspace.yaml ---------------------------------------------------------


def _env_refs(node) -> set[str]:
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_refs(value) for value in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_refs(value) for value in node)) if node else set()
    return set()


def test_instance_uses_postgres_with_credentials_from_the_compose_environment(docker_dagster_yaml, services):
    db = dict(docker_dagster_yaml["storage"]["postgres"]["postgres_db"])
    # The installed driver (psycopg2-binary): SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3.
    assert db.pop("scheme") == "postgresql+psycopg2"
    assert {key: spec["env"] for key, spec in db.items()} == {
        "username": "DAGSTER_POSTGRES_USER",
        "password": "DAGSTER_POSTGRES_PASSWORD",
        "hostname": "DAGSTER_POSTGRES_HOST",
        "db_name": "DAGSTER_POSTGRES_DB",
        "port": "DAGSTER_POSTGRES_PORT",
    }
    postgres_env = as_env(services["postgres"]["environment"])
    for name in DAGSTER_SERVICES:
        env = as_env(services[name]["environment"])
        assert _env_refs(docker_dagster_yaml) <= set(env), f"{name} lacks {_env_refs(docker_dagster_yaml) - set(env)}"
        assert env["DAGSTER_POSTGRES_HOST"] == "postgres"
        assert env["DAGSTER_POSTGRES_PORT"] == "5432"
        assert env["DAGSTER_POSTGRES_USER"] == postgres_env["POSTGRES_USER"]
        assert env["DAGSTER_POSTGRES_PASSWORD"] == postgres_env["POSTGRES_PASSWORD"]
        assert env["DAGSTER_POSTGRES_DB"] == postgres_env["POSTGRES_DB"]


def test_instance_run_policy_matches_local_instance(docker_dagster_yaml):
    local = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    assert docker_dagster_yaml["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert docker_dagster_yaml["concurrency"] == local["concurrency"]
    assert docker_dagster_yaml["run_retries"] == local["run_retries"]
    assert local["concurrency"]["runs"]["max_concurrent_runs"] == 1
    assert local["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert docker_dagster_yaml["run_launcher"]["class"] == "DefaultRunLauncher"
    assert docker_dagster_yaml["telemetry"]["enabled"] is False
    assert docker_dagster_yaml["compute_logs"]["class"] == "LocalComputeLogManager"


def test_instance_config_passes_dagsters_own_schema(stack_env, tmp_path):
    """Dagster's loader (schema of dagster.yaml) plus the config schema of each configured class."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._serdes.config_class import class_from_code_pointer

    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DOCKER_DIR))
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")

    # Classes that need no database are built for real.
    ref.run_coordinator_data.rehydrate(as_type=QueuedRunCoordinator)
    assert ref.settings["concurrency"]["runs"]["max_concurrent_runs"] == 1
    ref.run_launcher_data.rehydrate()

    compute_logs_class = class_from_code_pointer(ref.compute_logs_data.module_name, ref.compute_logs_data.class_name)
    result = process_config(resolve_to_config_type(compute_logs_class.config_type()), ref.compute_logs_data.config_dict)
    assert result.success, result.errors


def test_instance_postgres_storage_config_resolves_to_the_stack_database(stack_env, tmp_path):
    """DagsterPostgresStorage connects on construction, so no live instance: validate its config
    against its own schema, env vars resolved from the stack's environment, and the URL."""
    import dagster_postgres  # noqa: F401  (the `docker` extra, installed by `make test`)
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes.config_class import class_from_code_pointer
    from dagster_postgres.utils import pg_url_from_config

    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DOCKER_DIR))
    storage_class = class_from_code_pointer(ref.storage_data.module_name, ref.storage_data.class_name)
    result = process_config(resolve_to_config_type(storage_class.config_type()), ref.storage_data.config_dict)
    assert result.success, result.errors
    user, password = stack_env["DAGSTER_POSTGRES_USER"], stack_env["DAGSTER_POSTGRES_PASSWORD"]
    assert pg_url_from_config(result.value) == f"postgresql+psycopg2://{user}:{password}@postgres:5432/dagster"


def test_dagster_schema_check_rejects_a_broken_instance(tmp_path):
    """The schema check above is not vacuous: a misspelt key fails it."""
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.ref import InstanceRef

    broken = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    broken["storage"]["postgres"]["postgres_db"]["host_name"] = broken["storage"]["postgres"]["postgres_db"].pop(
        "hostname"
    )
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        InstanceRef.from_dir(str(tmp_path))


def test_workspace_points_at_the_code_location_server(docker_workspace, services, pyproject):
    [entry] = docker_workspace["load_from"]
    grpc = entry["grpc_server"]
    argv = as_argv(services["code_location"]["command"])
    assert argv[:3] == ["dagster", "code-server", "start"]
    assert grpc["host"] == "code_location" and "code_location" in services
    assert option(argv, "-h", "--host") == "0.0.0.0"
    assert int(grpc["port"]) == int(option(argv, "-p", "--port"))
    assert str(grpc["port"]) in services["code_location"].get("expose", [])
    assert option(argv, "-m", "--module-name") == pyproject["tool"]["dagster"]["module_name"]
    assert grpc["location_name"] == option(argv, "--location-name") == pyproject["tool"]["dagster"]["code_location_name"]
    healthcheck = " ".join(services["code_location"]["healthcheck"]["test"])
    assert f"-p {grpc['port']}" in healthcheck


def test_workspace_loads_with_dagster():
    from dagster._core.workspace.config_schema import ensure_workspace_config

    config = yaml.safe_load((DOCKER_DIR / "workspace.yaml").read_text())
    ensure_workspace_config(config, str(DOCKER_DIR / "workspace.yaml"))


# --- Dockerfile, pyproject ----------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_base_java_and_system_packages():
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    for package in ("openjdk-17-jre-headless", "libopenblas0", "liblapack3", "procps", "tini", "libgomp1"):
        assert re.search(rf"(?<![\w-]){re.escape(package)}(?![\w-])", run), f"{package} is not installed"
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    for setting in ("JAVA_HOME=", "GX_ANALYTICS_ENABLED=False", "DAGSTER_HOME=/opt/dagster/dagster_home"):
        assert setting in env, f"ENV lacks {setting}"
    assert ("WORKDIR", "/opt/recsys") in instructions
    assert "pip install '.[docker]'" in run or "pip install .[docker]" in run
    assert "pip install -e" not in run


def test_dockerfile_copies_every_package_of_the_project(pyproject):
    copied = set()
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY":
            *sources, _ = [part for part in rest.split() if not part.startswith("--")]
            copied.update(source.rstrip("/") for source in sources)
    setuptools = pyproject["tool"]["setuptools"]
    # A subpackage (pipelines.model) comes with its top-level folder.
    expected = {*(package.split(".")[0] for package in setuptools["packages"]),
                *(f"{module}.py" for module in setuptools["py-modules"])}
    expected |= {"pyproject.toml", "workspace.yaml", "scripts"}
    assert expected <= copied, f"not copied: {expected - copied}"
    for source in copied:
        if not any(ch in source for ch in "*?["):
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def test_dockerignore_lets_every_copied_path_in():
    """docker/Dockerfile.dockerignore is an allow-list: each COPY source must be re-included."""
    allowed = {
        line.strip()[1:].rstrip("/")
        for line in (DOCKER_DIR / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip().startswith("!")
    }
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY":
            *sources, _ = [part for part in rest.split() if not part.startswith("--")]
            for source in sources:
                plain = source.rstrip("/").replace("[d]", "d")
                assert plain in allowed, f"{source} is copied but excluded by Dockerfile.dockerignore"


def test_docker_extra_pins_dagster_postgres_to_the_dagster_release(pyproject):
    dependencies = pyproject["project"]["dependencies"]
    extra = pyproject["project"]["optional-dependencies"]["docker"]
    dagster = next(dep for dep in dependencies if dep.startswith("dagster=="))
    postgres = next(dep for dep in extra if dep.startswith("dagster-postgres=="))
    assert any(dep.startswith("psycopg2-binary") for dep in extra)
    core_major, core_minor, core_patch = map(int, dagster.split("==")[1].split("."))
    lib_major, lib_minor, lib_patch = map(int, postgres.split("==")[1].split("."))
    # Integration libraries are released with core: 1.13.27 <-> 0.29.27.
    assert (lib_major, lib_minor, lib_patch) == (core_major - 1, core_minor + 16, core_patch)


def test_serving_runs_recsys_serve_against_the_stack_mlflow_with_the_lake_mounted(services):
    serving = services["serving"]
    command = as_argv(serving["command"])
    assert command[:2] == ["recsys", "serve"] and command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "8000"
    environment = as_env(serving["environment"])
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # The bundle reads its tables from the lake, at the path the code location wrote them.
    lake_mounts = [volume for volume in serving["volumes"] if volume.split(":")[0] == "lake"]
    assert lake_mounts and lake_mounts[0].split(":")[1] == environment["RECSYS_LAKE_DIR"] == "/data/lake"
    assert serving["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "8000/health" in " ".join(serving["healthcheck"]["test"])


# --- credentials ----------------------------------------------------------------------------

PROJECT_BUCKETS = {"recsys-landing", "recsys-published", "recsys-mlflow"}


def test_no_password_or_secret_has_a_default():
    references = variable_references(COMPOSE_FILE.read_text())
    secrets = {match.group("name") for match in references if SECRET_NAME.search(match.group("name"))}
    assert secrets >= {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "RECSYS_S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD",
                       "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    for match in references:
        if SECRET_NAME.search(match.group("name")):
            assert match.group("required") == ":?", f"{match.group(0)}: a secret must be required, with no default"
    # Without a docker/.env the stack does not start.
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD is required"):
        interpolate(yaml.safe_load(COMPOSE_FILE.read_text())["services"], env={})


def test_env_example_documents_every_variable_and_leaves_secrets_empty():
    example_text = ENV_EXAMPLE.read_text()
    example = env_example()
    for name in {match.group("name") for match in variable_references(COMPOSE_FILE.read_text())}:
        assert re.search(rf"^#? ?{name}=", example_text, re.MULTILINE), f"{name} is not in docker/.env.example"
        if SECRET_NAME.search(name):
            assert example.get(name) == "", f"{name} must be set by the operator, not shipped"
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_mlflow_runs_behind_basic_auth_and_every_client_authenticates(services):
    import configparser

    mlflow_service = services["mlflow"]
    argv = as_argv(mlflow_service["command"])
    assert option(argv, "--app-name") == "basic-auth"
    environment = as_env(mlflow_service["environment"])
    config_path = environment["MLFLOW_AUTH_CONFIG_PATH"]
    ini_mounts = dict((target, source) for source, target in mounts(mlflow_service))
    assert ini_mounts[config_path] == "./mlflow-auth.ini"
    config = configparser.ConfigParser()
    config.read(DOCKER_DIR / "mlflow-auth.ini")
    assert "admin_password" not in config["mlflow"], "the admin password comes from docker/.env, not a file"
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    auth_db = config["mlflow"]["database_uri"].removeprefix("sqlite:///")
    assert any(source == "mlflow_auth" and auth_db.startswith(target + "/") for source, target in mounts(mlflow_service))
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == OPERATOR_ENV["MLFLOW_ADMIN_PASSWORD"]
    assert environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] == OPERATOR_ENV["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    clients = [name for name, service in services.items() if "MLFLOW_TRACKING_URI" in as_env(service.get("environment"))]
    assert set(clients) >= {*DAGSTER_SERVICES, "serving"}
    for name in clients:
        client_env = as_env(services[name]["environment"])
        assert client_env["MLFLOW_TRACKING_USERNAME"] == environment["MLFLOW_AUTH_ADMIN_USERNAME"], name
        assert client_env["MLFLOW_TRACKING_PASSWORD"] == environment["MLFLOW_AUTH_ADMIN_PASSWORD"], name


def test_minio_root_credentials_reach_only_minio_and_its_setup(services):
    root = {OPERATOR_ENV["MINIO_ROOT_USER"], OPERATOR_ENV["MINIO_ROOT_PASSWORD"]}
    for name, service in services.items():
        values = set(as_env(service.get("environment")).values()) | set(as_argv(service.get("command")))
        if name in ("minio", "minio_setup"):
            assert root <= values, name
        else:
            assert not values & root, f"{name} holds MinIO's root credentials"
    for name in ("code_location", "mlflow"):
        environment = as_env(services[name]["environment"])
        assert environment["AWS_ACCESS_KEY_ID"] == OPERATOR_ENV["RECSYS_S3_ACCESS_KEY"], name
        assert environment["AWS_SECRET_ACCESS_KEY"] == OPERATOR_ENV["RECSYS_S3_SECRET_KEY"], name


def test_project_s3_user_is_limited_to_the_project_buckets(services):
    import json

    policy = json.loads((DOCKER_DIR / "minio-policy.json").read_text())
    resources = [resource for statement in policy["Statement"] for resource in statement["Resource"]]
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    assert {resource.removeprefix("arn:aws:s3:::").split("/", 1)[0] for resource in resources} == PROJECT_BUCKETS
    assert not any("*" in action for statement in policy["Statement"] for action in statement["Action"])
    setup = services["minio_setup"]
    script = " ".join(as_argv(setup["command"]))
    policy_target = dict((source, target) for source, target in mounts(setup))["./minio-policy.json"]
    assert f"mc admin policy create local recsys-buckets {policy_target}" in script
    assert 'mc admin user add local "$RECSYS_S3_ACCESS_KEY" "$RECSYS_S3_SECRET_KEY"' in script
    assert 'mc admin policy attach local recsys-buckets --user "$RECSYS_S3_ACCESS_KEY"' in script


def test_mlflow_basic_auth_app_refuses_anonymous_clients(tmp_path):
    """The server the stack runs, started here: /health is open, the API needs the admin's credentials."""
    import base64
    import configparser
    import json
    import os
    import sys
    import urllib.error
    import urllib.request

    from tests.processes import free_port, http_ok, managed_process

    config = configparser.ConfigParser()
    config.read(DOCKER_DIR / "mlflow-auth.ini")
    config["mlflow"]["database_uri"] = f"sqlite:///{tmp_path / 'basic_auth.db'}"
    with open(tmp_path / "auth.ini", "w") as handle:
        config.write(handle)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": "recsys", "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-test-password-1",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret"}
    argv = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
            "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workers", "1"]

    def status(headers: dict) -> int:
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                json.load(response)
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def basic(user: str, password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    with managed_process(argv, tmp_path / "mlflow.log", name="mlflow server", env=env) as server:
        server.wait_ready(lambda: http_ok(f"{base}/health"), timeout=120)
        assert status({}) == 401
        assert status(basic("recsys", "wrong")) == 401
        assert status(basic("recsys", "a-long-test-password-1")) == 200
