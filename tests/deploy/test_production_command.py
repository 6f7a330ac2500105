"""The image's own start command (the Dockerfile's api CMD: uvicorn with the flags `python -m
app.server` prints), run here as the container runs it, minus the container: it serves, carries
the server's guards (the 431 of an oversized head, the connection cap that makes room) and stops
on SIGTERM. `make image-test` runs the same command inside the built image."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.process import free_port
from tests.deploy.deployfiles import REPO, dockerfile_stages, instructions

DEADLINE_S = 300  # importing torch and loading the models on a busy 2-core machine


def _production_command(port: int) -> str:
    (cmd,) = instructions(dockerfile_stages(), "api", "CMD")
    assert "--host 0.0.0.0 --port 8000" in cmd
    return cmd.replace("--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {port}")


def test_the_image_start_command_serves_with_the_server_guards(weights_dir, tmp_path):
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "GENSERVE_WEIGHTS_DIR": str(weights_dir), "GENSERVE_WORKERS": "1", "GENSERVE_THREADS": "1",
           "GENSERVE_MAX_CONNECTIONS": "4"}
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(["/bin/sh", "-c", _production_command(port)], cwd=REPO, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + DEADLINE_S
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < give_up, "the production command did not become ready"
            time.sleep(0.5)
        sample = httpx.post(url + "/v1/models/dcgan/samples", json={"n": 2, "seed": 3}, timeout=60)
        assert sample.status_code == 200 and sample.headers["content-type"] == "image/png"

        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:  # the guarded parser
            conn.sendall(b"GET /healthz?" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 431 ")
        idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(4)]
        for conn in idle:  # the cap's worth of idle keep-alive connections ...
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert httpx.get(url + "/v1/models", timeout=30).status_code == 200  # ... make room for a new client
        for conn in idle:
            conn.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            code = process.wait(timeout=90)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            log.close()
    # uvicorn drains, then raises SIGTERM again for its default action: a container's status 143.
    assert code in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()[-2000:]
