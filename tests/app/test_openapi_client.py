"""The OpenAPI document is usable by real tooling: `openapi-python-client` generates a client from a
running server's /openapi.json, and `samples` and `interpolate` are called through it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

PACKAGE = "genserve_client"


@pytest.fixture(scope="module")
def generated(server, tmp_path_factory):
    """The client package generated from the server's document, importable."""
    root = tmp_path_factory.mktemp("client")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(server + "/openapi.json", timeout=30).content)
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", str(spec),
                             "--output-path", str(root / PACKAGE), "--meta", "none"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(root))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_samples_through_the_generated_client(server, generated):
    samples = generated("api.generate.samples_v1_models_name_samples_post")
    models = generated("models")
    client = generated("client").Client(base_url=server, timeout=httpx.Timeout(60))
    response = samples.sync_detailed("dcgan", client=client, body=models.SamplesRequest(n=3, seed=5),
                                     format_=models.SamplesV1ModelsNameSamplesPostFormat.JSON)
    assert response.status_code == 200 and isinstance(response.parsed, models.ImagesResponse)
    assert response.parsed.seed == 5 and len(response.parsed.images) == 3
    direct = httpx.post(server + "/v1/models/dcgan/samples?format=json", json={"n": 3, "seed": 5}, timeout=60)
    assert response.parsed.images == direct.json()["images"]


def test_interpolate_through_the_generated_client(server, generated):
    interpolate = generated("api.generate.interpolate_v1_models_name_interpolate_post")
    models = generated("models")
    client = generated("client").Client(base_url=server, timeout=httpx.Timeout(60))
    body = models.InterpolateRequest(start=models.Latent(seed=1), end=models.Latent(class_="Sneaker"), steps=4,
                                     method=models.InterpolateRequestMethod.SLERP)
    response = interpolate.sync_detailed("vae", client=client, body=body,
                                         format_=models.InterpolateV1ModelsNameInterpolatePostFormat.JSON)
    assert response.status_code == 200 and len(response.parsed.images) == 4
    direct = httpx.post(server + "/v1/models/vae/interpolate?format=json", timeout=60,
                        json={"start": {"seed": 1}, "end": {"class": "Sneaker"}, "steps": 4, "method": "slerp"})
    assert response.parsed.images == direct.json()["images"]


def test_errors_parse_into_the_documented_models(server, generated):
    samples = generated("api.generate.samples_v1_models_name_samples_post")
    models = generated("models")
    client = generated("client").Client(base_url=server, timeout=httpx.Timeout(60))
    json_format = models.SamplesV1ModelsNameSamplesPostFormat.JSON
    unknown = samples.sync_detailed("nope", client=client, body=models.SamplesRequest(n=1), format_=json_format)
    assert unknown.status_code == 404 and isinstance(unknown.parsed, models.ErrorDetail)
    assert "nope" in unknown.parsed.detail
    too_many = samples.sync_detailed("dcgan", client=client, body=models.SamplesRequest(n=10_000), format_=json_format)
    assert too_many.status_code == 422 and isinstance(too_many.parsed, models.HTTPValidationError)
