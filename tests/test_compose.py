"""docker-compose.yml, the Dockerfiles and the files they use, checked without a Docker engine."""

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import dockerfile
import pytest
import yaml
from dotenv import dotenv_values

from chassis.settings import ServiceSettings
from chassis.testing import free_port
from stack.provision import provision
from stack.topology import TOPOLOGY

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
LOCAL_PATH = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def load_script(relative: str) -> ModuleType:
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load_script("deploy/render.py")
write_service_env = load_script("deploy/compose/write_service_env.py")
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES = COMPOSE["services"]
SERVICE_FOLDERS = sorted(p.name for p in (ROOT / "services").iterdir() if p.is_dir())
APP_DOCKERFILES = sorted([render.service_dockerfile(name) for name in SERVICE_FOLDERS]
                         + [render.STACK_DOCKERFILE], key=str)


def instructions(path: Path, name: str) -> list[dockerfile.Command]:
    return [c for c in dockerfile.parse_file(str(path)) if c.cmd == name.upper()]


def dockerfile_of(service: dict) -> Path | None:
    build = service.get("build")
    return ROOT / build.get("context", ".") / build["dockerfile"] if build else None


def healthcheck_of(service: dict) -> bool:
    """Whether the container reports health: in compose, or in the image it builds."""
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False)
    built = dockerfile_of(service)
    return built is not None and bool(instructions(built, "HEALTHCHECK"))


def test_compose_file_follows_the_compose_specification():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_folders_compose_services_and_topology_name_the_same_services():
    built_from_service_folder = {
        name for name, service in SERVICES.items()
        if (path := dockerfile_of(service)) and path.parent.parent == ROOT / "services"}
    workers = {w.name for s in TOPOLOGY.services for w in s.workers}
    assert set(SERVICE_FOLDERS) | workers == built_from_service_folder
    assert set(SERVICE_FOLDERS) == {s.name for s in TOPOLOGY.services}


@pytest.mark.parametrize("name", SERVICE_FOLDERS)
def test_each_service_is_built_from_its_own_dockerfile_with_the_workspace_as_context(name):
    assert SERVICES[name]["build"] == {"context": ".",
                                       "dockerfile": f"services/{name}/Dockerfile"}


@pytest.mark.parametrize("name", SERVICE_FOLDERS)
def test_each_service_listens_on_8000_with_the_settings_provision_wrote(name):
    assert SERVICES[name]["command"] == [
        "uvicorn", "--factory", f"{name}_svc.main:build_app", "--host", "0.0.0.0",
        "--port", str(render.CONTAINER_PORT), "--env-file", f"/shared/{name}.env"]
    assert "shared:/shared:ro" in SERVICES[name]["volumes"]
    assert SERVICES[name]["depends_on"]["provision"] == {
        "condition": "service_completed_successfully"}
    assert build_args(render.service_dockerfile(name))["HEALTH_PATH"] == "/healthz"


WORKERS = [(service, worker) for service in TOPOLOGY.services for worker in service.workers]


@pytest.mark.parametrize(("service", "worker"), WORKERS, ids=[w.name for _, w in WORKERS])
def test_each_worker_runs_from_its_services_image_with_its_own_settings(service, worker):
    container = SERVICES[worker.name]
    assert container["build"] == SERVICES[service.name]["build"]
    assert container["command"] == [
        "uvicorn", "--factory", worker.app, "--host", "0.0.0.0",
        "--port", str(render.CONTAINER_PORT), "--env-file", f"/shared/{worker.name}.env"]
    for package in service.system_packages:
        assert package in build_args(render.service_dockerfile(service.name))["APT_PACKAGES"]


def test_the_gateway_serves_media_and_passes_uploads_on_to_compose_s3():
    conf = render.NGINX_CONF.read_text()
    assert f"server {render.MOTO}" in conf
    assert "location /media/ {" in conf and f"/{TOPOLOGY.media_bucket}/media/;" in conf
    assert f"location = /uploads/{TOPOLOGY.uploads_bucket} {{" in conf


