"""Reloads (issue 37): a new version that fails verification leaves the last good one serving and
says why; a reload asked for after a change reflects it, at most one load queued behind the one
running; a FIFO where a card should be never hangs start-up or a reload; a server bound to loopback
only takes a reload from its own machine without a token (issue 38)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from contextlib import contextmanager

import httpx
import pytest
import torch
import uvicorn
from starlette.requests import Request

import app.registry
from app.config import Settings
from app.main import create_app
from app.routes.admin import from_this_machine_to_loopback_only
from app.server import uvicorn_config
from apptest import DEADLINE_S, THREADS, metric, serving, until, until_async
from bench.process import free_port
from models.checkpoint import load_checkpoint, read_card, save_checkpoint

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": "Bearer t"}
REQUEST = {"n": 2, "seed": 7}


@pytest.fixture
def root(weights_dir, tmp_path):
    """A weights folder of its own, serving one model (a copy of the test DCGAN)."""
    shutil.copytree(weights_dir / "dcgan", tmp_path / "weights" / "dcgan")
    return tmp_path / "weights"


def new_weights(folder, shift: float = 0.5) -> str:
    """New weights land in `folder` as training saves them (the last layer's bias shifted); their sha256."""
    model, card = load_checkpoint(folder)
    with torch.no_grad():
        [m for m in model.generator.modules() if getattr(m, "bias", None) is not None][-1].bias += shift
    return save_checkpoint(model, folder, {k: v for k, v in card.items()
                                           if k not in ("sha256", "size_bytes", "config")})["sha256"]


def truncate_weights(folder) -> str:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 2])
    return "does not match the card"


def break_the_card(folder) -> str:
    (folder / "card.json").write_text("{not json")
    return "not valid JSON"


def fifo_for_a_card(folder) -> str:
    (folder / "card.json").unlink()
    os.mkfifo(folder / "card.json")
    return "card.json: not a regular file"


async def samples(client) -> list[str]:
    answer = await client.post("/v1/models/dcgan/samples?format=json", json=REQUEST)
    assert answer.status_code == 200, answer.text
    return answer.json()["images"]


async def reload(client, **headers) -> httpx.Response:
    return await asyncio.wait_for(client.post("/v1/admin/reload", headers=headers), DEADLINE_S)


async def test_a_new_version_that_fails_keeps_the_last_good_one_serving(root, tmp_path):
    """Each broken version in turn (the weights cut short, a card that is not JSON, a FIFO named
    card.json), then a good one."""
    shutil.copytree(root / "dcgan", tmp_path / "good")
    async with serving(root, admin_token="t") as client:
        before, sha = await samples(client), read_card(root / "dcgan")["sha256"]
        for breaking in (truncate_weights, break_the_card, fifo_for_a_card):
            reason = breaking(root / "dcgan")
            answer = await reload(client, **AUTH)
            assert answer.status_code == 409, answer.text
            body = answer.json()
            assert body["status"].startswith("ready, but 1 checkpoint folder(s) failed to load: dcgan: ")
            assert reason in body["failed"]["dcgan"] and body["models"] == ["dcgan"], (breaking, body)
            assert f"still serving its previous version (sha256 {sha[:12]}...)" in body["failed"]["dcgan"]
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and reason in ready.json()["failed"]["dcgan"]
            assert await samples(client) == before
            shutil.rmtree(root / "dcgan")
            shutil.copytree(tmp_path / "good", root / "dcgan")
        new_sha = new_weights(root / "dcgan")  # a good new version: served at the next reload, the failure gone
        answer = await reload(client, **AUTH)
        assert answer.status_code == 200 and answer.json()["status"] == "ready" and answer.json()["failed"] == {}
        assert (await client.get("/v1/models/dcgan")).json()["checkpoint"]["sha256"] == new_sha
        assert await samples(client) != before


async def test_a_fifo_card_does_not_hang_start_up(root):
    (root / "other").mkdir()
    os.mkfifo(root / "other" / "card.json")
    async with serving(root) as client:
        ready = await asyncio.wait_for(client.get("/readyz"), DEADLINE_S)
        assert ready.status_code == 200 and "not a regular file" in ready.json()["failed"]["other"]
        assert ready.json()["models"] == ["dcgan"]


async def test_a_reload_asked_for_after_a_change_reflects_it_while_another_runs(root, monkeypatch):
    """The first reload's load has read the old weights and is held; new weights land; four more
    reloads are asked for: they share one more load, which reads the new weights."""
    loads, held, release = [], threading.Event(), threading.Event()
    real_load = app.registry.load_model

    def load_and_hold(folder, device):  # in the reload's thread
        served = real_load(folder, device)
        loads.append(served.card["sha256"])
        if len(loads) == 1:
            held.set()
            assert release.wait(DEADLINE_S), "the held load was never released"
        return served
    async with serving(root, admin_token="t") as client:
        old_sha = read_card(root / "dcgan")["sha256"]
        monkeypatch.setattr(app.registry, "load_model", load_and_hold)
        first = asyncio.ensure_future(reload(client, **AUTH))
        async def holding() -> bool:
            return held.is_set()
        await until_async(holding, "the first reload's load to run")
        new_sha = new_weights(root / "dcgan")
        later = [asyncio.ensure_future(reload(client, **AUTH)) for _ in range(4)]

        async def arrived() -> bool:
            return metric((await client.get("/metrics")).text, "genserve_requests_in_progress") >= 6
        await until_async(arrived, "the four later reloads to arrive")
        release.set()
        answers = await asyncio.gather(first, *later)
        assert [a.status_code for a in answers] == [200] * 5
        assert loads == [old_sha, new_sha], "one load running, one queued for all four later reloads"
        assert (await client.get("/v1/models/dcgan")).json()["checkpoint"]["sha256"] == new_sha


@contextmanager
def real_server(weights, host: str):
    """The app served by uvicorn on `host`, in a thread of this process: its listening socket is
    this process's (which the loopback rule reads)."""
    settings = Settings(weights_dir=weights, threads=THREADS, host=host, port=free_port())
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        until(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)


def test_a_loopback_server_reloads_without_a_token_and_a_relayed_request_does_not(root):
    with real_server(root, "127.0.0.1") as url:  # no GENSERVE_ADMIN_TOKEN
        new_sha = new_weights(root / "dcgan")
        relayed = httpx.post(url + "/v1/admin/reload", headers={"X-Forwarded-For": "203.0.113.7"})
        assert relayed.status_code == 404
        answer = httpx.post(url + "/v1/admin/reload", timeout=DEADLINE_S)
        assert answer.status_code == 200 and answer.json()["status"] == "ready", answer.text
        assert httpx.get(url + "/v1/models/dcgan").json()["checkpoint"]["sha256"] == new_sha
    with real_server(root, "0.0.0.0") as url:  # any other bind keeps the token rule
        assert httpx.post(url + "/v1/admin/reload").status_code == 404


@pytest.mark.parametrize("family, bound", [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")], ids=["ipv4", "ipv6"])
def test_a_process_listening_beyond_loopback_keeps_the_token_rule(family, bound):
    """The rule reads the process's own listening sockets: one on every address turns it off, even
    for a request that came over loopback."""
    scope = {"type": "http", "headers": [], "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000)}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as loopback:
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        assert from_this_machine_to_loopback_only(Request(scope))
        with socket.socket(family, socket.SOCK_STREAM) as everywhere:
            everywhere.bind((bound, 0))
            everywhere.listen()
            assert not from_this_machine_to_loopback_only(Request(scope))
