"""GET /v1/models, health, readiness, metrics, the OpenAPI document and the demo page."""

from __future__ import annotations

import pytest

from app.config import Settings

from apptest import metric, served_names, serving

pytestmark = pytest.mark.anyio

CAPABILITIES = {"sample", "stream", "interpolate", "traverse", "arithmetic", "encoder", "image_latent", "encode",
                "project", "reconstruct", "complete", "likelihood"}
IMAGE_ENDPOINTS = ["samples", "interpolate", "arithmetic", "reconstruct", "complete"]


async def test_models_lists_the_generators_and_the_limits(client, weights_dir):
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert {m["name"] for m in body["models"]} == set(served_names(weights_dir)) >= {"pixelcnn", "vae", "dcgan"}
    assert body["limits"] == {"max_n": 64, "max_n_sequential": 16, "max_n_pixelcnn": 16, "max_steps": 32,
                              "max_terms": 16, "max_image_bytes": 1 << 20, "max_body_bytes": 2 << 20}


@pytest.mark.parametrize("name", ["pixelcnn", "pixelrnn", "vae", "dcgan"])
async def test_model_info(client, name):
    info = (await client.get(f"/v1/models/{name}")).json()
    assert info["name"] == info["family"] == name
    assert info["image_shape"] == [1, 28, 28]
    assert info["dataset"] == "fashion-mnist"
    assert len(info["classes"]) == 10 and "Sneaker" in info["classes"]
    assert set(info["capabilities"]) <= CAPABILITIES and "sample" in info["capabilities"]
    autoregressive = name in ("pixelcnn", "pixelrnn")
    assert (info["latent_dim"] is None) == autoregressive
    assert info["max_n"] == (16 if autoregressive else 64)
    assert info["summary"]
    assert isinstance(info["metrics"], dict)
    assert len(info["checkpoint"]["sha256"]) == 64 and info["checkpoint"]["trained_at"]
    assert info["checkpoint"]["epochs"] > 0
    expected = {"pixelcnn": {"sample", "stream", "complete", "likelihood"},
                "pixelrnn": {"sample", "stream", "complete", "likelihood"},
                "vae": {"sample", "interpolate", "traverse", "arithmetic", "encoder", "image_latent", "encode",
                        "reconstruct", "likelihood"},
                "dcgan": {"sample", "interpolate", "traverse", "arithmetic", "image_latent", "encode", "project",
                          "reconstruct"}}[name]
    assert set(info["capabilities"]) == expected


async def test_unknown_model_is_404_naming_the_known_ones(client):
    for request in (client.get("/v1/models/nope"), client.post("/v1/models/nope/samples", json={"n": 1})):
        response = await request
        assert response.status_code == 404
        assert "nope" in response.json()["detail"]
        assert all(name in response.json()["detail"] for name in ("pixelcnn", "vae", "dcgan"))


async def test_health_and_readiness(client, weights_dir):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "models": served_names(weights_dir), "failed": {}, "saturated": {}}


async def test_metrics_count_requests_per_endpoint_and_model(client):
    before = (await client.get("/metrics")).text
    assert (await client.post("/v1/models/dcgan/samples", json={"n": 2, "seed": 1})).status_code == 200
    response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    labels = {"endpoint": "/v1/models/{name}/samples", "model": "dcgan"}
    assert metric(response.text, "genserve_requests_total", status="200", **labels) == \
        metric(before, "genserve_requests_total", status="200", **labels) + 1
    assert metric(response.text, "genserve_request_seconds_count", **labels) >= 1
    assert metric(response.text, "genserve_batch_images_count", model="dcgan", operation="decode") >= 1
    assert metric(response.text, "genserve_queue_seconds_count", model="dcgan", operation="decode") >= 1
    assert "genserve_queue_depth" in response.text


async def test_openapi_documents_every_endpoint_with_examples(client):
    spec = (await client.get("/openapi.json")).json()
    for endpoint in IMAGE_ENDPOINTS + ["latents", "likelihood"]:
        operation = spec["paths"][f"/v1/models/{{name}}/{endpoint}"]["post"]
        content = operation["requestBody"]["content"]["application/json"]["schema"]
        schema = spec["components"]["schemas"][content["$ref"].split("/")[-1]] if "$ref" in content else content
        assert schema.get("examples"), endpoint
        if endpoint in IMAGE_ENDPOINTS:
            assert "image/png" in operation["responses"]["200"]["content"]
    assert "multipart/form-data" in spec["paths"]["/v1/models/{name}/reconstruct"]["post"]["requestBody"]["content"]
    assert spec["components"]["schemas"]["ModelInfo"].get("examples")
    for path in ("/v1/models", "/v1/models/{name}", "/v1/models/{name}/samples.png", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"]
    assert (await client.get("/docs")).status_code == 200


async def test_demo_page_and_static_files(client):
    page = await client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (await client.get("/static/index.html")).status_code == 200
    assert (await client.get("/static/no-such-file.js")).status_code == 404


def test_the_sequential_cap_is_read_under_its_old_name_too(monkeypatch):
    monkeypatch.setenv("GENSERVE_MAX_N_PIXELCNN", "3")  # deprecated, still honoured
    assert Settings().max_n_sequential == 3 and Settings().limits()["max_n_pixelcnn"] == 3
    monkeypatch.setenv("GENSERVE_MAX_N_SEQUENTIAL", "5")  # the new name wins
    assert Settings().max_n_sequential == 5


async def test_limits_are_settings(weights_dir):
    async with serving(weights_dir, max_n=8, max_n_sequential=2, max_steps=4) as client:
        body = (await client.get("/v1/models")).json()
        assert body["limits"]["max_n"] == 8 and body["limits"]["max_steps"] == 4
        assert {m["name"]: m["max_n"] for m in body["models"]} == {
            name: 2 if name in ("pixelcnn", "pixelrnn") else 8 for name in served_names(weights_dir)}
        assert (await client.post("/v1/models/dcgan/samples", json={"n": 9})).status_code == 422
        assert (await client.post("/v1/models/pixelcnn/samples", json={"n": 3})).status_code == 422
        path = {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 5}
        assert (await client.post("/v1/models/dcgan/interpolate", json=path)).status_code == 422
