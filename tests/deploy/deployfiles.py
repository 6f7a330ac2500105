"""Readers for the deployment files: the Dockerfile's stages, Compose models, the k8s manifest."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "k8s" / "deployment.yaml"


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

RESET = object()  # Compose's `!reset` tag (Compose >= 2.24): the merge removes the key it marks


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def merge(base, override):
    """Compose's merge, simplified to what these files use: mappings merge, sequences append."""
    if isinstance(base, dict) and isinstance(override, dict):
        result = dict(base)
        for key, value in override.items():
            if value is RESET:
                result.pop(key, None)
            else:
                result[key] = merge(result[key], value) if key in result else value
        return result
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def interpolate(value):
    """Fill `${VAR:-default}` with its default: the files as shipped, whatever this shell holds."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
    return value


def merged(*paths: Path) -> dict:
    model: dict = {}
    for path in paths:
        model = merge(model, yaml.load(path.read_text(), Loader=ComposeLoader))
    return model


def compose(*paths: Path) -> dict:
    return interpolate(merged(*paths))


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source, from the short syntax "source:target[:mode]" these files use."""
    return {target: source for source, target, *_ in (v.split(":") for v in service.get("volumes", []))}


def published(service: dict) -> dict[int, int]:
    """Container port -> host port, from the short syntax "[ip:]host:container" these files use."""
    return {int(port.split(":")[-1]): int(port.split(":")[-2]) for port in service.get("ports", [])}


def gpu_devices(service: dict) -> list[dict]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


# -- Kubernetes ----------------------------------------------------------------------------------

def k8s_documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(K8S.read_text()) if doc}


def k8s_container() -> dict:
    (container,) = k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def k8s_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
