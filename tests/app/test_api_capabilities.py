"""Every served model against every endpoint, as a client learns them: the models, their image
shapes and their capabilities come from GET /v1/models (never from the app's own helpers). Where a
model declares the capability an endpoint needs, the endpoint answers 200 with images of the
model's shape (or its JSON); where it does not, the documented 400 naming the model's capabilities."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from apptest import b64png, encode_png, grid_shape, png

pytestmark = pytest.mark.anyio

# Capabilities that say how a model does something, not what it serves: no endpoint of their own.
DESCRIPTIVE = {"encoder", "invert", "project", "encode"}
STREAM = {"accept": "text/event-stream"}


def pixels(info: dict) -> tuple[int, ...]:
    """The array shape of one of the model's images as a PNG decodes: (H, W) gray, (H, W, 3) colour."""
    channels, height, width = info["image_shape"]
    return (height, width) if channels == 1 else (height, width, 3)


def grid(info: dict, n: int, nrow: int | None) -> tuple[int, ...]:
    _, height, width = info["image_shape"]
    return grid_shape(n, nrow, height, width) + pixels(info)[2:]


def upload(info: dict) -> str:
    """A bright block on black, of the model's shape, in base64."""
    image = np.zeros(pixels(info), np.uint8)
    image[4:-4, 6:-6] = 200
    return encode_png(image)


def assert_images(body: dict, info: dict, count: int) -> None:
    assert len(body["images"]) == count
    assert all(b64png(image).shape == pixels(info) for image in body["images"])
    if "latents" in body:
        assert np.array(body["latents"]).shape == (count, info["latent_dim"])


async def check_samples(client, info):
    answer = await client.post(f"/v1/models/{info['name']}/samples", json={"n": 2, "seed": 1, "nrow": 2})
    if answer.status_code == 200:
        assert answer.headers["content-type"] == "image/png" and answer.headers["x-seed"] == "1"
        assert png(answer.content).shape == grid(info, 2, 2)
        again = await client.get(f"/v1/models/{info['name']}/samples.png", params={"n": 2, "seed": 1, "nrow": 2})
        assert again.content == answer.content
    return answer


async def check_stream(client, info):
    """A model that streams sends a progress event per row (or denoising step: as many as a row
    model has rows, or a stepped sampler its default steps), numbered in order; any other model
    one done event."""
    answer = await client.post(f"/v1/models/{info['name']}/samples", json={"n": 1, "seed": 2}, headers=STREAM)
    if answer.status_code == 200:
        assert answer.headers["content-type"].startswith("text/event-stream")
        blocks = answer.text.strip().split("\n\n")
        unit, count = ("step", info["sampling_steps"][0]) if info["sampling_steps"] else ("row", info["image_shape"][1])
        if "stream" not in info["capabilities"]:
            count = 0
        assert [block.split("\n", 1)[0] for block in blocks] == ["event: progress"] * count + ["event: done"]
        progress = [json.loads(block.split("data: ", 1)[1]) for block in blocks[:-1]]
        assert [(event[unit], event[f"{unit}s"]) for event in progress] == [(i, count) for i in range(count)]
        done = json.loads(blocks[-1].split("data: ", 1)[1])
        assert png(base64.b64decode(done["image"])).shape == grid(info, 1, None)
    return answer


async def check_interpolate(client, info):
    body = {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 3}
    answer = await client.post(f"/v1/models/{info['name']}/interpolate?format=json", json=body)
    if answer.status_code == 200:
        assert_images(answer.json(), info, 3)
    return answer


async def check_traverse(client, info):
    body = {"axes": [{"dim": 0}], "steps": 3}
    answer = await client.post(f"/v1/models/{info['name']}/traverse?format=json", json=body)
    if answer.status_code == 200:
        assert_images(answer.json(), info, 3)
    return answer


async def check_arithmetic(client, info):
    body = {"terms": [{"latent": {"seed": 1}}, {"latent": {"seed": 2}, "weight": -1}], "n": 2, "seed": 3}
    answer = await client.post(f"/v1/models/{info['name']}/arithmetic?format=json", json=body)
    if answer.status_code == 200:
        assert_images(answer.json(), info, 2 + 2)
        vector = await client.post(f"/v1/models/{info['name']}/latents", json={"latent": {"seed": 1}})
        assert np.allclose(vector.json()["vector"], answer.json()["latents"][0], atol=1e-6)
    return answer


async def check_image_latent(client, info):
    """An uploaded image as a latent: the latents endpoint is arithmetic's, the image its own capability."""
    answer = await client.post(f"/v1/models/{info['name']}/latents", json={"latent": {"image": upload(info)}})
    if answer.status_code == 200:
        assert len(answer.json()["vector"]) == info["latent_dim"]
    return answer


async def check_reconstruct(client, info):
    answer = await client.post(f"/v1/models/{info['name']}/reconstruct?format=json", json={"image": upload(info)})
    if answer.status_code == 200:
        assert_images(answer.json(), info, 2)
        assert (b64png(answer.json()["images"][0]) == b64png(upload(info))).all(), "the input as the model saw it"
    return answer


async def check_complete(client, info):
    body = {"image": upload(info), "n": 1, "seed": 4, "keep_rows": info["image_shape"][1] // 2}
    answer = await client.post(f"/v1/models/{info['name']}/complete?format=json", json=body)
    if answer.status_code == 200:
        assert_images(answer.json(), info, 1 + 1)
        assert answer.headers["x-seed"] == "4"
    return answer


async def check_likelihood(client, info):
    answer = await client.post(f"/v1/models/{info['name']}/likelihood", json={"image": upload(info)})
    if answer.status_code == 200:
        body = answer.json()
        assert body["model"] == info["name"] and body["nll_nats"] > 0 and isinstance(body["exact"], bool)
        dims = math.prod(info["image_shape"])
        assert math.isclose(body["bits_per_dim"], body["nll_nats"] / (dims * math.log(2)), rel_tol=1e-6)
    return answer


# capability -> (the capabilities its endpoint needs, the request and checks of a 200)
ENDPOINTS = {
    "sample": ({"sample"}, check_samples),
    "stream": ({"sample"}, check_stream),
    "interpolate": ({"interpolate"}, check_interpolate),
    "traverse": ({"traverse"}, check_traverse),
    "arithmetic": ({"arithmetic"}, check_arithmetic),
    "image_latent": ({"arithmetic", "image_latent"}, check_image_latent),
    "reconstruct": ({"reconstruct"}, check_reconstruct),
    "complete": ({"complete"}, check_complete),
    "likelihood": ({"likelihood"}, check_likelihood),
}


async def test_every_declared_capability_is_one_this_suite_calls(models):
    for name, info in models.items():
        assert set(info["capabilities"]) <= set(ENDPOINTS) | DESCRIPTIVE, name


@pytest.mark.parametrize("capability", ENDPOINTS)
async def test_an_endpoint_serves_the_models_that_declare_it_and_refuses_the_rest(client, models, capability):
    needs, check = ENDPOINTS[capability]
    for name, info in models.items():
        answer = await check(client, info)
        declared = set(info["capabilities"])
        if needs <= declared:
            assert answer.status_code == 200, f"{name}: {answer.text[:300]}"
        else:
            assert answer.status_code == 400, f"{name}: {answer.status_code} {answer.text[:300]}"
            detail = answer.json()["detail"]
            assert name in detail and all(c in detail for c in declared), f"{name}: {detail}"
