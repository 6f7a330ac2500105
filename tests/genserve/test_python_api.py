"""The Python API (genserve) against the HTTP API: the same pixels from every served model, for
every operation its family declares, with the real app in process and the shipped weights."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genserve
from genserve.generator import to_pil
from tests.app.apptest import grid_cells, model_infos, png, served_names, serving

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def client(weights_dir, anyio_backend):
    async with serving(weights_dir) as client:
        yield client


@pytest.fixture(scope="module")
def generators(weights_dir) -> dict[str, genserve.Generator]:
    return {name: genserve.load(weights_dir / name) for name in served_names(weights_dir)}


@pytest.fixture(scope="module")
async def uploads(client) -> dict[str, bytes]:
    """name -> a PNG to upload to it: its seed-0 sample, as the API draws it."""
    found = {}
    for name, info in (await model_infos(client)).items():
        steps = {"steps": 2} if info["sampling_steps"] else {}
        answer = await client.post(f"/v1/models/{name}/samples", json={"n": 1, "seed": 0, **steps})
        buffer = io.BytesIO()
        Image.fromarray(png(answer.content)[2:-2, 2:-2]).save(buffer, format="PNG")  # the one cell
        found[name] = buffer.getvalue()
    return found


def calls(info: dict, generator: genserve.Generator, upload: bytes) -> list[tuple[str, dict, str, tuple, dict]]:
    """(endpoint, its JSON body, the Python method, its arguments, keyword arguments) for each
    image operation the model declares: the API's arguments, and the Python API's spelling of them."""
    capabilities, classes = info["capabilities"], info["classes"]
    image = base64.b64encode(upload).decode()
    steps = {"steps": 2} if info["sampling_steps"] else {}  # a sampler that takes steps: the fewest
    found = [("samples", {"n": 4, "seed": 3, **steps}, "sample", (), {"n": 4, "seed": 3, **steps})]
    if generator.class_latents or (info["conditional"] and generator.module.sampling == "noise"):
        found.append(("samples", {"n": 2, "seed": 8, "temperature": 0.7, "class": classes[1], **steps},
                      "sample", (), {"n": 2, "seed": 8, "temperature": 0.7, "class_": classes[1], **steps}))
    if "interpolate" in capabilities:
        found.append(("interpolate", {"start": {"seed": 1}, "end": {"seeds": [2, 5]}, "steps": 3, "method": "lerp"},
                      "interpolate", ({"seed": 1}, {"seeds": [2, 5]}), {"steps": 3, "method": "lerp"}))
    if "traverse" in capabilities:
        body = {"center": {"seed": 4}, "axes": [{"dim": 1}, {"toward": {"seed": 9}}], "steps": 2}
        found.append(("traverse", body, "traverse", ([1, {"toward": 9}],), {"center": 4, "steps": 2}))
    if "arithmetic" in capabilities:
        other = {"class": classes[0]} if generator.class_latents else {"seeds": [2, 3]}
        body = {"terms": [{"latent": {"seed": 1}, "weight": 1.0}, {"latent": other, "weight": -0.5}],
                "n": 2, "noise": 0.4, "seed": 6}
        found.append(("arithmetic", body, "arithmetic", ([(1, 1.0), (other, -0.5)],),
                      {"n": 2, "noise": 0.4, "seed": 6}))
    if "reconstruct" in capabilities:
        found.append(("reconstruct", {"image": image}, "reconstruct", (Image.open(io.BytesIO(upload)),), {}))
    if "complete" in capabilities:
        found.append(("complete", {"image": image, "keep_rows": 20, "n": 1, "seed": 2}, "complete", (upload,),
                      {"keep_rows": 20, "n": 1, "seed": 2}))
    return found


def nrow(endpoint: str, body: dict, n: int) -> int | None:
    """Images per row of the API's grid for this endpoint (None: the square default)."""
    if endpoint == "samples":
        return None
    if endpoint in ("interpolate", "traverse"):
        return body["steps"]
    if endpoint == "arithmetic":
        return len(body["terms"]) + 1
    return n  # reconstruct, complete: one row


@pytest.mark.slow  # some 10 s of CPU, most of it the diffusion model's samplers
async def test_the_python_apis_pixels_are_the_apis_for_every_served_model(client, generators, uploads):
    """Every model in weights/ (the colour ones too), every image operation it declares: each
    image the Python API returns is the API's PNG cell, pixel for pixel."""
    infos = await model_infos(client)
    assert sorted(infos) == sorted(generators), "the Python API loads what the service serves"
    mismatches = []
    for name, info in sorted(infos.items()):
        _, height, width = info["image_shape"]
        for endpoint, body, method, args, kwargs in calls(info, generators[name], uploads[name]):
            answer = await client.post(f"/v1/models/{name}/{endpoint}", json=body)
            assert answer.status_code == 200, f"{name} {endpoint}: {answer.text}"
            images = getattr(generators[name], method)(*args, **kwargs)
            cells = grid_cells(png(answer.content), len(images), nrow(endpoint, body, len(images)), height, width)
            if not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(cells, map(np.asarray, images))):
                mismatches.append(f"{name} {endpoint} {body.get('class', '')}")
    assert not mismatches, f"the Python API's pixels differ from the API's for {mismatches}"
    served = client.app.state.registry.models  # each prepared by the worker on its first pass
    for name, generator in generators.items():
        layout = [(p.dtype, p.stride()) for p in generator.module.parameters()]
        assert layout == [(p.dtype, p.stride()) for p in served[name].module.parameters()], \
            f"{name}: the Python API runs its module in the worker's memory format and dtype"
    checked = {(g.family, g.image_shape[0]) for g in generators.values()}
    assert {("dcgan", 1), ("vae", 1), ("pixelcnn", 1)} <= checked, f"checked only {checked}"


