"""Issue 14's bounds, in process: lists capped by the schemas, error replies capped, JSON bodies of
too many values refused before they are parsed, /reconstruct's JSON only with a JSON content type,
the page's security headers, /docs from local assets, /readyz without filesystem paths."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from apptest import encode_png, serving
from app.errors import ECHO_LIMIT, MAX_ERRORS
from app.middleware import MAX_JSON_KEYS, MAX_JSON_VALUES
from app.schemas import MAX_LIST, MAX_VECTOR

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


def vector_body(n: int, value: str = "1e5") -> bytes:
    return ('{"start": {"vector": [' + ",".join([value] * n) + ']}, "end": {"seed": 1}}').encode()


async def test_the_probe_vector_is_refused_unparsed_with_a_small_reply(client):
    """Issue 14's probe: 400,000 entries of 1e5 (1.5 MB) once got a 62 MB 422 after 11 s."""
    response = await client.post("/v1/models/dcgan/interpolate", content=vector_body(400_000), headers=JSON)
    assert response.status_code == 413 and len(response.content) < 200
    assert f"more than {MAX_JSON_VALUES} values" in response.json()["detail"]


async def test_lists_past_their_caps_are_one_error_that_echoes_a_few_items(client):
    response = await client.post("/v1/models/dcgan/interpolate", content=vector_body(MAX_VECTOR + 1), headers=JSON)
    assert response.status_code == 422 and len(response.content) < 1000, len(response.content)
    [error] = response.json()["detail"]
    assert error["type"] == "too_long" and error["loc"] == ["body", "start", "vector"]
    assert len(error["input"]) <= 11
    for latent in ({"seeds": list(range(MAX_LIST + 1))},):
        response = await client.post("/v1/models/dcgan/latents", json={"latent": latent})
        assert response.status_code == 422 and response.json()["detail"][0]["type"] == "too_long"
    for terms in ([{"latent": {"seed": i}} for i in range(MAX_LIST + 1)], [{}] * 40_000):
        response = await client.post("/v1/models/dcgan/arithmetic", json={"terms": terms})
        assert response.status_code == 422 and [e["type"] for e in response.json()["detail"]] == ["too_long"]


async def test_many_errors_are_answered_as_the_first_few_and_a_count(client):
    count = MAX_JSON_KEYS - 10
    body = "{" + ",".join(f'"k{i}": "{"x" * 500}"' for i in range(count)) + "}"
    response = await client.post("/v1/models/dcgan/samples", content=body.encode(), headers=JSON)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == MAX_ERRORS + 1 and len(response.content) < 20_000
    assert detail[-1] == {"type": "too_many_errors", "loc": ["body"],
                          "msg": f"{count - MAX_ERRORS} more errors not shown"}
    assert all(len(json.dumps(error["input"])) <= ECHO_LIMIT + 10 for error in detail[:-1])


async def test_more_keys_than_a_valid_body_holds_are_refused_unparsed(client):
    """Each unknown key is an error pydantic makes on the event loop (40,000 once took 5 s)."""
    body = "{" + ",".join(f'"k{i}": 1' for i in range(40_000)) + "}"
    response = await client.post("/v1/models/dcgan/samples", content=body.encode(), headers=JSON)
    assert response.status_code == 413 and f"more than {MAX_JSON_KEYS} keys" in response.json()["detail"]


async def test_a_list_of_bad_entries_is_one_error(client):
    """Within its cap a vector of bad numbers is one error naming the first, not one per entry:
    MAX_LIST terms of MAX_VECTOR bad numbers would otherwise be 65,536 errors to make."""
    response = await client.post("/v1/models/dcgan/interpolate", content=vector_body(MAX_VECTOR), headers=JSON)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "start", "vector"] and error["msg"].startswith("entry 0 is not")
    terms = [{"latent": {"vector": [1e5] * MAX_VECTOR}} for _ in range(MAX_LIST)]
    response = await client.post("/v1/models/dcgan/arithmetic", json={"terms": terms})
    assert response.status_code == 422 and len(response.json()["detail"]) == MAX_ERRORS + 1
    seeds = await client.post("/v1/models/dcgan/latents", json={"latent": {"seeds": [1, -1, -2]}})
    assert seeds.status_code == 422 and [e["msg"][:7] for e in seeds.json()["detail"]] == ["entry 1"]


async def test_reconstruct_parses_json_only_with_a_json_content_type(client):
    body = json.dumps({"image": encode_png(np.full((28, 28), 128, np.uint8))}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        response = await client.post("/v1/models/vae/reconstruct", content=body, headers=headers)
        assert response.status_code == 422, (content_type, response.text)
        assert "Content-Type: application/json" in response.json()["detail"][0]["msg"]
    assert (await client.post("/v1/models/vae/reconstruct", content=body, headers=JSON)).status_code == 200


async def test_the_page_and_the_api_carry_security_headers(client):
    for path in ("/", "/v1/models", "/static/app.js"):
        headers = (await client.get(path)).headers
        assert headers["x-content-type-options"] == "nosniff"
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy and "unsafe" not in policy
        assert headers["x-frame-options"] == "DENY"


async def test_docs_come_from_local_assets(client):
    page = await client.get("/docs")
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "cdn." not in page.text and "https://" not in page.text.replace("https://github.com", "")
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
        assert (await client.get(asset)).status_code == 200
    assert (await client.get("/redoc")).status_code == 404


async def test_readiness_names_failed_folders_without_their_paths(tmp_path, weights_dir):
    shutil.copytree(weights_dir / "dcgan", tmp_path / "broken")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not weights")
    async with serving(tmp_path) as client:
        failed = (await client.get("/readyz")).json()["failed"]
    assert set(failed) == {"broken"} and str(tmp_path) not in failed["broken"] and "sha256" in failed["broken"]
    async with serving(tmp_path / "nothing") as client:
        failed = (await client.get("/readyz")).json()["failed"]
    assert str(tmp_path) not in json.dumps(failed)
