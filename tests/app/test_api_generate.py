"""Samples, interpolation, latent arithmetic and latents: shapes, seeds, determinism, classes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from apptest import b64png, grid_cells, grid_shape, max_diff, png
from models.families.diffusion import MAX_STEPS

pytestmark = pytest.mark.anyio

LATENT_MODELS = ["vae", "dcgan"]
AUTOREGRESSIVE = ["pixelcnn", "pixelrnn"]
ALL_MODELS = AUTOREGRESSIVE + LATENT_MODELS


def small_n(name: str, n: int) -> int:
    return min(n, 3) if name in AUTOREGRESSIVE else n  # they sample pixel by pixel: keep it small


GRIDS = [(name, n, nrow) for name in LATENT_MODELS for n, nrow in [(1, None), (5, None), (6, 3), (4, 10)]]


@pytest.mark.parametrize("name, n, nrow", GRIDS + [(name, 5, None) for name in AUTOREGRESSIVE])  # slow: one grid
async def test_samples_grid_has_n_cells(client, name, n, nrow):
    response = await client.post(f"/v1/models/{name}/samples", json={"n": n, "seed": 4, "nrow": nrow})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "4"
    assert png(response.content).shape == grid_shape(n, nrow, 28, 28)


@pytest.mark.parametrize("name", ALL_MODELS)
async def test_same_request_gives_the_same_bytes(client, name):
    body = {"n": small_n(name, 9), "seed": 123, "temperature": 0.9}
    first, second = [await client.post(f"/v1/models/{name}/samples", json=body) for _ in range(2)]
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    other = await client.post(f"/v1/models/{name}/samples", json={**body, "seed": 124})
    assert other.content != first.content


@pytest.mark.parametrize("name", ALL_MODELS)
async def test_image_i_is_the_image_of_seed_plus_i(client, name):
    n = small_n(name, 4)
    grid = await client.post(f"/v1/models/{name}/samples?format=json", json={"n": n, "seed": 40})
    singles = await asyncio.gather(*(client.post(f"/v1/models/{name}/samples?format=json",
                                                 json={"n": 1, "seed": 40 + i}) for i in range(n)))
    images = grid.json()["images"]
    assert len(images) == n and grid.json()["seed"] == 40
    for i, single in enumerate(singles):
        assert max_diff(b64png(images[i]), b64png(single.json()["images"][0])) <= 1
        if name not in AUTOREGRESSIVE:
            assert grid.json()["latents"][i] == single.json()["latents"][0]
    if name not in AUTOREGRESSIVE:  # and the latent of seed s + i is what /latents gives for {"seed": s + i}
        vector = (await client.post(f"/v1/models/{name}/latents", json={"latent": {"seed": 42}})).json()["vector"]
        assert np.allclose(vector, grid.json()["latents"][2], atol=1e-6)


async def test_random_seed_is_reported_and_reproduces(client):
    response = await client.post("/v1/models/dcgan/samples", json={"n": 4})
    seed = int(response.headers["x-seed"])
    assert 0 <= seed < 2**31
    again = await client.post("/v1/models/dcgan/samples", json={"n": 4, "seed": seed})
    assert again.content == response.content


@pytest.mark.parametrize("name", LATENT_MODELS)
async def test_temperature_scales_the_prior_draw_about_its_centre(client, name):
    """z(T) = c + T * (z(1) - c) for each seed: c = 0 under N(0, I) (z = T * eps), a mixture
    prior's component mean for the VAE; a class-conditional DCGAN's class code stays as it is."""
    async def latents(temperature):
        response = await client.post(f"/v1/models/{name}/samples?format=json",
                                     json={"n": 2, "seed": 8, "temperature": temperature})
        return np.array(response.json()["latents"])
    hot, warm, cold = [await latents(t) for t in (2.0, 1.0, 0.5)]
    assert np.allclose(hot - warm, 2 * (warm - cold), atol=1e-4)
    if name == "dcgan":
        kept = np.isclose(hot, cold, atol=1e-6).all(0)  # the class code's numbers, last in z
        noise_dim = int(kept.argmax()) if kept.any() else hot.shape[1]
        assert not kept[:noise_dim].any() and kept[noise_dim:].all() and noise_dim >= 64
        assert np.allclose(hot[:, :noise_dim], 4 * cold[:, :noise_dim], atol=1e-5)


async def test_json_format_has_one_png_per_image(client, models):
    body = (await client.post("/v1/models/vae/samples?format=json", json={"n": 3, "seed": 2})).json()
    assert set(body) == {"images", "seed", "latents"}
    assert [b64png(image).shape for image in body["images"]] == [(28, 28)] * 3
    assert np.array(body["latents"]).shape == (3, models["vae"]["latent_dim"])
    pixels = (await client.post("/v1/models/pixelcnn/samples?format=json", json={"n": 1, "seed": 2})).json()
    assert set(pixels) == {"images", "seed"}  # no latents for PixelCNN


@pytest.mark.parametrize("name", ALL_MODELS)
async def test_get_samples_png_matches_post(client, name):
    query = {"n": small_n(name, 4), "seed": 9, "temperature": 0.8, "nrow": 2, "cache": "bust"}
    got = await client.get(f"/v1/models/{name}/samples.png", params=query)
    posted = await client.post(f"/v1/models/{name}/samples",
                               json={k: v for k, v in query.items() if k != "cache"})
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert got.content == posted.content


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
async def test_autoregressive_class_conditions_the_samples(client, models, name):
    if not models[name]["conditional"]:
        response = await client.post(f"/v1/models/{name}/samples", json={"n": 1, "class": "Bag"})
        assert response.status_code == 400
        return
    bag = await client.post(f"/v1/models/{name}/samples", json={"n": 2, "seed": 5, "class": "Bag"})
    trouser = await client.post(f"/v1/models/{name}/samples", json={"n": 2, "seed": 5, "class": "Trouser"})
    assert bag.status_code == trouser.status_code == 200
    assert bag.content != trouser.content


@pytest.mark.parametrize("name", LATENT_MODELS)
async def test_class_samples_spread_around_the_class_mean(client, models, name):
    response = await client.post(f"/v1/models/{name}/samples?format=json",
                                 json={"n": 8, "seed": 1, "class": "Sneaker", "temperature": 1.0})
    if not models[name]["conditional"]:
        assert response.status_code == 400 and "class latents" in response.json()["detail"]
        return
    assert response.status_code == 200
    mean = (await client.post(f"/v1/models/{name}/latents", json={"latent": {"class": "Sneaker"}})).json()["vector"]
    z = np.array(response.json()["latents"])
    assert not np.allclose(z[0], mean)
    cold = await client.post(f"/v1/models/{name}/samples?format=json",
                             json={"n": 8, "seed": 1, "class": "Sneaker", "temperature": 0.01})
    assert np.allclose(np.array(cold.json()["latents"]), mean, atol=0.05)


@pytest.mark.parametrize("name", LATENT_MODELS)
@pytest.mark.parametrize("method", ["slerp", "lerp"])
async def test_interpolation_is_one_row_from_start_to_end(client, name, method):
    steps = 6
    response = await client.post(f"/v1/models/{name}/interpolate?format=json",
                                 json={"start": {"seed": 1}, "end": {"seeds": [2, 3]}, "steps": steps,
                                       "method": method})
    assert response.status_code == 200, response.text
    latents = np.array(response.json()["latents"])
    start = (await client.post(f"/v1/models/{name}/latents", json={"latent": {"seed": 1}})).json()["vector"]
    end = (await client.post(f"/v1/models/{name}/latents", json={"latent": {"seeds": [2, 3]}})).json()["vector"]
    assert latents.shape[0] == steps
    assert np.allclose(latents[0], start, atol=1e-4) and np.allclose(latents[-1], end, atol=1e-4)
    grid = await client.post(f"/v1/models/{name}/interpolate",
                             json={"start": {"seed": 1}, "end": {"seeds": [2, 3]}, "steps": steps, "method": method})
    assert png(grid.content).shape == grid_shape(steps, steps, 28, 28)  # one row
    first_sample = await client.post(f"/v1/models/{name}/samples", json={"n": 1, "seed": 1})
    assert max_diff(grid_cells(png(grid.content), steps, steps, 28, 28)[0], png(first_sample.content)[2:30, 2:30]) <= 1


async def test_slerp_and_lerp_differ_in_between(client):
    body = {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 5}
    slerp = (await client.post("/v1/models/dcgan/interpolate?format=json", json={**body, "method": "slerp"})).json()
    lerp = (await client.post("/v1/models/dcgan/interpolate?format=json", json={**body, "method": "lerp"})).json()
    middle_norms = [np.linalg.norm(result["latents"][2]) for result in (slerp, lerp)]
    assert middle_norms[0] > middle_norms[1]  # lerp cuts the corner: a smaller norm halfway


@pytest.mark.parametrize("name", LATENT_MODELS)
async def test_arithmetic_shows_operands_then_result_and_variations(client, name):
    terms = [{"latent": {"seeds": [1, 2, 3]}, "weight": 1.0}, {"latent": {"seeds": [4, 5, 6]}, "weight": -1.0},
             {"latent": {"seed": 7}, "weight": 1.0}]
    body = {"terms": terms, "n": 4, "noise": 0.2, "seed": 11, "show_terms": True}
    response = await client.post(f"/v1/models/{name}/arithmetic?format=json", json=body)
    assert response.status_code == 200, response.text
    latents = np.array(response.json()["latents"])
    assert len(response.json()["images"]) == len(latents) == 3 + 4
    assert np.allclose(latents[3], latents[0] - latents[1] + latents[2], atol=1e-5)
    assert all(0 < np.linalg.norm(latents[3 + k] - latents[3]) for k in range(1, 4))
    grid = await client.post(f"/v1/models/{name}/arithmetic", json=body)
    assert png(grid.content).shape == grid_shape(7, 4, 28, 28)
    assert grid.headers["x-seed"] == "11"
    alone = await client.post(f"/v1/models/{name}/arithmetic", json={**body, "show_terms": False, "n": 1})
    assert png(alone.content).shape == grid_shape(1, None, 28, 28)


async def test_latents_of_each_kind(client, models):
    dim = models["dcgan"]["latent_dim"]
    seeds = [(await client.post("/v1/models/dcgan/latents", json={"latent": {"seed": s}})).json()["vector"]
             for s in (1, 2, 3)]
    mean = (await client.post("/v1/models/dcgan/latents", json={"latent": {"seeds": [1, 2, 3]}})).json()["vector"]
    assert len(mean) == dim and np.allclose(mean, np.mean(seeds, axis=0), atol=1e-6)
    vector = [0.25] * dim
    assert (await client.post("/v1/models/dcgan/latents", json={"latent": {"vector": vector}})).json() == \
        {"vector": vector}


async def test_a_diffusion_request_chooses_its_steps_within_the_cap(client):
    """`steps` changes how many DDIM steps denoise the same noise; past the cap it is a 422, and
    a model whose sampler takes no steps refuses it (400)."""
    default_steps, most = (await client.get("/v1/models/diffusion")).json()["sampling_steps"]
    assert most == MAX_STEPS and 4 < default_steps < most
    few = await client.post("/v1/models/diffusion/samples?format=json", json={"n": 2, "seed": 5, "steps": 4})
    plain = await client.post("/v1/models/diffusion/samples?format=json", json={"n": 2, "seed": 5})
    assert few.status_code == plain.status_code == 200
    assert few.json()["latents"] == plain.json()["latents"]  # the same noise, fewer steps
    assert few.json()["images"] != plain.json()["images"]
    too_many = await client.post("/v1/models/diffusion/samples", json={"n": 1, "steps": MAX_STEPS + 1})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "steps"]
    not_stepped = await client.post("/v1/models/dcgan/samples", json={"n": 1, "steps": 4})
    assert not_stepped.status_code == 400 and "takes no sampling steps" in not_stepped.json()["detail"]

