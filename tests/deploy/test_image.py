"""The CPU API image, built for real by scripts/build-image and served from its own filesystem.

Minutes of building, so not part of `make test`: `make image-test` runs it (GENSERVE_IMAGE_TEST=1).
With a Docker engine the image runs with `docker run`; without one (podman cannot run containers in
some sandboxes), `buildah run` starts the image's own command, with its venv, code and weights, on
the host's network, and the checks are made from the host.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.process import free_port
from tests.deploy.deployfiles import REPO

IMAGE = "genserve:cpu"
READY_TIMEOUT_S = 300
SAMPLE = {"n": 2, "seed": 11}

pytestmark = [
    pytest.mark.slow,
    # Past the suite's 900 s per test: a first build on a busy 2-core machine takes longer.
    pytest.mark.timeout(3600),
    pytest.mark.skipif(os.environ.get("GENSERVE_IMAGE_TEST") != "1",
                       reason="builds the container image (minutes): run it with `make image-test`"),
]


def run(*command: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result


def docker_engine() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0 if _has("docker") else False


def _has(tool: str) -> bool:
    return subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode == 0


def image_command() -> list[str]:
    """The api image's CMD, as `docker run` would start it."""
    tool = "docker" if docker_engine() else "podman"
    config = json.loads(run(tool, "image", "inspect", IMAGE, "--format", "{{json .Config}}").stdout)
    return (config.get("Entrypoint") or []) + config["Cmd"]


def uvicorn_process(port: int) -> tuple[int, list[str]] | None:
    """(pid, command line) of the uvicorn serving on `port`, found through /proc (the same host)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode().split("\0")
        except OSError:
            continue
        if "uvicorn" in " ".join(argv[:2]) and str(port) in argv:
            return int(cmdline.parent.name), argv
    return None


async def sample_in_process() -> bytes:
    """SAMPLE from the checkout's app and weights, in process."""
    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(weights_dir=REPO / "weights", threads=1))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://genserve") as client:
            response = await client.post("/v1/models/dcgan/samples", json=SAMPLE)
    assert response.status_code == 200
    return response.content


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with open(log, "w") as out:
        code = subprocess.run(["nice", "-n", "10", str(REPO / "scripts" / "build-image"), "--api-only"],
                              cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=3600).returncode
    assert code == 0, log.read_text()[-5000:]
    print(f"\nbuild: {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def container(built):
    """A working container of the image (buildah), removed afterwards."""
    if docker_engine():
        yield None
        return
    name = run("buildah", "from", "--pull-never", built).stdout.strip()
    yield name
    subprocess.run(["buildah", "rm", name], capture_output=True)


@pytest.fixture(scope="module")
def served(built, container, tmp_path_factory):
    """The image's own command, on a free port of the host's network, with a grace after SIGTERM
    set through the environment."""
    port = free_port()
    env = [f"--env={k}={v}" for k, v in {"GENSERVE_THREADS": "1", "GENSERVE_GRACEFUL_TIMEOUT_S": "42"}.items()]
    # The CMD fixes port 8000, and the host's network is shared: move it to a free port.
    words = [word.replace("--port 8000", f"--port {port}") for word in image_command()]
    if container is None:
        command = ["docker", "run", "--rm", "--network", "host", *env, "--entrypoint", words[0], built, *words[1:]]
    else:
        command = ["buildah", "run", "--isolation", "chroot", "--network", "host", *env, container, "--", *words]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            assert process.poll() is None, f"the image's server exited with {process.returncode}:\n{log.read_text()}"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - started < READY_TIMEOUT_S, f"not ready:\n{log.read_text()}"
            time.sleep(0.5)
        print(f"\nready after {time.monotonic() - started:.1f} s")
        yield url, port
    finally:
        # SIGTERM to uvicorn itself (what `docker stop` sends PID 1): it drains and exits.
        server = uvicorn_process(port)
        if server:
            os.kill(server[0], signal.SIGTERM)
        else:
            process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_image_serves_its_models_to_the_host(served):
    url, _ = served
    ready = httpx.get(url + "/readyz", timeout=10).json()
    assert ready == {"ready": True, "models": ["dcgan", "pixelcnn", "vae"], "failed": {}, "saturated": {}}
    assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200

    response = httpx.post(url + "/v1/models/dcgan/samples", json=SAMPLE, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == str(SAMPLE["seed"])
    from_image = np.asarray(Image.open(io.BytesIO(response.content)))

    # The image's weights and code are the checkout's: the same request in process draws the same grid.
    from_checkout = np.asarray(Image.open(io.BytesIO(asyncio.run(sample_in_process()))))
    assert from_image.shape == from_checkout.shape
    assert np.abs(from_image.astype(int) - from_checkout.astype(int)).max() <= 1


def test_the_command_honours_the_graceful_shutdown_setting(served):
    _, port = served
    server = uvicorn_process(port)
    assert server, "no uvicorn process found for the image's server"
    _, argv = server
    assert argv[argv.index("--timeout-graceful-shutdown") + 1] == "42"
    assert argv[argv.index("--workers") + 1] == "1"  # no GPU: one worker


def test_the_api_user_cannot_change_the_weights(container):
    if container is None:
        pytest.skip("checked through buildah; with Docker, `docker run --user 10001` the same command")
    probe = ("import os, pathlib; w = pathlib.Path(os.environ['GENSERVE_WEIGHTS_DIR']); "
             "files = [p for p in w.rglob('*')]; "
             "print(len(files), sum(os.access(p, os.W_OK) for p in [w, *files]))")
    result = run("buildah", "run", "--isolation", "chroot", "--user", "10001", container, "--", "python", "-c", probe)
    count, writable = map(int, result.stdout.split())
    assert count >= 6 and writable == 0, f"{writable} of the weights' paths are writable by the API user"
    owner = run("buildah", "run", "--isolation", "chroot", container, "--", "stat", "-c", "%u", "weights/dcgan")
    assert owner.stdout.strip() == "10002"
