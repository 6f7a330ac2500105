"""Schema fuzzing: schemathesis drives every operation of the app's own /openapi.json against a real
server. No answer may be a 5xx, and every answer must be one the document declares: its status,
its content type, its headers and its body's schema."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from app.config import Settings
from app.main import create_app
from bench.process import running_server
from bench.reliability import healthy
from tests.app.apptest import THREADS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# PixelCNN draws an image in about a second: two at most keeps the run to a couple of minutes.
FUZZ_SETTINGS = {"max_n_sequential": 2, "admin_token": "fuzz-token"}
EXAMPLES = 50  # per operation and generation mode


@pytest.fixture(scope="module")
def fuzzed_server(weights_dir, tmp_path_factory):
    with running_server(weights_dir, tmp_path_factory.mktemp("fuzz") / "server.log", threads=THREADS,
                        **FUZZ_SETTINGS) as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    """The server's own document; the model name in paths is drawn from the served models and one
    unknown name, since arbitrary strings would only ever meet the 404."""
    document = httpx.get(fuzzed_server.url + "/openapi.json").json()
    names = httpx.get(fuzzed_server.url + "/readyz").json()["models"] + ["no-such-model"]
    for operation in (op for path in document["paths"].values() for op in path.values()):
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] == "name":
                parameter["schema"] = {"type": "string", "enum": names}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=fuzzed_server.url)
    return schema


# One test per operation and generation mode, from the document built without weights (the paths do
# not depend on them). Negative cases exist only for operations that take some input.
DOCUMENT = create_app(Settings()).openapi()
CASES = [(method.upper(), path, mode) for path, methods in DOCUMENT["paths"].items()
         for method, operation in methods.items() for mode in GenerationMode
         if mode == GenerationMode.POSITIVE or operation.get("parameters") or operation.get("requestBody")]


# Hypothesis driven directly: schemathesis' lazy pytest loader does not run under pytest 9.
@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_every_answer_is_declared_and_none_is_5xx(api_schema, method, path, mode):
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(checks=CHECKS, timeout=60)

    fuzz()


def test_the_server_is_healthy_after_the_fuzz(fuzzed_server):
    assert healthy(fuzzed_server.url)
    assert "unhandled error" not in fuzzed_server.log.read_text()


def test_the_document_declares_a_body_for_every_answer():
    """What the fuzz cannot reach, checked on the document itself: every status has its content
    type, the PNG route declares only PNG, and a 503 declares its Retry-After."""
    for path, methods in DOCUMENT["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                assert response.get("content"), (method, path, status)
            if "503" in operation["responses"] and path.startswith("/v1/models/{name}/"):
                assert "Retry-After" in operation["responses"]["503"]["headers"], (method, path)
    png = DOCUMENT["paths"]["/v1/models/{name}/samples.png"]["get"]["responses"]["200"]["content"]
    assert list(png) == ["image/png"]
