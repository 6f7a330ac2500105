"""Under load and in the corners of HTTP (issue 28): models take turns on the worker, saturation is
reported, requests past the cap get the service's JSON 503, HEAD answers every GET route, and
admin reloads coalesce. Each test makes its own load with the worker `held`, not with this
machine's speed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.main import PROBES
from apptest import DEADLINE_S, held, metric, serving, until_async

pytestmark = pytest.mark.anyio


def _queued(client, count: int):
    """A condition for `until_async`: `count` jobs wait in the worker's queue."""
    async def condition() -> bool:
        return metric((await client.get("/metrics")).text, "genserve_queue_depth") == count
    return condition


async def test_a_fast_model_waits_one_slow_pass_not_the_slow_queue(weights_dir):
    """Four PixelCNN requests that cannot merge (distinct temperatures) queued before one DCGAN
    request: the DCGAN's pass runs second, not fifth."""
    async with serving(weights_dir) as client:
        worker = client.app.state.worker
        passes: list[str] = []
        run_pass = worker._run

        def noted(batch) -> None:  # the order the worker runs its passes in
            passes.append(batch[0].model.name)
            run_pass(batch)
        async with held(client):
            worker._run = noted  # the held pass has begun: it is not noted
            requests = [client.post("/v1/models/pixelcnn/samples", json={"n": 1, "temperature": 0.5 + i / 10})
                        for i in range(4)] + [client.post("/v1/models/dcgan/samples", json={"n": 1})]
            tasks = []
            for request in requests:  # queued one after another, in this order
                tasks.append(asyncio.ensure_future(request))
                await until_async(_queued(client, len(tasks)), f"job {len(tasks)} to queue")
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * 5
        assert passes == ["pixelcnn", "dcgan", "pixelcnn", "pixelcnn", "pixelcnn"]


async def test_readyz_names_a_model_whose_queue_waits_past_the_bound(weights_dir):
    async with serving(weights_dir, saturation_wait_s=0.001) as client:
        assert (await client.get("/readyz")).json()["saturated"] == {}
        async with held(client):
            request = asyncio.ensure_future(client.post("/v1/models/vae/samples", json={"n": 1}))

            async def reported() -> bool:
                return "vae" in (await client.get("/readyz")).json()["saturated"]
            await until_async(reported, "/readyz to report the waiting model")
            readyz = await client.get("/readyz")
            assert readyz.status_code == 200 and list(readyz.json()["saturated"]) == ["vae"]
            text = (await client.get("/metrics")).text
            assert metric(text, "genserve_queue_oldest_wait_seconds", model="vae") > 0
        assert (await request).status_code == 200
        assert (await client.get("/readyz")).json()["saturated"] == {}


async def test_requests_past_the_cap_get_json_503_and_probes_still_pass(weights_dir):
    async with serving(weights_dir, max_connections=2) as client:
        async with held(client):
            waiting = [asyncio.ensure_future(client.post("/v1/models/dcgan/samples", json={"n": 1, "seed": s}))
                    for s in range(2)]
            await until_async(_queued(client, 2), "two requests in flight")
            refused = await client.get("/v1/models")
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            assert "max_connections" in refused.json()["detail"]
            assert refused.headers["x-content-type-options"] == "nosniff"
            for probe in PROBES:
                assert (await client.get(probe)).status_code == 200
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200]
        assert (await client.get("/v1/models")).status_code == 200


async def test_head_answers_every_get_route_as_get_without_the_body(weights_dir):
    async with serving(weights_dir) as client:
        declared = (await client.get("/openapi.json")).json()["paths"]
        paths = ["/", "/docs", "/openapi.json"] + [path.replace("{name}", "vae2d") for path, operations
                                                   in declared.items() if "get" in operations]
        assert len(paths) >= 14
        for path in paths:
            if path.endswith("samples.png"):
                path += "?seed=1"  # the same image twice
            get, head = await client.get(path), await client.head(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path != "/metrics":  # its body changes from one scrape to the next
                assert head.headers["content-length"] == str(len(get.content)), path
        assert (await client.head("/v1/models/dcgan/samples")).status_code == 405  # POST only, as for GET


async def test_concurrent_admin_reloads_queue_one_load_behind_the_one_running(weights_dir):
    """A reload runs a load; the 15 asked for while it runs share one more (which reads the folders
    afresh: tests/app/test_reload.py), not 15."""
    auth = {"Authorization": "Bearer s3cret"}
    async with serving(weights_dir, admin_token="s3cret") as client:
        registry = client.app.state.registry
        loads, release = 0, threading.Event()
        original = registry._load

        def slow_load() -> None:  # the first reload holds until every request has arrived
            nonlocal loads
            loads += 1
            assert release.wait(DEADLINE_S), "the reload was never released"
            original()
        registry._load = slow_load
        reloads = [asyncio.ensure_future(client.post("/v1/admin/reload", headers=auth))]

        async def running() -> bool:
            return loads == 1
        await until_async(running, "the first reload's load to run")
        reloads += [asyncio.ensure_future(client.post("/v1/admin/reload", headers=auth)) for _ in range(15)]

        async def all_arrived() -> bool:
            return metric((await client.get("/metrics")).text, "genserve_requests_in_progress") >= 17
        await until_async(all_arrived, "the 16 reloads to arrive")
        release.set()
        responses = await asyncio.gather(*reloads)
        assert [r.status_code for r in responses] == [200] * 16
        assert all(r.json()["ready"] for r in responses)
        assert loads == 2
        assert (await client.post("/v1/admin/reload", headers=auth)).status_code == 200  # and the next one runs
        assert loads == 3
