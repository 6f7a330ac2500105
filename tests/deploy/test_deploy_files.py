"""The deployment files keep their contract with the app and with each other.

No Docker engine runs in CI, so these read the Dockerfile, the Compose files (as Compose v2 models
them), nginx.conf and the Kubernetes manifests, and check what would otherwise only fail at
`docker compose up`: the command serves the real app on the exposed port, health checks hit routes
the app has, the GPU is reserved, training writes where the API reads. hadolint and Compose v2's
`config` lint them; tests/deploy/test_k8s.py validates the manifests; tests/deploy/test_image.py
builds the image (`make image-test`).
"""

from __future__ import annotations

import asyncio
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.deploy.deployfiles import (
    DOCKERFILE, K8S_FILES, REPO, compose, compose_binary, compose_command, compose_env, dockerfile_stages, exec_words,
    exposed_port, find_tool, flag, gpu_devices, health_url, image_env, instructions, k8s_container,
    k8s_documents, k8s_port, mounts, published, seconds,
)

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
COMPOSE_SCALE = REPO / "deploy" / "docker-compose.scale.yml"
NGINX_CONF = REPO / "deploy" / "nginx.conf"
MiB = 1 << 20


# -- the app (a broken import fails these tests: it never skips them) ---------------------------

def import_app(target: str = "app.main:app"):
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def app_body_limit() -> int:
    """The app's default request body limit."""
    return Settings.model_fields["max_body_bytes"].default


def default_grace_s() -> float:
    """How long the app drains after SIGTERM with its default settings."""
    return Settings.model_construct().shutdown_grace_s  # the defaults, whatever this shell sets


def get_status(app, path: str) -> int:
    """What the app answers to GET `path` before its models load: the moment probes start."""
    async def ask() -> int:  # httpx's ASGI transport runs no lifespan, so no model loads
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://genserve") as client:
            return (await client.get(path)).status_code

    return asyncio.run(ask())


def health_checks() -> dict[str, tuple[int, str]]:
    """Every health check the deployment files make, as (port, path), by where it is made."""
    stages = dockerfile_stages()
    (healthcheck,) = instructions(stages, "api", "HEALTHCHECK")
    checks = {"Dockerfile HEALTHCHECK": health_url(healthcheck)}
    for path in (COMPOSE, COMPOSE_SCALE):
        checks[f"{path.name} api"] = health_url(compose(path)["services"]["api"]["healthcheck"]["test"])
    for path in K8S_FILES:
        for kind, doc in k8s_documents(path).items():
            container = k8s_container(doc)
            if container is None:
                continue
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                checks[f"k8s {kind} {probe}"] = (k8s_port(container, get["port"]), get["path"])
    return checks


# -- the image ----------------------------------------------------------------------------------

def test_api_image_serves_app_main_with_uvicorn_on_the_exposed_port():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "api", "the api stage must be last: it is what a plain `docker build` makes"
    (cmd,) = instructions(stages, "api", "CMD")
    words = exec_words(cmd)
    uvicorn = words.index("uvicorn")
    assert words[uvicorn + 1] == "app.main:app"
    assert flag(words, "--host") == "0.0.0.0"
    assert int(flag(words, "--port")) == exposed_port(stages) == 8000
    assert "--workers" in words


def test_image_command_names_the_real_app():
    (cmd,) = instructions(dockerfile_stages(), "api", "CMD")
    words = exec_words(cmd)
    from starlette.applications import Starlette

    assert isinstance(import_app(words[words.index("uvicorn") + 1]), Starlette)


def test_images_run_as_a_non_root_user():
    stages = dockerfile_stages()
    for name in ("api", "train"):
        user = instructions(stages, name, "USER")[-1].split(":")[0]
        assert user not in ("root", "0"), f"the {name} image runs as root"


