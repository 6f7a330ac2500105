"""The worker: batching that changes nothing, back-pressure (503), timeouts (504), abandoned jobs,
and loading: /readyz before start-up, failed checkpoints, skipped families, absent class latents."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import threading

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from app.config import Settings
from app.metrics import Metrics
from app.worker import Worker
from apptest import b64png, encode_png, held, max_diff, metric, serving, serving_with, until_async
from models.checkpoint import build_model, load_checkpoint, read_card, save_checkpoint, write_card

pytestmark = pytest.mark.anyio


async def _metrics(client) -> str:
    return (await client.get("/metrics")).text


async def _queued(client, *requests) -> list[asyncio.Task]:
    """Start `requests` (coroutines) while the worker is `held`, and return once every one has been
    queued or answered: they then meet in the queue whatever this machine's speed (no race with
    the batch window)."""
    tasks = [asyncio.ensure_future(request) for request in requests]

    async def all_in() -> bool:
        return metric(await _metrics(client), "genserve_queue_depth") + sum(t.done() for t in tasks) == len(tasks)
    await until_async(all_in, f"{len(tasks)} requests to queue")
    return tasks


@pytest.mark.parametrize("name, n", [("dcgan", 3), ("vae", 3), ("pixelcnn", 1)])
async def test_merged_requests_match_requests_run_alone(weights_dir, name, n):
    seeds = [10, 20, 30]
    async with serving(weights_dir) as client:  # requests sent one by one run alone
        alone = [(await client.post(f"/v1/models/{name}/samples?format=json", json={"n": n, "seed": s})).json()
                 for s in seeds]
        assert metric(await _metrics(client), "genserve_batch_requests_count") == len(seeds)
    async with serving(weights_dir) as client:
        async with held(client):  # they all wait in the queue, then merge
            tasks = await _queued(client, *(client.post(f"/v1/models/{name}/samples?format=json",
                                                        json={"n": n, "seed": s}) for s in seeds))
        merged = await asyncio.gather(*tasks)
        text = await _metrics(client)
        assert metric(text, "genserve_batch_requests_count", model=name) == 1  # one pass for all
        assert metric(text, "genserve_batch_images_sum", model=name) == n * len(seeds)
    for single, batched in zip(alone, merged):
        assert batched.json()["seed"] == single["seed"]
        for a, b in zip(single["images"], batched.json()["images"]):
            assert max_diff(b64png(a), b64png(b)) <= 1


class CountingCondition(threading.Condition):
    """The worker's condition, counting the waits with a timeout: the batch window's, its only ones."""

    def __init__(self) -> None:
        super().__init__()
        self.window_waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.window_waits += timeout is not None
        return super().wait(timeout)


class WindowCountingWorker(Worker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._changed = CountingCondition()


async def test_a_lone_request_never_waits_for_the_batch_window(weights_dir):
    # Counted, not timed: a wait on the window, however short, is the fault (issue 37: no wall-clock proof).
    # Nothing else is in the server.
    async with serving_with(weights_dir, WindowCountingWorker, batch_wait_ms=30_000) as client:
        for seed in range(3):
            assert (await client.post("/v1/models/dcgan/samples", json={"n": 1, "seed": seed})).status_code == 200
        assert metric(await _metrics(client), "genserve_batch_requests_count") == 3
        assert client.app.state.worker._changed.window_waits == 0


async def test_the_window_waits_while_another_request_is_on_its_way(weights_dir):
    async with serving_with(weights_dir, WindowCountingWorker, batch_wait_ms=30_000) as client:
        metrics = client.app.state.metrics
        metrics.in_progress += 1  # a request the server is reading, not yet queued
        [first] = await _queued(client, client.post("/v1/models/dcgan/samples", json={"n": 1, "seed": 1}))
        metrics.in_progress -= 1  # ... which now arrives: its job wakes the worker, and both run at once
        second = await client.post("/v1/models/dcgan/samples", json={"n": 1, "seed": 2})
        assert second.status_code == 200 and (await first).status_code == 200
        text = await _metrics(client)
        assert metric(text, "genserve_batch_requests_count") == 1
        assert metric(text, "genserve_batch_images_sum") == 2
        assert client.app.state.worker._changed.window_waits >= 1  # merged by the window, not by chance


async def test_a_worker_thread_that_dies_takes_healthz_down_and_refuses_what_waits(weights_dir, capsys):
    """Issue 37: GENSERVE_BATCH_WAIT_MS=inf made the window's wait raise OverflowError in the worker
    thread, which died unseen: every request then waited out the request timeout (504) and
    /healthz said ok, so no liveness probe restarted the process. The setting is refused now
    (tests/app/test_settings.py); a thread that dies of anything is seen."""
    async with serving(weights_dir, request_timeout_s=30) as client:
        worker, metrics = client.app.state.worker, client.app.state.metrics
        worker.batch_wait_s = float("inf")  # what the setting once put here
        metrics.in_progress += 1  # another request on its way, so the window waits: Condition.wait(inf)
        try:
            dying = await client.post("/v1/models/dcgan/samples", json={"n": 1})
        finally:
            metrics.in_progress -= 1
        assert dying.status_code == 503 and "OverflowError" in dying.json()["detail"], dying.text
        # The thread answers what waits, then ends: give it a deadline to be gone.
        await asyncio.to_thread(worker._thread.join, 30)
        assert not worker.alive, "the dead worker's thread was still running 30 s after it answered"
        health = await client.get("/healthz")
        assert health.status_code == 503 and "OverflowError" in health.json()["detail"]
        assert (await client.get("/v2/health/live")).json() == {"live": False}
        assert (await client.get("/readyz")).status_code == 503
        after = await client.post("/v1/models/vae/samples", json={"n": 1})  # refused at once, not timed out
        assert after.status_code == 503 and "failed" in after.json()["detail"]
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [death] = [entry for entry in logged if entry["logger"] == "genserve.worker"]
    assert death["level"] == "critical" and "OverflowError" in death["error"]


async def test_the_loaded_heap_is_frozen_while_serving(weights_dir):
    # Out of the collector's reach: a full collection over it stalled every request (the p99).
    async with serving(weights_dir) as client:
        assert gc.get_freeze_count() > 50_000  # torch, the models, FastAPI
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 200
    assert gc.get_freeze_count() == 0  # stopped: its cycles are collectable again


async def test_channels_last_changes_no_image_and_leaves_pixelcnn_alone(weights_dir):
    images = {}
    for channels_last in (False, True):
        async with serving(weights_dir, channels_last=channels_last) as client:
            for name in ("dcgan", "vae", "pixelcnn"):
                response = await client.post(f"/v1/models/{name}/samples?format=json", json={"n": 2, "seed": 5})
                images[name, channels_last] = response.json()["images"]
            registry = client.app.state.registry
            for name, converted in [("dcgan", channels_last), ("vae", channels_last), ("pixelcnn", False)]:
                layout = torch.channels_last if converted else torch.contiguous_format
                kernels = [p for p in registry.get(name).module.parameters() if p.dim() == 4]
                assert all(p.is_contiguous(memory_format=layout) and not p.is_inference() for p in kernels), name
    for name in ("dcgan", "vae"):
        for a, b in zip(images[name, False], images[name, True]):
            assert max_diff(b64png(a), b64png(b)) <= 1
    assert images["pixelcnn", False] == images["pixelcnn", True]


def test_half_precision_is_for_cuda_only():
    assert Worker(torch.device("cpu"), Metrics(), batch_wait_ms=0, max_batch=1, queue_size=1, timeout_s=1,
                  dtype="bfloat16").dtype == torch.float32
    assert Settings(dtype="float16").dtype == "float16"
    with pytest.raises(ValidationError):
        Settings(dtype="int8")


async def test_max_batch_caps_a_merged_pass(weights_dir):
    async with serving(weights_dir, max_batch=4) as client:
        async with held(client):
            tasks = await _queued(client, *(client.post("/v1/models/dcgan/samples", json={"n": 3, "seed": s})
                                            for s in range(4)))
        responses = await asyncio.gather(*tasks)
        assert all(r.status_code == 200 for r in responses)
        text = await _metrics(client)
        assert metric(text, "genserve_batch_images_count", model="dcgan") == 4  # 3 + 3 > 4: each ran alone
        assert metric(text, "genserve_batch_images_bucket", model="dcgan", le="4.0") == 4


async def test_full_queue_is_503_with_retry_after(weights_dir):
    async with serving(weights_dir, queue_size=1, max_batch=1, batch_wait_ms=0) as client:
        async with held(client):  # one waits in the queue, the rest are refused
            tasks = await _queued(client, *(client.post("/v1/models/dcgan/samples", json={"n": 1, "seed": s})
                                            for s in range(6)))
        responses = await asyncio.gather(*tasks)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [503] * 5, statuses
        for response in responses:
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                assert "queue" in response.json()["detail"]
        assert metric(await _metrics(client), "genserve_rejected_total", reason="queue_full") == 5
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 200


async def test_timeout_is_504_and_the_job_never_runs(weights_dir):
    # The worker is held; the request gives up after 50 ms (the held pass itself began with the default 60 s).
    async with serving(weights_dir) as client:
        async with held(client):
            client.app.state.worker.timeout_s = 0.05
            response = await client.post("/v1/models/dcgan/samples", json={"n": 2})
            assert response.status_code == 504 and "longer than" in response.json()["detail"]
            text = await _metrics(client)  # it left the queue with its request, not when its turn came
            assert metric(text, "genserve_queue_depth") == 0
            assert metric(text, "genserve_skipped_jobs_total") == 1
        client.app.state.worker.timeout_s = 60
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 200
        assert metric(await _metrics(client), "genserve_batch_images_count", model="dcgan") == 1


async def test_a_request_given_up_by_its_client_is_skipped(weights_dir):
    async with serving(weights_dir) as client:
        async with held(client):
            [request] = await _queued(client, client.post("/v1/models/vae/samples", json={"n": 2}))
            request.cancel()  # in process, the client going away cancels the request's task
            with pytest.raises(asyncio.CancelledError):
                await request
            async def withdrawn() -> bool:
                return metric(await _metrics(client), "genserve_skipped_jobs_total") >= 1
            await until_async(withdrawn, "its job to leave the queue")
        text = await _metrics(client)
        assert metric(text, "genserve_skipped_jobs_total") == 1
        assert metric(text, "genserve_batch_images_count", model="vae") == 0
        assert (await client.post("/v1/models/vae/samples", json={"n": 1})).status_code == 200


async def test_not_ready_before_start_up(weights_dir):
    import httpx

    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings(weights_dir=weights_dir))  # lifespan not run: nothing loaded
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503 and response.json()["ready"] is False
        assert (await client.get("/healthz")).status_code == 200


@pytest.fixture
def damaged_weights(weights_dir, tmp_path):
    """dcgan with a changed byte, a folder with a pickle, a classifier (skipped) and a vae whose
    card has neither class latents nor metrics."""
    root = tmp_path / "weights"
    for name in ("dcgan", "vae", "pixelcnn"):
        shutil.copytree(weights_dir / name, root / name)
    data = bytearray((root / "dcgan" / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (root / "dcgan" / "model.safetensors").write_bytes(bytes(data))
    shutil.copytree(weights_dir / "pixelcnn", root / "pickled")
    (root / "pickled" / "extra.pt").write_bytes(b"\x80\x04not really")
    classifier = build_model("classifier", {"image_shape": [1, 28, 28], "n_classes": 10})
    save_checkpoint(classifier, root / "classifier", {"name": "classifier", "classes": [str(i) for i in range(10)]})
    card = read_card(root / "vae")
    card.pop("class_latents", None)
    card.pop("metrics", None)
    write_card(root / "vae", card)
    return root


async def test_failed_checkpoints_are_reported_and_the_rest_serve(damaged_weights):
    async with serving(damaged_weights) as client:
        response = await client.get("/readyz")
        assert response.status_code == 200
        body = response.json()
        assert body["models"] == ["pixelcnn", "vae"]  # the classifier is skipped, not served
        assert set(body["failed"]) == {"dcgan", "pickled"}
        assert "sha256" in body["failed"]["dcgan"] and "pickle" in body["failed"]["pickled"]
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 404
        assert (await client.post("/v1/models/vae/samples", json={"n": 1})).status_code == 200
        info = (await client.get("/v1/models/vae")).json()
        assert info["metrics"] == {} and info["conditional"] is False
        for path, body in [("samples", {"n": 1, "class": "Bag"}), ("latents", {"latent": {"class": "Bag"}})]:
            response = await client.post(f"/v1/models/vae/{path}", json=body)
            assert response.status_code == 400 and "class latents" in response.json()["detail"]


async def test_nothing_to_serve_is_not_ready(tmp_path):
    async with serving(tmp_path / "missing") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["failed"]


async def test_admin_reload_needs_the_token(weights_dir):
    async with serving(weights_dir) as client:
        assert (await client.post("/v1/admin/reload")).status_code == 404  # admin is off without a token
    async with serving(weights_dir, admin_token="s3cret") as client:
        assert (await client.post("/v1/admin/reload")).status_code == 401
        wrong = await client.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = await client.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["ready"] is True
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 1})).status_code == 200


async def test_cors_is_closed_by_default_and_configurable(weights_dir):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    async with serving(weights_dir) as client:
        response = await client.get("/v1/models", headers={"Origin": "https://example.org"})
        assert "access-control-allow-origin" not in response.headers
    async with serving(weights_dir, cors_origins=["https://example.org"]) as client:
        response = await client.options("/v1/models/dcgan/samples", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://example.org"


async def test_an_admin_reload_serves_the_new_weights(weights_dir, tmp_path):
    from models.checkpoint import load_checkpoint
    root = tmp_path / "weights"
    shutil.copytree(weights_dir / "dcgan", root / "dcgan")
    auth = {"Authorization": "Bearer s3cret"}
    request = {"n": 2, "seed": 7}
    async with serving(root, admin_token="s3cret") as client:
        before = await client.post("/v1/models/dcgan/samples?format=json", json=request)
        old_sha = (await client.get("/v1/models/dcgan")).json()["checkpoint"]["sha256"]
        # New weights land: the same model with its last layer's bias shifted, saved as training saves.
        model, card = load_checkpoint(root / "dcgan")
        with torch.no_grad():
            last = [m for m in model.generator.modules() if getattr(m, "bias", None) is not None][-1]
            last.bias += 0.5
        new_card = save_checkpoint(model, root / "dcgan", {k: v for k, v in card.items()
                                                           if k not in ("sha256", "size_bytes", "config")})
        served = await client.post("/v1/models/dcgan/samples?format=json", json=request)
        assert served.json()["images"] == before.json()["images"]  # until the reload, the old weights serve
        reload = await client.post("/v1/admin/reload", headers=auth)
        assert reload.status_code == 200 and reload.json()["models"] == ["dcgan"]
        info = (await client.get("/v1/models/dcgan")).json()
        assert info["checkpoint"]["sha256"] == new_card["sha256"] != old_sha
        after = await client.post("/v1/models/dcgan/samples?format=json", json=request)
        assert after.json()["images"] != before.json()["images"]
        with torch.inference_mode():  # and they are the new model's images of the answer's latents
            expected = (model.decode(torch.tensor(after.json()["latents"])) * 255).round().clamp(0, 255)
        for image, pixels in zip(after.json()["images"], expected.to(torch.uint8).numpy()):
            assert max_diff(b64png(image), pixels[0]) <= 1


async def test_stopping_refuses_what_still_waits_and_lets_the_pass_under_way_finish(weights_dir):
    async with serving(weights_dir) as client:
        worker = client.app.state.worker
        async with held(client):
            tasks = await _queued(client, *(client.post("/v1/models/dcgan/samples", json={"n": 1, "seed": s})
                                            for s in range(3)))
            # stop() joins the worker thread, which the held pass keeps busy: off the event loop.
            stopping = asyncio.get_running_loop().run_in_executor(None, worker.stop)
            responses = await asyncio.gather(*tasks)  # refused while the held pass still runs
            assert not stopping.done()
        await stopping
        assert [r.status_code for r in responses] == [503] * 3
        assert all("stopping" in r.json()["detail"] for r in responses)
        late = await client.post("/v1/models/dcgan/samples", json={"n": 1})
        assert late.status_code == 503 and "stopping" in late.json()["detail"]
        assert metric(await _metrics(client), "genserve_rejected_total", reason="stopping") == 1


async def test_requests_queued_across_a_reload_are_answered_by_the_weights_they_came_for(weights_dir, tmp_path):
    body = {"n": 2, "seed": 5}
    shutil.copytree(weights_dir / "vae", tmp_path / "weights" / "vae")
    async with serving(tmp_path / "weights", admin_token="t") as client:
        before = (await client.post("/v1/models/vae/samples", json=body)).content
        async with held(client):
            tasks = await _queued(client, *(client.post("/v1/models/vae/samples", json=body) for _ in range(3)))
            # Different weights land (the decoder's last bias shifted) and are reloaded while those wait.
            model, card = load_checkpoint(tmp_path / "weights" / "vae")
            with torch.no_grad():
                [m for m in model.decoder_conv.modules() if getattr(m, "bias", None) is not None][-1].bias += 0.5
            save_checkpoint(model, tmp_path / "weights" / "vae",
                            {k: v for k, v in card.items() if k not in ("sha256", "size_bytes", "config")})
            reloaded = await client.post("/v1/admin/reload", headers={"Authorization": "Bearer t"})
            assert reloaded.status_code == 200, reloaded.text
        responses = await asyncio.gather(*tasks)
        assert [r.status_code for r in responses] == [200] * 3
        assert all(r.content == before for r in responses)  # queued before the reload: the old weights' pixels
        assert (await client.post("/v1/models/vae/samples", json=body)).content != before  # then the new ones'


async def test_unbatched_operations_answer_alone_and_among_others_alike(weights_dir):
    """The VAE's bound (one posterior draw, a fixed seed) and the DCGAN's projection run one
    request per pass: queued together, each answers what it answers alone."""
    image = {"image": encode_png((np.arange(28 * 28).reshape(28, 28) * 7 % 256).astype(np.uint8))}
    async with serving(weights_dir) as client:
        bound = (await client.post("/v1/models/vae/likelihood", json=image)).json()
        projected = (await client.post("/v1/models/dcgan/reconstruct?format=json", json=image)).json()
        async with held(client):
            tasks = await _queued(client, *(client.post("/v1/models/vae/likelihood", json=image) for _ in range(3)),
                                  *(client.post("/v1/models/dcgan/reconstruct?format=json", json=image)
                                    for _ in range(2)))
        answers = [r.json() for r in await asyncio.gather(*tasks)]
    assert answers[:3] == [bound] * 3
    assert answers[3:] == [projected] * 2
