"""Input rules: every bad request gets a clear 4xx (422, 400, 404, 413), never a 500."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from apptest import encode_png
from bench.hostile import animated, bomb, gif

pytestmark = pytest.mark.anyio

NOISE = base64.b64decode(encode_png(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)))


def raw(body: str) -> dict:
    """Keyword arguments that send `body` verbatim as JSON (NaN and Infinity included)."""
    return {"content": body.encode(), "headers": {"content-type": "application/json"}}


def assert_422(response, loc_part=None):
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail and all("msg" in error and "loc" in error for error in detail)
    if loc_part is not None:
        assert any(loc_part in error["loc"] for error in detail), detail


@pytest.mark.parametrize("name, body, loc", [
    ("dcgan", {"n": 0}, "n"),
    ("dcgan", {"n": 65}, "n"),
    ("pixelcnn", {"n": 17}, "n"),
    ("dcgan", {"n": 10**30}, "n"),
    ("dcgan", {"temperature": 0}, "temperature"),
    ("dcgan", {"temperature": 2.5}, "temperature"),
    ("dcgan", {"temperature": -1}, "temperature"),
    ("dcgan", {"seed": -1}, "seed"),
    ("dcgan", {"seed": 2**64}, "seed"),
    ("dcgan", {"nrow": 0}, "nrow"),
    ("dcgan", {"n": "many"}, "n"),
    ("dcgan", {"bogus": 1}, "bogus"),
])
async def test_samples_schema_errors(client, name, body, loc):
    assert_422(await client.post(f"/v1/models/{name}/samples", json=body), loc)


@pytest.mark.parametrize("text", ['{"n": 2, "temperature": NaN}', '{"n": 2, "temperature": Infinity}',
                                  '{"n": 2, "temperature": -Infinity}', '{"n": 2, "temperature": 1e999}'])
async def test_non_finite_numbers_are_422_not_500(client, text):
    assert_422(await client.post("/v1/models/dcgan/samples", **raw(text)), "temperature")


async def test_non_finite_vector_entries_are_422(client):
    body = '{"latent": {"vector": [NaN, Infinity, -Infinity' + ", 0.0" * 97 + "]}}"
    response = await client.post("/v1/models/dcgan/latents", **raw(body))
    assert_422(response, "vector")
    [error] = response.json()["detail"]  # one error for the list, naming its first bad entry
    assert error["msg"].startswith("entry 0 is not a finite number")


async def test_query_parameters_are_checked_too(client):
    assert_422(await client.get("/v1/models/dcgan/samples.png", params={"temperature": "nan"}), "temperature")
    assert_422(await client.get("/v1/models/dcgan/samples.png", params={"n": 100}), "n")
    assert_422(await client.post("/v1/models/dcgan/samples?format=gif", json={}), "format")


@pytest.mark.parametrize("latent, message", [
    ({}, "none"),
    ({"seed": 1, "seeds": [2]}, "seed, seeds"),
    ({"seed": 1, "class": "Bag", "vector": [0.0]}, "seed, vector, class"),
    ({"seed": None}, "none"),
    ({"sed": 1}, None),
])
async def test_latent_is_exactly_one_kind(client, latent, message):
    response = await client.post("/v1/models/dcgan/latents", json={"latent": latent})
    assert_422(response, "latent")
    if message:
        assert any(message in error["msg"] for error in response.json()["detail"])


async def test_vector_of_the_wrong_length(client, models):
    dim = models["dcgan"]["latent_dim"]
    response = await client.post("/v1/models/dcgan/latents", json={"latent": {"vector": [0.0] * (dim - 1)}})
    assert_422(response, "vector")
    assert str(dim) in response.json()["detail"][0]["msg"]


async def test_steps_terms_and_seeds_limits(client):
    path = {"start": {"seed": 1}, "end": {"seed": 2}}
    assert_422(await client.post("/v1/models/dcgan/interpolate", json={**path, "steps": 1}), "steps")
    assert_422(await client.post("/v1/models/dcgan/interpolate", json={**path, "steps": 33}), "steps")
    assert_422(await client.post("/v1/models/dcgan/interpolate", json={**path, "method": "cubic"}), "method")
    terms = [{"latent": {"seed": i}} for i in range(17)]
    assert_422(await client.post("/v1/models/dcgan/arithmetic", json={"terms": terms}), "terms")
    assert_422(await client.post("/v1/models/dcgan/arithmetic", json={"terms": []}), "terms")
    assert_422(await client.post("/v1/models/dcgan/latents", json={"latent": {"seeds": list(range(17))}}), "seeds")


async def test_unknown_class_names_the_classes(client, models):
    for name, path, body in [("pixelcnn", "samples", {"n": 1, "class": "Hat"}),
                             ("dcgan", "latents", {"latent": {"class": "Hat"}}),
                             ("vae", "samples", {"n": 1, "class": "Hat"})]:
        response = await client.post(f"/v1/models/{name}/{path}", json=body)
        if not models[name]["conditional"]:
            assert response.status_code == 400
            continue
        assert_422(response, "class")
        assert "Sneaker" in response.json()["detail"][0]["msg"]


async def test_missing_capability_is_400_naming_the_capabilities(client):
    response = await client.post("/v1/models/pixelcnn/interpolate", json={"start": {"seed": 1}, "end": {"seed": 2}})
    assert response.status_code == 400
    assert all(c in response.json()["detail"] for c in ("sample", "complete", "likelihood"))
    assert (await client.post("/v1/models/pixelcnn/latents", json={"latent": {"seed": 1}})).status_code == 400


@pytest.mark.parametrize("payload", [
    pytest.param(NOISE[: len(NOISE) // 2], id="truncated"),
    pytest.param(bomb(), id="decompression-bomb"),
    pytest.param(animated(), id="animated"),
    pytest.param(gif(), id="gif"),
    pytest.param(b"hello, not an image", id="not-an-image"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * (1 << 20), id="over-1MiB"),
])
async def test_hostile_uploads_are_422_and_the_server_stays_healthy(client, payload):
    body = {"image": base64.b64encode(payload).decode()}
    for name, path in [("vae", "reconstruct"), ("pixelcnn", "likelihood")]:
        assert_422(await client.post(f"/v1/models/{name}/{path}", json=body), "image")
    assert (await client.get("/readyz")).status_code == 200


async def test_bad_base64_is_422(client):
    for text in ("not base64!!", "abc", "data:image/png;base64,@@@@"):
        assert_422(await client.post("/v1/models/vae/reconstruct", json={"image": text}), "image")


async def test_bodies_over_the_limit_are_413(client):
    big = json.dumps({"image": "A" * (3 << 20)})
    assert (await client.post("/v1/models/vae/reconstruct", **raw(big))).status_code == 413

    async def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(30):
            yield b" " * 100_000

    for path in ("samples", "reconstruct"):
        response = await client.post(f"/v1/models/vae/{path}", content=chunks(),
                                     headers={"content-type": "application/json"})
        assert response.status_code == 413


async def test_malformed_json_is_4xx(client):
    assert_422(await client.post("/v1/models/dcgan/samples", **raw('{"n": ')))
    deep = await client.post("/v1/models/dcgan/samples", **raw("[" * 100_000 + "]" * 100_000))
    assert 400 <= deep.status_code < 500
    assert_422(await client.post("/v1/models/vae/reconstruct", **raw("{")))
    assert_422(await client.post("/v1/models/vae/reconstruct", **raw('{"image": 5}')), "image")
