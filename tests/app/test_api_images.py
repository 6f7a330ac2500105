"""Endpoints that take an image: reconstruct (JSON and multipart), complete, likelihood."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
import torch

from apptest import b64png, encode_png, grid_shape, png

pytestmark = pytest.mark.anyio


def shirt() -> np.ndarray:
    """A 28x28 gray garment-like blob, bright on black like the training data."""
    y, x = np.mgrid[:28, :28]
    return np.where((abs(x - 14) < 7 + (y < 9) * 5) & (y > 3) & (y < 25), 200, 0).astype(np.uint8)


SHIRT = encode_png(shirt())
AUTOREGRESSIVE = ["pixelcnn", "pixelrnn"]


async def test_reconstruct_shows_input_beside_reconstruction(client):
    response = await client.post("/v1/models/vae/reconstruct?format=json", json={"image": SHIRT})
    assert response.status_code == 200, response.text
    first, second = (b64png(image) for image in response.json()["images"])
    assert np.array_equal(first, shirt())  # the input as the model saw it
    assert second.shape == (28, 28)
    grid = await client.post("/v1/models/vae/reconstruct", json={"image": SHIRT})
    assert png(grid.content).shape == grid_shape(2, 2, 28, 28)


async def test_reconstruct_takes_a_multipart_upload(client):
    files = {"image": ("shirt.png", base64.b64decode(SHIRT), "image/png")}
    upload = await client.post("/v1/models/vae/reconstruct", files=files)
    as_json = await client.post("/v1/models/vae/reconstruct", json={"image": SHIRT})
    assert upload.status_code == 200, upload.text
    assert upload.content == as_json.content
    wrong_field = await client.post("/v1/models/vae/reconstruct", files={"file": files["image"]})
    assert wrong_field.status_code == 422 and "image" in wrong_field.text


async def test_reconstruct_needs_a_latent_space(client):
    for name in AUTOREGRESSIVE:
        response = await client.post(f"/v1/models/{name}/reconstruct", json={"image": SHIRT})
        assert response.status_code == 400
        assert "capabilities" in response.json()["detail"] and "sample" in response.json()["detail"]


async def test_image_latent_is_the_encoder_mean(client):
    z = (await client.post("/v1/models/vae/latents", json={"latent": {"image": SHIRT}})).json()["vector"]
    reconstruction = (await client.post("/v1/models/vae/reconstruct?format=json", json={"image": SHIRT})).json()
    assert np.allclose(z, reconstruction["latents"][0], atol=1e-5)
    dcgan = await client.post("/v1/models/dcgan/latents", json={"latent": {"image": SHIRT}})
    assert dcgan.status_code == 200, "the DCGAN projects the image instead (tests/app/test_api_explore.py)"


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
async def test_complete_keeps_the_top_rows(client, name):
    n, keep = 2, 12
    body = {"image": SHIRT, "keep_rows": keep, "n": n, "seed": 3, "temperature": 1.0}
    response = await client.post(f"/v1/models/{name}/complete?format=json", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "3"
    occluded, *completions = (b64png(image) for image in response.json()["images"])
    assert len(completions) == n
    assert np.array_equal(occluded[:keep], shirt()[:keep]) and not occluded[keep:].any()
    for completion in completions:
        assert np.array_equal(completion[:keep], shirt()[:keep])
    grid = await client.post(f"/v1/models/{name}/complete", json=body)
    assert png(grid.content).shape == grid_shape(n + 1, n + 1, 28, 28)
    again = await client.post(f"/v1/models/{name}/complete", json=body)
    assert again.content == grid.content


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
@pytest.mark.parametrize("class_", [None, "Trouser"])
async def test_a_completion_is_the_models_completion_of_its_seed(client, name, class_):
    """Without a class the kept rows choose it (the model's class posterior); with one, it is used."""
    body = {"image": SHIRT, "keep_rows": 14, "n": 2, "seed": 8} | ({"class": class_} if class_ else {})
    response = await client.post(f"/v1/models/{name}/complete?format=json", json=body)
    assert response.status_code == 200, response.text
    served = client.app.state.registry.get(name)
    x = torch.from_numpy(shirt()).float()[None, None] / 255
    known = torch.zeros_like(x, dtype=torch.bool)
    known[:, :, :14] = True
    cond = None if class_ is None else torch.tensor([served.classes.index(class_)])
    for i, image in enumerate(response.json()["images"][1:]):
        expected = served.module.complete(x, known, generator=torch.Generator().manual_seed(8 + i), cond=cond)
        assert np.array_equal(b64png(image), (expected[0, 0] * 255).round().byte().numpy())


async def test_complete_is_for_autoregressive_models_and_checks_keep_rows(client):
    assert (await client.post("/v1/models/vae/complete", json={"image": SHIRT})).status_code == 400
    too_many = await client.post("/v1/models/pixelcnn/complete", json={"image": SHIRT, "keep_rows": 29, "n": 1})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["body", "keep_rows"]


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
async def test_autoregressive_likelihood_is_exact_and_deterministic(client, name):
    first = await client.post(f"/v1/models/{name}/likelihood", json={"image": SHIRT})
    second = await client.post(f"/v1/models/{name}/likelihood", json={"image": SHIRT})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body == second.json()
    assert body["exact"] is True and body["model"] == name
    assert body["nll_nats"] > 0
    assert math.isclose(body["bits_per_dim"], body["nll_nats"] / (784 * math.log(2)), rel_tol=1e-5)
    # the marginal over classes is at least the likelihood given any one class (p(x) >= p(x|y)/K)
    given = await client.post(f"/v1/models/{name}/likelihood", json={"image": SHIRT, "class": "Shirt"})
    assert given.status_code == 200
    assert body["nll_nats"] <= given.json()["nll_nats"] + math.log(10) + 1e-3


async def test_vae_likelihood_is_a_deterministic_bound(client):
    first = (await client.post("/v1/models/vae/likelihood", json={"image": SHIRT})).json()
    second = (await client.post("/v1/models/vae/likelihood", json={"image": SHIRT})).json()
    assert first == second
    assert first["exact"] is False and "bound" in first["method"].lower()
    assert math.isclose(first["bits_per_dim"], first["nll_nats"] / (784 * math.log(2)), rel_tol=1e-5)
    assert (await client.post("/v1/models/dcgan/likelihood", json={"image": SHIRT})).status_code == 400
    with_class = await client.post("/v1/models/vae/likelihood", json={"image": SHIRT, "class": "Shirt"})
    assert with_class.status_code == 400 and "without a class" in with_class.json()["detail"]
