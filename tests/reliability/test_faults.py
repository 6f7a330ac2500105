"""Faults and access: inference past the request timeout, damaged checkpoints, the admin token and
CORS as a deployment sets them (GENSERVE_* in the environment of a real server)."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.checkpoint import sha256_file, update_card
from tests.app.apptest import metric, serving_with, until_async
from tests.app.gated import GatedWorker


async def _metric(client, name: str, **labels) -> float:
    return metric((await client.get("/metrics")).text, name, **labels)


# Every forward pass is held at a gate the test opens (tests/app/gated.py), so that no test
# depends on how fast this machine runs a model, and no sleep stands as proof.
TIMEOUT_S = 0.5


@pytest.mark.anyio
async def test_an_inference_past_the_timeout_is_answered_504_while_the_pass_runs_on(weights_dir):
    async with serving_with(weights_dir, GatedWorker, request_timeout_s=TIMEOUT_S, batch_wait_ms=0) as client:
        worker = client.app.state.worker
        response = await client.post("/v1/models/dcgan/samples", json={"n": 4, "seed": 1})
        assert response.status_code == 504 and "longer than 0.5 s" in response.json()["detail"]
        # Answered at the timeout while its pass runs: the pass had begun, and cannot have ended.
        assert worker.entered.is_set()
        assert await _metric(client, "genserve_inference_seconds_count", model="dcgan") == 0
        worker.gate.set()  # the pass runs on (a forward pass cannot be interrupted), then lets go of the worker

        async def pass_ended() -> bool:
            return await _metric(client, "genserve_inference_seconds_count", model="dcgan") == 1
        await until_async(pass_ended, "the held pass to end once let go")
        assert await _metric(client, "genserve_queue_depth") == 0
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 200


@pytest.mark.anyio
async def test_a_request_that_times_out_in_the_queue_frees_its_slot_at_once(weights_dir):
    async with serving_with(weights_dir, GatedWorker, queue_size=1, request_timeout_s=TIMEOUT_S,
                            batch_wait_ms=0) as client:
        worker = client.app.state.worker
        busy = asyncio.create_task(client.post("/v1/models/vae/samples", json={"n": 1, "seed": 1}))

        async def pass_begun() -> bool:
            return worker.entered.is_set()
        await until_async(pass_begun, "the first request's pass to begin")
        queued = await client.post("/v1/models/dcgan/samples", json={"n": 1})  # waits behind it
        assert queued.status_code == 504
        assert await _metric(client, "genserve_queue_depth") == 0
        # The freed slot takes the next request (it times out too, but is not refused with 503).
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 504
        worker.gate.set()
        assert (await busy).status_code == 504  # its own pass outlived its timeout
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 200


def _rewrite(folder, change) -> None:
    """Change the weights with `change(tensors)` and re-sign the card, so that only the change is wrong."""
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        metadata = f.metadata()  # the config the weights were saved with, kept
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
    update_card(folder, sha256=sha256_file(folder / "model.safetensors"))


@pytest.fixture
def damaged_weights(weights_dir, tmp_path):
    """The three good models, and seven bad copies: an unknown tensor name, a tensor of the wrong
    shape, a changed byte (sha256 mismatch), a pickle file beside good weights, cards whose classes
    or dataset are a number, and a card whose config asks for 512 x 512 images."""
    root = tmp_path / "weights"
    for name in ("pixelcnn", "vae", "dcgan"):
        shutil.copytree(weights_dir / name, root / name)
    for bad, source in [("renamed", "dcgan"), ("reshaped", "vae"), ("tampered", "dcgan"), ("pickled", "pixelcnn"),
                        ("miscarded", "vae"), ("undated", "dcgan"), ("enlarged", "pixelcnn")]:
        shutil.copytree(weights_dir / source, root / bad)
    _rewrite(root / "renamed", lambda t: t.update(backdoor=torch.zeros(1)))
    first = next(iter(load_file(str(root / "reshaped" / "model.safetensors"))))
    _rewrite(root / "reshaped", lambda t: t.update({first: torch.zeros(3, 3)}))
    data = bytearray((root / "tampered" / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "tampered" / "model.safetensors").write_bytes(bytes(data))
    (root / "pickled" / "optimizer.pkl").write_bytes(b"\x80\x04N.")
    update_card(root / "miscarded", classes=5)
    update_card(root / "undated", dataset=5)  # issue 14: once loaded, then GET /v1/models answered 500
    # Issue 14: the config edited to 512 x 512 images, the sha256 left alone: once loaded and served.
    config = json.loads((root / "enlarged" / "card.json").read_text())["config"]
    update_card(root / "enlarged", config={**config, "image_shape": [1, 512, 512]})
    return root


def test_bad_checkpoints_are_refused_reported_and_logged_while_the_rest_serve(damaged_weights, serve):
    with serve(damaged_weights, log_level="info") as server:
        readiness = httpx.get(server.url + "/readyz").json()
        assert readiness["ready"] is True and readiness["models"] == ["dcgan", "pixelcnn", "vae"]
        reasons = {"renamed": "unexpected ['backdoor']", "reshaped": "expected", "tampered": "sha256",
                   "pickled": "pickle", "miscarded": "classes", "undated": "dataset", "enlarged": "image_shape"}
        assert set(readiness["failed"]) == set(reasons)
        for name, reason in reasons.items():
            assert reason in readiness["failed"][name], readiness["failed"][name]
            assert httpx.post(f"{server.url}/v1/models/{name}/samples", json={"n": 1}).status_code == 404
        for name in readiness["models"]:  # a PixelCNN sample may take seconds on a loaded machine
            assert httpx.post(f"{server.url}/v1/models/{name}/samples", json={"n": 1}, timeout=120).status_code == 200
        listed = httpx.get(server.url + "/v1/models")
        assert listed.status_code == 200 and [m["name"] for m in listed.json()["models"]] == readiness["models"]
        logged = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        errors = {entry["model"]: entry for entry in logged if entry["message"] == "checkpoint failed to load"}
        assert set(errors) == set(reasons) and all(e["level"] == "error" for e in errors.values())


def test_admin_takes_its_token_from_the_environment_and_is_off_without_one(serve):
    token = "s3cret-from-env"
    with serve(admin_token=token) as server:
        reload = server.url + "/v1/admin/reload"
        assert httpx.post(reload).status_code == 401
        assert httpx.post(reload, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(reload, headers={"Authorization": f"Basic {token}"}).status_code == 401
        right = httpx.post(reload, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert right.status_code == 200 and right.json()["ready"] is True
        assert token not in httpx.get(server.url + "/v1/models").text + httpx.get(server.url + "/openapi.json").text
        assert token not in server.log.read_text()
    # No GENSERVE_ADMIN_TOKEN, bound beyond loopback: the admin route does not exist (on loopback
    # only it takes a reload from the machine itself: tests/app/test_reload.py).
    with serve(host="0.0.0.0") as server:
        assert httpx.post(server.url + "/v1/admin/reload", headers={"Authorization": f"Bearer {token}"}).status_code == 404


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(url + "/v1/models/dcgan/samples",
                         headers={"Origin": origin, "Access-Control-Request-Method": "POST"})


def test_cors_is_closed_by_default_and_opened_per_origin_from_the_environment(serve):
    with serve() as server:
        assert "access-control-allow-origin" not in _preflight(server.url, "https://a.example").headers
        simple = httpx.get(server.url + "/v1/models", headers={"Origin": "https://a.example"})
        assert "access-control-allow-origin" not in simple.headers
    with serve(cors_origins="https://a.example, https://b.example") as server:
        for origin in ("https://a.example", "https://b.example"):
            assert _preflight(server.url, origin).headers["access-control-allow-origin"] == origin
        refused = _preflight(server.url, "https://evil.example")
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        answer = httpx.post(server.url + "/v1/models/dcgan/samples", json={"n": 1, "seed": 3},
                            headers={"Origin": "https://a.example"})
        assert answer.headers["access-control-allow-origin"] == "https://a.example"
        assert "x-seed" in answer.headers["access-control-expose-headers"].lower()