async def test_latents_and_likelihoods_are_the_apis_json(client, generators, uploads):
    conditioned = False
    for name, info in sorted((await model_infos(client)).items()):
        g, image = generators[name], base64.b64encode(uploads[name]).decode()
        if "arithmetic" in info["capabilities"]:
            latents = [({"seeds": [3, 4]}, {"seeds": [3, 4]})]
            if "encoder" in info["capabilities"]:  # an upload's latent (a projection is reconstruct's test)
                latents.append(({"image": image}, {"image": uploads[name]}))
            for latent, ours in latents:
                answer = await client.post(f"/v1/models/{name}/latents", json={"latent": latent})
                assert answer.json()["vector"] == g.latents(ours), f"{name}: latents of {list(latent)}"
        if "likelihood" in info["capabilities"]:
            label = info["classes"][2] if g.module.class_conditional and not conditioned else None
            conditioned = conditioned or label is not None
            body = {"image": image, **({"class": label} if label else {})}
            answer = await client.post(f"/v1/models/{name}/likelihood", json=body)
            assert answer.json() == g.likelihood(uploads[name], class_=label), f"{name}: likelihood {body.keys()}"


async def test_bulk_sampling_in_passes_is_the_apis_requests_seed_by_seed(client, generators, capsys):
    """Past the API's cap on n, in passes of batch_size with one progress bar: image i is the
    API's image of seed s + i (requests of the pass's size)."""
    name = "vae" if "vae" in generators else min(generators)
    tensor = generators[name].sample(n=40, seed=11, batch_size=16, as_tensor=True)
    bar = capsys.readouterr().err
    assert bar.count("40/40") == 1, f"one progress bar to 40 images, got {bar!r}"
    assert tensor.shape == (40, *generators[name].image_shape) and tensor.dtype == torch.float32
    pictures = generators[name].sample(n=40, seed=11, batch_size=16, progress=False)
    assert [p.info["seed"] for p in pictures] == list(range(11, 51))
    assert capsys.readouterr().err == ""
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(to_pil(tensor), pictures))
    for start, n in ((11, 16), (27, 16), (43, 8)):
        answer = await client.post(f"/v1/models/{name}/samples", params={"format": "json"},
                                   json={"n": n, "seed": start})
        api = [np.asarray(Image.open(io.BytesIO(base64.b64decode(text)))) for text in answer.json()["images"]]
        ours = pictures[start - 11: start - 11 + n]
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(api, ours)), f"{name}: seeds {start}..."


async def test_errors_are_one_line_value_errors_with_the_apis_words(client, generators):
    latent_model = next((g for g in generators.values() if g.class_latents), None)
    pixel_model = next((g for g in generators.values() if "complete" in g.capabilities and g.latent_dim is None), None)
    if pixel_model is not None:
        with pytest.raises(ValueError, match=r"does not support 'interpolate'; its capabilities are"):
            pixel_model.interpolate(1, 2)
    if latent_model is not None:
        answer = await client.post(f"/v1/models/{latent_model.name}/samples", json={"n": 1, "class": "Nope"})
        with pytest.raises(ValueError) as raised:
            latent_model.sample(n=1, class_="Nope")
        assert str(raised.value) == answer.json()["detail"][0]["msg"], "the service's words, from one rule"
        with pytest.raises(ValueError, match=r"latents have \d+ numbers, not 2"):
            latent_model.latents([0.5, 0.5])
        with pytest.raises(ValueError, match="a latent is exactly one of"):
            latent_model.interpolate({"seed": 1, "vector": [0.0]}, 2)
    for bad in (lambda g: g.sample(n=0), lambda g: g.sample(temperature=0), lambda g: g.sample(seed=-1)):
        with pytest.raises(ValueError) as raised:
            bad(next(iter(generators.values())))
        assert "\n" not in str(raised.value)
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        genserve.load(REPO / "weights" / "no-such-model")


def test_importing_genserve_imports_no_web_framework(weights_dir):
    """`import genserve` loads none of FastAPI, Starlette or pydantic (nor torch); loading a model
    and using it loads no web framework (pydantic comes with models.card, which validates cards)."""
    name = "vae" if (weights_dir / "vae").is_dir() else served_names(weights_dir)[0]
    script = f"""
import sys, genserve
loaded = lambda *names: [name for name in names if name in sys.modules]
assert not loaded("fastapi", "starlette", "pydantic", "torch"), loaded("fastapi", "starlette", "pydantic", "torch")
g = genserve.load({str(weights_dir / name)!r}, device="cpu")
images = g.sample(n=2, seed=1)
if "reconstruct" in g.capabilities:
    g.reconstruct(images[0])
assert not loaded("fastapi", "starlette"), loaded("fastapi", "starlette")
print(len(images), images[0].size)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 ")