def test_weights_are_baked_where_the_app_looks_for_them():
    stages = dockerfile_stages()
    weights_dir = image_env(stages, "api")["GENSERVE_WEIGHTS_DIR"]
    workdir = instructions(stages, "api", "WORKDIR")[-1]
    copies = [shlex.split(args) for args in instructions(stages, "api", "COPY")]
    targets = [str(Path(workdir, words[-1])) for words in copies if words[-2].rstrip("/") == "weights"]
    assert targets == [weights_dir]


def test_torch_variant_is_a_build_argument_defaulting_to_cpu():
    stages = dockerfile_stages()
    args = instructions(stages, "deps", "ARG")
    assert "TORCH_VARIANT=cpu" in args
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}" in args
    assert any('--index-url "${TORCH_INDEX_URL}"' in run for run in instructions(stages, "deps", "RUN"))


# -- health checks ------------------------------------------------------------------------------

def test_health_checks_probe_the_api_port_and_the_contract_paths():
    port = exposed_port(dockerfile_stages())
    checks = health_checks()
    for where, (check_port, _) in checks.items():
        assert check_port == port, where
    assert checks["Dockerfile HEALTHCHECK"][1] == "/healthz"
    assert checks["docker-compose.yml api"][1] == "/healthz"
    assert checks["k8s Deployment livenessProbe"][1] == "/healthz"
    assert checks["k8s Deployment readinessProbe"][1] == "/readyz"
    assert checks["k8s InferenceService livenessProbe"][1] == "/v2/health/live"
    assert checks["k8s InferenceService readinessProbe"][1] == "/v2/health/ready"


def test_health_check_paths_are_routes_of_the_app():
    # Asked, not looked up in app.routes: FastAPI nests included routers there (0.165).
    app = import_app()
    for where, (_, path) in health_checks().items():
        status = get_status(app, path)
        assert status not in (404, 405), f"{where} probes {path}, which the app does not serve"
        if path in ("/healthz", "/v2/health/live"):
            assert status == 200, f"{where}: liveness must hold while the models load, got {status}"


# -- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_api_is_the_gpu_worker_and_only_reads_the_weights():
    stages = dockerfile_stages()
    model = compose(COMPOSE)
    api = model["services"]["api"]
    assert api["build"]["target"] == "api" and api["image"]
    assert api["environment"]["GENSERVE_DEVICE"] == "auto"
    assert api["restart"] in ("always", "unless-stopped", "on-failure")
    assert published(api) == {exposed_port(stages): 8000}
    assert gpu_devices(api), "api reserves no NVIDIA GPU"
    weights = mounts(api)[image_env(stages, "api")["GENSERVE_WEIGHTS_DIR"]]
    assert weights["type"] == "volume" and weights["source"] in model["volumes"], \
        "the weights must be a named volume the train service can share"
    assert weights.get("read_only"), "the API must not be able to change the weights it serves"
    assert seconds(api["stop_grace_period"]) > default_grace_s(), "docker stop would kill requests still draining"


