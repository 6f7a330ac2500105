"""A real `genserve serve` (uvicorn) process on a free loopback port, for benchmarks and tests, and
a verified copy of the weights for it to serve.

    with running_server(weights_dir, log_path, queue_size=8) as server:
        httpx.get(server.url + "/healthz")
        server.rss_kib()

Settings are passed as GENSERVE_* environment variables, so the process reads them as any
deployment would. `command` names another module that serves as `genserve serve` does (a test's
server with a fault, say).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from models.checkpoint import CheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600  # a loaded 2-core machine takes minutes to import torch and load
SERVE = ("app.cli", "serve")  # `python -m` these, then --port


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for process {self.process.pid}")


def start_server(weights_dir: Path, log: Path, command: tuple[str, ...] = SERVE, **settings) -> Server:
    """Start `genserve serve` (`python -m` `command`) with GENSERVE_* `settings` and wait until
    /readyz answers 200."""
    port = free_port()
    # The repository first, then whatever the caller's path holds (a family of the user's own).
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "GENSERVE_WEIGHTS_DIR": str(weights_dir),
           **{f"GENSERVE_{key.upper()}": str(value) for key, value in settings.items()}}
    # Its own session, as a deployed server (and bench.peers' LitServe) runs: with Linux's scheduler
    # autogroups a server in the load generator's session would share that client's CPU share.
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", *command, "--port", str(port)],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the server was not ready within {READY_TIMEOUT_S} s:\n{log.read_text()}")
        time.sleep(0.3)


@contextmanager
def running_server(weights_dir: Path, log: Path, command: tuple[str, ...] = SERVE, **settings):
    """`start_server`, stopped (SIGTERM, then SIGKILL after 30 s) when the block ends."""
    server = start_server(weights_dir, log, command, **settings)
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def snapshot(source: Path, target: Path) -> Path:
    """Copy each checkpoint folder, and load it from the copy (the sha256 ties its two files)."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        for attempt in range(10):  # a training run may be between writing the weights and the card
            shutil.copytree(folder, target / folder.name, dirs_exist_ok=True)
            try:
                load_checkpoint(target / folder.name)
                break
            except (CheckpointError, OSError):
                if attempt == 9:
                    raise
                time.sleep(2)
    return target
