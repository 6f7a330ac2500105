"""The Open Inference Protocol (KServe v2) health and metadata routes, in process."""

from __future__ import annotations

import shutil

import httpx
import pytest

from apptest import serving
from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.anyio


async def test_server_health_and_metadata(client):
    live = await client.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = await client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    server = (await client.get("/v2")).json()
    assert server["name"] == "genserve" and server["version"] and server["extensions"] == []


@pytest.mark.parametrize("name", ["pixelcnn", "vae", "dcgan"])
async def test_model_ready_and_metadata(client, models, name):
    ready = await client.get(f"/v2/models/{name}/ready")
    assert ready.status_code == 200 and ready.json() == {"name": name, "ready": True}

    response = await client.get(f"/v2/models/{name}")
    assert response.status_code == 200
    metadata = response.json()
    info = models[name]
    assert set(metadata) == {"name", "versions", "platform", "inputs", "outputs"}
    assert metadata["name"] == name and metadata["platform"] == "pytorch"
    assert metadata["versions"] == [info["checkpoint"]["sha256"][:12]]
    inputs = {tensor["name"]: tensor for tensor in metadata["inputs"]}
    assert inputs["seed"] == {"name": "seed", "datatype": "INT64", "shape": [-1]}
    if info["latent_dim"] is None:
        assert "latent" not in inputs
    else:
        assert inputs["latent"]["shape"] == [-1, info["latent_dim"]] and inputs["latent"]["datatype"] == "FP32"
    assert ("class" in inputs) == info["conditional"]
    assert metadata["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, *info["image_shape"]]}]

    (version,) = metadata["versions"]
    assert (await client.get(f"/v2/models/{name}/versions/{version}")).json() == metadata
    assert (await client.get(f"/v2/models/{name}/versions/{version}/ready")).status_code == 200
    other = await client.get(f"/v2/models/{name}/versions/000000000000")
    assert other.status_code == 404 and "000000000000" in other.json()["error"]


async def test_unknown_model_is_404_with_an_error(client):
    for path in ("/v2/models/nope", "/v2/models/nope/ready"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert "nope" in response.json()["error"] and "dcgan" in response.json()["error"]


async def test_nothing_is_ready_before_the_models_load(weights_dir):
    app = create_app(Settings(weights_dir=weights_dir))  # lifespan not run: nothing loaded
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://testserver") as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        ready = await client.get("/v2/health/ready")
        assert ready.status_code == 400 and ready.json() == {"ready": False}
        model = await client.get("/v2/models/dcgan/ready")
        assert model.status_code == 400 and "not loaded" in model.json()["error"]


async def test_a_checkpoint_that_failed_to_load_is_not_ready(weights_dir, tmp_path):
    root = tmp_path / "weights"
    for name in ("dcgan", "vae"):
        shutil.copytree(weights_dir / name, root / name)
    data = bytearray((root / "dcgan" / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # the sha256 check refuses it
    (root / "dcgan" / "model.safetensors").write_bytes(bytes(data))
    async with serving(root) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200  # vae serves
        assert (await client.get("/v2/models/vae/ready")).status_code == 200
        for path in ("/v2/models/dcgan/ready", "/v2/models/dcgan"):
            response = await client.get(path)
            assert response.status_code == 400 and "not loaded" in response.json()["error"], path
        assert (await client.get("/v2/models/pixelcnn/ready")).status_code == 404


async def test_the_v2_routes_are_in_the_openapi_document(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready"):
        assert "get" in paths[path], path