def test_compose_train_is_behind_a_profile_and_writes_the_api_weights():
    stages = dockerfile_stages()
    model = compose(COMPOSE)
    api, train = model["services"]["api"], model["services"]["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["target"] in stages
    (entrypoint,) = instructions(stages, train["build"]["target"], "ENTRYPOINT")
    assert exec_words(train.get("entrypoint") or entrypoint) == ["python", "-m", "models.train"]
    assert (REPO / "models" / "train.py").is_file()
    weights_dir = image_env(stages, "train")["GENSERVE_WEIGHTS_DIR"]
    assert mounts(train)[weights_dir]["source"] == mounts(api)[weights_dir]["source"]
    assert not mounts(train)[weights_dir].get("read_only")
    assert gpu_devices(train)


def test_the_trainer_owns_the_weights_and_the_api_runs_as_another_user():
    stages = dockerfile_stages()
    api_user, train_user = (instructions(stages, name, "USER")[-1] for name in ("api", "train"))
    assert api_user != train_user
    (weights_copy,) = [args for args in instructions(stages, "api", "COPY") if "weights/" in args]
    assert f"--chown={train_user}:" in weights_copy, "the baked weights must belong to the trainer, not the API"


def test_cpu_override_builds_cpu_torch_without_a_gpu_reservation():
    gpu, cpu = compose(COMPOSE)["services"], compose(COMPOSE, COMPOSE_CPU)["services"]
    for name in ("api", "train"):
        assert not gpu_devices(cpu[name]), f"{name} still reserves a GPU"
        assert cpu[name]["build"]["args"]["TORCH_VARIANT"] == "cpu"
        assert cpu[name]["image"] != gpu[name]["image"], "the CPU build would overwrite the CUDA image's tag"
        assert cpu[name]["volumes"] == gpu[name]["volumes"]


# -- scale-out ------------------------------------------------------------------------------------

def test_scale_file_puts_api_replicas_behind_nginx():
    stages = dockerfile_stages()
    model = compose(COMPOSE_SCALE)
    api, lb = model["services"]["api"], model["services"]["lb"]
    assert int(api["deploy"]["replicas"]) >= 2
    assert not api.get("ports"), "replicas must not publish a port: they would clash on it"
    assert gpu_devices(api)
    weights_dir = image_env(stages, "api")["GENSERVE_WEIGHTS_DIR"]
    weights = mounts(api)[weights_dir]
    assert weights.get("read_only")
    base = compose(COMPOSE)
    base_weights = mounts(base["services"]["api"])[weights_dir]
    assert model["volumes"][weights["source"]]["name"] == base["volumes"][base_weights["source"]]["name"]
    assert seconds(api["stop_grace_period"]) > default_grace_s()

    image, _, tag = lb["image"].partition(":")
    assert image == "nginx" and tag and tag != "latest"
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    conf_mount = mounts(lb)["/etc/nginx/conf.d/default.conf"]
    assert conf_mount["source"] == str(NGINX_CONF) and conf_mount.get("read_only")

    conf = NGINX_CONF.read_text()
    (lb_port,) = published(lb)
    assert re.search(rf"^\s*listen\s+{lb_port};", conf, re.M)
    assert re.search(rf"^\s*server\s+api:{exposed_port(stages)}\s[^;]*max_fails=", conf, re.M), \
        "the upstream must be the api service on its port, with passive health checks"
    body_limit = re.search(r"^\s*client_max_body_size\s+(\d+)([km]?);", conf, re.M)
    assert body_limit, "nginx must cap request bodies as the app does"
    number, unit = body_limit.groups()
    assert int(number) * {"": 1, "k": 1 << 10, "m": MiB}[unit] == app_body_limit()
    for timeout in ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"):
        assert re.search(rf"^\s*{timeout}\s+\d+s;", conf, re.M), timeout


# -- linters: hadolint, and Compose v2 itself (the dev extra installs both) ----------------------------

def test_dockerfile_passes_hadolint():
    result = subprocess.run([find_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", [
    (COMPOSE,), (COMPOSE, COMPOSE_CPU), (COMPOSE_SCALE,),
], ids=lambda files: "+".join(p.name for p in files))
def test_compose_files_pass_compose_v2_config(files):
    version = subprocess.run([compose_binary(), "version", "--short"], capture_output=True, text=True)
    assert int(version.stdout.strip().lstrip("v").split(".")[0]) >= 2, "`!reset` needs Compose v2.24 or newer"
    result = subprocess.run(compose_command(*files) + ["config", "-q"], env=compose_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_v2_rejects_what_the_files_must_not_hold(tmp_path):
    """The check can fail: Compose v2 refuses a misspelt key."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("restart: unless-stopped", "restrat: unless-stopped"))
    result = subprocess.run(compose_command(broken) + ["config", "-q"], env=compose_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "restrat" in result.stderr