@pytest.mark.parametrize("path", APP_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_app_images_install_from_the_lock_with_uv_and_run_unprivileged(path):
    runs = " ".join(" ".join(c.value) for c in instructions(path, "RUN"))
    assert "uv sync --frozen --no-dev" in runs
    final_user = instructions(path, "USER")[-1].value[0]
    assert final_user.split(":")[0] not in ("root", "0")
    assert any("HEALTH_PATH" in " ".join(c.value) for c in instructions(path, "HEALTHCHECK"))
    assert instructions(path, "EXPOSE")


@pytest.mark.parametrize("path", [*APP_DOCKERFILES, render.DOCKERFILE_TEMPLATE],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfiles_pass_hadolint(path):
    result = subprocess.run([VENV_BIN / "hadolint", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dependency_is_waited_for_until_healthy_or_done():
    for name, service in SERVICES.items():
        for target, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert healthcheck_of(SERVICES[target]), f"{name} waits on {target}'s health"
            else:
                assert condition == "service_completed_successfully", (name, target)
                assert SERVICES[target].get("restart", "no") == "no", f"{target} is one-shot"


def test_files_rendered_from_the_topology_are_current():
    files = render.rendered()
    assert render.NGINX_CONF in files
    assert render.stale(files) == [], "run `uv run python deploy/render.py`"
    assert files[render.POSTGRES_INIT].count("CREATE DATABASE") == len(TOPOLOGY.services)
    for service in TOPOLOGY.services:
        assert f'CREATE DATABASE "{service.name}";' in files[render.POSTGRES_INIT]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_gateway_conf_is_accepted_by_nginx(tmp_path):
    # nginx -t resolves upstream hosts, and compose's names only resolve inside compose.
    conf = render.NGINX_CONF.read_text()
    for host in [*SERVICE_FOLDERS, "health", "moto"]:
        conf = conf.replace(f"server {host}:", "server 127.0.0.1:")
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bind_mounted_files_are_in_the_repository():
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("./"):
                continue
            assert (ROOT / source).is_file(), f"{name} mounts {source}"


def test_health_aggregator_and_gateway_know_every_service():
    targets = json.loads(SERVICES["health"]["environment"]["HEALTH_TARGETS"])
    assert targets == render.health_targets(TOPOLOGY)
    gateway_waits_for = set(SERVICES["gateway"]["depends_on"])
    assert gateway_waits_for == {s.name for s in TOPOLOGY.services} | {"health", "moto"}
    assert SERVICES["gateway"]["ports"] == [f"{TOPOLOGY.gateway_port}:{TOPOLOGY.gateway_port}"]


def provision_command_run_locally(moto_endpoint: str, shared: Path) -> str:
    """Compose's provision command, pointed at a local moto and a local /shared."""
    command = SERVICES["provision"]["command"]
    assert command[:2] == ["sh", "-c"]
    script_mount = next(v for v in SERVICES["provision"]["volumes"] if v.startswith("./"))
    script_source, script_target = script_mount.split(":")[:2]
    return (command[2].replace("http://moto:5000", moto_endpoint)
            .replace(script_target, str(ROOT / script_source))
            .replace("/shared", str(shared)))


@pytest.fixture(scope="module")
def shared(moto_endpoint, tmp_path_factory) -> Path:
    """/shared as compose's provision step leaves it, the step run here against a local moto."""
    directory = tmp_path_factory.mktemp("shared")
    result = subprocess.run(["sh", "-c", provision_command_run_locally(moto_endpoint, directory)],
                            env={**os.environ, **LOCAL_PATH}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def settings_class(service: str) -> type[ServiceSettings]:
    """The service's own settings class (`<service>_svc.settings`)."""
    module = importlib.import_module(f"{service}_svc.settings")
    return next(value for value in vars(module).values() if isinstance(value, type)
                and issubclass(value, ServiceSettings) and value is not ServiceSettings)


def test_provision_step_leaves_every_service_complete_settings(shared, monkeypatch):
    outputs = json.loads((shared / "stack.json").read_text())
    for service in TOPOLOGY.services:
        values = dotenv_values(shared / f"{service.name}.env")
        cls = settings_class(service.name)
        assert set(values) <= {field.upper() for field in cls.model_fields}
        with monkeypatch.context() as env:
            for key, value in values.items():
                env.setenv(key, value)
            settings = cls()
        assert settings.database_url == (
            f"postgresql+asyncpg://asyncsns:asyncsns@postgres:5432/{service.name}")
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.cognito_user_pool_id == outputs["user_pool_id"]
        assert settings.cognito_client_id == outputs["client_id"]
        assert settings.events_topic_arn == outputs["topics"].get(service.name)
        assert settings.public_url == "http://localhost:8080"
        if service.needs_search:
            assert settings.search_url == "http://opensearch:9200"
        if service.needs_media:
            assert settings.media_base_url == "http://localhost:8080/media"
            if "upload_endpoint_url" in cls.model_fields:  # a service clients upload to
                assert settings.upload_endpoint_url == "http://localhost:8080/uploads"
        for worker in service.workers:
            values = dotenv_values(shared / f"{worker.name}.env")
            assert json.loads(values["CONSUME_QUEUES"]) == [u.queue for u in worker.uploads]
            assert values["DATABASE_URL"] == settings.database_url


# Only containers that keep their image's healthcheck: compose's own, where set, replaces it.
@pytest.mark.parametrize("name", [name for name, service in SERVICES.items()
                                  if "build" in service and "healthcheck" not in service])
def test_container_command_passes_the_image_healthcheck(name, shared, tmp_path):
    service = SERVICES[name]
    port = free_port()
    command = [part.replace("/shared", str(shared)) for part in service["command"]]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    # Compose's PostgreSQL and OpenSearch are not here; a variable set outside wins over the
    # env file.
    env = {**os.environ, **LOCAL_PATH, **service.get("environment", {}),
           "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite3",
           "SEARCH_URL": f"sqlite:///{tmp_path}/search.sqlite3"}
    image = dockerfile_of(service)
    check = instructions(image, "HEALTHCHECK")[-1].value
    assert check[0] == "CMD"
    check_env = {**env, "PORT": str(port), "HEALTH_PATH": build_args(image)["HEALTH_PATH"]}
    log = tmp_path / "app.log"
    with log.open("w") as out, subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out,
                                                stderr=subprocess.STDOUT) as app:
        try:
            deadline = time.monotonic() + 30
            while subprocess.run(check[1:], env=check_env, capture_output=True).returncode:
                assert app.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            app.terminate()
            app.wait(timeout=10)


def named_volume_mounts(service: dict) -> dict[str, str]:
    """Mount point to named volume (bind mounts, whose source is a path, left out)."""
    mounts = [volume.split(":") for volume in service.get("volumes", [])]
    return {target: source for source, target, *_ in mounts if source in COMPOSE["volumes"]}


def seconds(duration: str) -> int:
    assert re.fullmatch(r"\d+s", duration), duration
    return int(duration[:-1])


def test_moto_and_postgres_keep_their_state_on_named_volumes():
    moto = SERVICES["moto"]
    command = moto["command"]
    assert moto["image"] == SERVICES["provision"]["image"], "the stack image has stack.motoserver"
    assert command[:3] == ["python", "-m", "stack.motoserver"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "5000"
    state = Path(command[command.index("--state") + 1])
    assert str(state.parent) in named_volume_mounts(moto)
    # The final save runs on SIGTERM: compose must not kill moto first (its default is 10s).
    assert seconds(moto["stop_grace_period"]) >= 20
    # A new named volume copies the owner of the image's directory: the image must own it.
    run_lines = " ".join(" ".join(i.value) for i in instructions(render.STACK_DOCKERFILE, "RUN"))
    assert f"chown app:app /shared {state.parent}" in run_lines

    postgres = SERVICES["postgres"]
    assert "tmpfs" not in postgres
    assert "/var/lib/postgresql/data" in named_volume_mounts(postgres)


def test_moto_command_is_healthy_saves_on_sigterm_and_provision_finds_the_same_ids(tmp_path):
    """Compose's moto run here twice over one state file, compose's provision after each start."""
    moto = SERVICES["moto"]
    state = Path(moto["command"][moto["command"].index("--state") + 1])
    local_state = tmp_path / state.name
    stack_json = []
    for run in range(2):
        port = free_port()
        command = [part.replace(str(state), str(local_state)) for part in moto["command"]]
        command[command.index("--host") + 1] = "127.0.0.1"
        command[command.index("--port") + 1] = str(port)
        check = [part.replace(":5000/", f":{port}/") for part in moto["healthcheck"]["test"]]
        assert check[0] == "CMD"
        log = tmp_path / f"moto-{run}.log"
        with log.open("w") as out, subprocess.Popen(command, env={**os.environ, **LOCAL_PATH},
                                                    stdout=out, stderr=subprocess.STDOUT) as proc:
            try:
                deadline = time.monotonic() + 30
                while subprocess.run(check[1:], env={**os.environ, **LOCAL_PATH},
                                     capture_output=True).returncode:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
                shared = tmp_path / f"shared-{run}"
                shared.mkdir()
                endpoint = f"http://127.0.0.1:{port}"
                result = subprocess.run(
                    ["sh", "-c", provision_command_run_locally(endpoint, shared)],
                    env={**os.environ, **LOCAL_PATH}, capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, result.stdout + result.stderr
                # In compose moto's address is the same on every start; here the port is not.
                outputs = (shared / "stack.json").read_text().replace(endpoint, "http://moto:5000")
                stack_json.append(json.loads(outputs))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=seconds(moto["stop_grace_period"]))
        assert proc.returncode == 0, log.read_text()
        assert local_state.is_file()
    assert stack_json[1] == stack_json[0]


def test_env_file_values_survive_quoting(tmp_path):
    tricky = {"A": "it's", "B": '["q1", "q2"]', "C": "back\\slash", "D": "a b #c"}
    path = tmp_path / "x.env"
    path.write_text("".join(write_service_env.dotenv_line(k, v) + "\n" for k, v in tricky.items()))
    assert dotenv_values(path) == tricky


def test_provision_outputs_hold_the_random_pool_id_compose_cannot_know(moto_endpoint):
    outputs = provision(TOPOLOGY, moto_endpoint)
    assert outputs["user_pool_id"].startswith(f"{TOPOLOGY.region}_")
    assert outputs["jwks_url"] == f"{moto_endpoint}/{outputs['user_pool_id']}/.well-known/jwks.json"


def build_context(destination: Path) -> Path:
    """The repository as `docker build .` sends it: without what .dockerignore names."""
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    # Two forms only, "**/<name glob>" and "<top-level name>": this is Docker's matching for them.
    anywhere = [p.removeprefix("**/") for p in patterns if p.startswith("**/")]
    top_level = {p for p in patterns if not p.startswith("**/")}
    assert not any(set(p) & set("/!") for p in anywhere), anywhere
    assert not any(set(p) & set("/!*?[") for p in top_level), top_level

    def ignored(directory: str, names: list[str]) -> set[str]:
        at_top = Path(directory) == ROOT
        return {n for n in names if (at_top and n in top_level)
                or any(fnmatch.fnmatch(n, glob) for glob in anywhere)}

    shutil.copytree(ROOT, destination, ignore=ignored)
    return destination


@pytest.fixture(scope="module")
def image_context(tmp_path_factory) -> Path:
    return build_context(tmp_path_factory.mktemp("context") / "src")


def build_args(path: Path) -> dict[str, str]:
    """The build arguments' defaults."""
    return dict(c.value[0].split("=", 1) for c in instructions(path, "ARG") if "=" in c.value[0])


def build_stage(path: Path) -> tuple[dict[str, str], str]:
    """The build arguments, the environment of the stage that runs `uv sync`, and that command."""
    args = build_args(path)
    stage_env: dict[str, str] = {}
    for c in dockerfile.parse_file(str(path)):
        if c.cmd == "FROM":
            stage_env = {}
        elif c.cmd == "ENV":
            stage_env.update(zip(c.value[::2], c.value[1::2], strict=True))
        elif c.cmd == "RUN" and "uv sync" in c.value[0]:
            return {**args, **stage_env}, c.value[0]
    raise AssertionError(f"{path} runs no uv sync")


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
@pytest.mark.parametrize("path", APP_DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_build_step_installs_a_runnable_app_from_the_lock(path, image_context, tmp_path):
    build_env, command = build_stage(path)
    # Precompiling bytecode only costs time here (moto alone takes seconds).
    env = {**os.environ, **build_env, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
           "UV_COMPILE_BYTECODE": "0"}
    env.pop("VIRTUAL_ENV", None)
    sync = subprocess.run(["sh", "-c", command], cwd=image_context, env=env,
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr
    module, factory = build_env["APP"].split(":")
    probe = subprocess.run(
        [tmp_path / "venv/bin/python", "-c", f"import {module} as m; assert callable(m.{factory})"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
