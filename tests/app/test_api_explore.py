"""Latent exploration: traversals, GIF animations, samples as Server-Sent Events, DCGAN projection."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from statistics import NormalDist

import httpx
import numpy as np
import pytest
from PIL import Image

from apptest import b64png, grid_cells, grid_shape, metric, png, until, until_async

pytestmark = pytest.mark.anyio

LATENT_MODELS = ["vae", "dcgan"]


async def traverse(client, name: str, body: dict, fmt: str = "json") -> httpx.Response:
    return await client.post(f"/v1/models/{name}/traverse", params={"format": fmt}, json=body)


async def vector(client, name: str, latent: dict) -> np.ndarray:
    response = await client.post(f"/v1/models/{name}/latents", json={"latent": latent})
    assert response.status_code == 200, response.text
    return np.array(response.json()["vector"])


def gif_frames(content: bytes) -> list[np.ndarray]:
    image = Image.open(io.BytesIO(content))
    assert image.format == "GIF" and image.info.get("loop") == 0, "an animation that loops forever"
    frames = []
    for index in range(image.n_frames):
        image.seek(index)
        frames.append(np.asarray(image.convert("L")))
    return frames


def events(text: str) -> list[tuple[str, dict]]:
    """Server-Sent Events -> [(event name, data)]."""
    parsed = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((fields["event"], json.loads(fields["data"])))
    return parsed


# -- traverse -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LATENT_MODELS)
async def test_one_axis_is_a_row_of_offsets_along_a_dimension(client, name):
    body = {"center": {"seed": 3}, "axes": [{"dim": 1}], "steps": 5, "extent": 2.0}
    answer = await traverse(client, name, body)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"images", "latents"}
    latents = np.array(answer.json()["latents"])
    center = await vector(client, name, {"seed": 3})
    steps = latents - center
    assert np.allclose(steps[:, 1], [-2, -1, 0, 1, 2], atol=1e-5)
    assert np.allclose(np.delete(steps, 1, axis=1), 0, atol=1e-5)
    grid = await traverse(client, name, body, "png")
    assert grid.headers["content-type"] == "image/png"
    cells = grid_cells(png(grid.content), 5, 5, 28, 28)
    assert png(grid.content).shape == grid_shape(5, 5, 28, 28)
    assert all((cell == b64png(image)).all() for cell, image in zip(cells, answer.json()["images"]))


async def test_the_default_center_is_seed_0_and_gaussian_spacing_uses_normal_quantiles(client):
    answer = await traverse(client, "vae", {"axes": [{"dim": 0}], "steps": 4, "spacing": "gaussian", "extent": 50})
    latents = np.array(answer.json()["latents"])
    quantiles = [NormalDist().inv_cdf((i + 0.5) / 4) for i in range(4)]
    assert np.allclose(latents[:, 0] - (await vector(client, "vae", {"seed": 0}))[0], quantiles, atol=1e-5)


async def test_two_axes_are_a_row_major_grid(client):
    body = {"center": {"vector": [0.0] * 32}, "axes": [{"dim": 0}, {"dim": 5}], "steps": 3, "extent": 1.0}
    answer = await traverse(client, "vae", body)
    latents = np.array(answer.json()["latents"])
    assert latents.shape == (9, 32) and len(answer.json()["images"]) == 9
    t = [-1, 0, 1]
    for r in range(3):
        for c in range(3):
            expected = np.zeros(32)
            expected[0], expected[5] = t[r], t[c]
            assert np.allclose(latents[3 * r + c], expected, atol=1e-6)
    grid = await traverse(client, "vae", body, "png")
    assert png(grid.content).shape == grid_shape(9, 3, 28, 28)


@pytest.mark.parametrize("name", LATENT_MODELS)
async def test_toward_is_the_unit_vector_from_the_center_to_a_latent(client, name):
    body = {"center": {"seed": 1}, "axes": [{"toward": {"seed": 2}}], "steps": 3, "extent": 1.5}
    latents = np.array((await traverse(client, name, body)).json()["latents"])
    a, b = await vector(client, name, {"seed": 1}), await vector(client, name, {"seed": 2})
    unit = (b - a) / np.linalg.norm(b - a)
    assert np.allclose(latents, [a - 1.5 * unit, a, a + 1.5 * unit], atol=1e-4)


@pytest.mark.parametrize("body, loc", [
    ({"axes": [{"dim": 0}], "steps": 1}, ["body", "steps"]),
    ({"axes": [{"dim": 0}], "steps": 17}, ["body", "steps"]),
    ({"axes": [{"dim": 32}]}, ["body", "axes", 0, "dim"]),
    ({"axes": [{"dim": -1}]}, ["body", "axes", 0, "dim"]),
    ({"axes": []}, ["body", "axes"]),
    ({"axes": [{"dim": 0}, {"dim": 1}, {"dim": 2}]}, ["body", "axes"]),
    ({"axes": [{"dim": 0, "toward": {"seed": 1}}]}, ["body", "axes", 0]),
    ({"axes": [{}]}, ["body", "axes", 0]),
    ({"center": {"seed": 4}, "axes": [{"toward": {"seed": 4}}]}, ["body", "axes", 0, "toward"]),
    ({"axes": [{"dim": 0}], "extent": float("nan")}, ["body", "extent"]),
])
async def test_bad_traversals_are_422(client, body, loc):
    response = await client.post("/v1/models/vae/traverse", content=json.dumps(body),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(error["loc"][: len(loc)] == loc for error in response.json()["detail"]), response.text


async def test_traverse_needs_a_latent_space(client):
    response = await traverse(client, "pixelcnn", {"axes": [{"dim": 0}]})
    assert response.status_code == 400 and "traverse" in response.json()["detail"]


# -- GIF ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LATENT_MODELS)
async def test_interpolation_and_one_axis_traversal_animate_as_gif(client, name):
    path = {"start": {"seed": 1}, "end": {"seed": 9}, "steps": 6}
    walk = {"center": {"seed": 2}, "axes": [{"dim": 3}], "steps": 7, "extent": 3.0}
    for op, body in (("interpolate", path), ("traverse", walk)):
        gif = await client.post(f"/v1/models/{name}/{op}?format=gif", json=body)
        assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
        images = (await client.post(f"/v1/models/{name}/{op}?format=json", json=body)).json()["images"]
        frames = gif_frames(gif.content)
        assert len(frames) == len(images) == body["steps"]
        assert all((frame == b64png(image)).all() for frame, image in zip(frames, images))


async def test_gif_is_400_on_a_grid_and_422_where_there_is_no_animation(client):
    grid = await traverse(client, "vae", {"axes": [{"dim": 0}, {"dim": 1}]}, "gif")
    assert grid.status_code == 400 and "gif" in grid.json()["detail"].lower()
    samples = await client.post("/v1/models/vae/samples?format=gif", json={"n": 2})
    assert samples.status_code == 422


# -- samples as Server-Sent Events --------------------------------------------------------------

STREAM = {"accept": "text/event-stream"}


@pytest.mark.parametrize("name", ["pixelcnn", "pixelrnn"])
async def test_autoregressive_samples_stream_row_by_row_and_end_with_the_plain_bytes(client, name):
    body = {"n": 2, "seed": 31, "temperature": 0.9}
    stream = await client.post(f"/v1/models/{name}/samples", json=body, headers=STREAM)
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["x-seed"] == "31"
    received = events(stream.text)
    assert [name for name, _ in received] == ["progress"] * 28 + ["done"]
    plain = await client.post(f"/v1/models/{name}/samples", json=body)
    assert base64.b64decode(received[-1][1]["image"]) == plain.content, "done is the plain answer, byte for byte"
    final = png(plain.content)  # two images side by side: one row of cells, from y = 2 to 30
    for row, (_, data) in enumerate(received[:-1]):
        assert data["row"] == row and data["rows"] == 28
        so_far = b64png(data["image"])
        assert so_far.shape == final.shape
        drawn, rest = 2 + row + 1, 2 + 28
        assert (so_far[:drawn] == final[:drawn]).all(), f"row {row}: the rows drawn are the final ones"
        assert (so_far[drawn:rest] == 0).all(), f"row {row}: the rows below are still blank"


async def test_streamed_samples_of_other_models_are_one_done_event(client):
    body = {"n": 3, "seed": 5, "class": "Sneaker"}
    stream = await client.post("/v1/models/vae/samples", json=body, headers=STREAM)
    received = events(stream.text)
    assert [name for name, _ in received] == ["done"]
    plain = await client.post("/v1/models/vae/samples", json=body)
    assert base64.b64decode(received[0][1]["image"]) == plain.content


async def test_a_stream_is_refused_before_it_starts(client):
    too_many = await client.post("/v1/models/pixelcnn/samples", json={"n": 17}, headers=STREAM)
    assert too_many.status_code == 422
    unknown = await client.post("/v1/models/pixelcnn/samples", json={"n": 1, "class": "Robot"}, headers=STREAM)
    assert unknown.status_code == 422 and unknown.headers["content-type"] == "application/json"


def test_a_client_that_leaves_a_stream_leaves_the_server_idle_and_serving(server):
    """Hanging up after the first row: the stream's job is withdrawn or stops after its row (the
    sampler's `on_progress` answer, tested in tests/models), and nothing of it stays queued. Its pass
    must end: a sampler that never stopped would hold the worker (issue 37: only the queue was checked)."""
    with httpx.Client(base_url=server, timeout=120) as client:
        def passes_ended() -> float:
            return metric(client.get("/metrics").text, "genserve_inference_seconds_count", model="pixelcnn")

        before = passes_ended()
        with client.stream("POST", "/v1/models/pixelcnn/samples", json={"n": 16, "seed": 2}, headers=STREAM) as s:
            for line in s.iter_lines():
                if line.startswith("event: progress"):
                    break  # and hang up after the first row
        until(lambda: passes_ended() == before + 1, "the stream's pass to end after the hang-up")
        assert metric(client.get("/metrics").text, "genserve_queue_depth") == 0
        again = client.post("/v1/models/pixelcnn/samples", json={"n": 1, "seed": 2})
        assert again.status_code == 200


# -- DCGAN projection ---------------------------------------------------------------------------

async def dcgan_image(client, seed: int) -> str:
    answer = await client.post("/v1/models/dcgan/samples?format=json", json={"n": 1, "seed": seed})
    return answer.json()["images"][0]


async def test_dcgan_projects_an_upload_deterministically_and_reconstructs_it(client):
    image = await dcgan_image(client, 12)
    first, second = [await vector(client, "dcgan", {"image": image}) for _ in range(2)]
    assert np.array_equal(first, second), "same image, same latent"
    answer = await client.post("/v1/models/dcgan/reconstruct?format=json", json={"image": image})
    assert answer.status_code == 200, answer.text
    shown, projection = (b64png(i).astype(float) for i in answer.json()["images"])
    assert np.allclose(answer.json()["latents"][1], first, atol=1e-5)
    start = b64png(await dcgan_image(client, 0)).astype(float)  # the projection starts at seed 0's latent
    error = np.mean((projection - shown) ** 2)
    assert error < 0.5 * np.mean((start - shown) ** 2), "the projection is much nearer the image than its start"
    grid = await client.post("/v1/models/dcgan/reconstruct", json={"image": image})
    assert png(grid.content).shape == grid_shape(2, 2, 28, 28)


async def test_uploads_join_dcgan_interpolation_traversal_and_arithmetic(client):
    image = await dcgan_image(client, 21)
    path = await client.post("/v1/models/dcgan/interpolate?format=json",
                             json={"start": {"image": image}, "end": {"seed": 3}, "steps": 3})
    z = await vector(client, "dcgan", {"image": image})
    assert path.status_code == 200 and np.allclose(path.json()["latents"][0], z, atol=1e-5)
    walk = await traverse(client, "dcgan", {"center": {"image": image}, "axes": [{"dim": 0}], "steps": 3})
    assert walk.status_code == 200 and np.allclose(walk.json()["latents"][1], z, atol=1e-5)
    terms = [{"latent": {"image": image}, "weight": 1.0}, {"latent": {"seed": 1}, "weight": 0.5}]
    total = await client.post("/v1/models/dcgan/arithmetic?format=json", json={"terms": terms, "show_terms": False})
    assert total.status_code == 200 and np.allclose(total.json()["latents"][0],
                                                    z + 0.5 * await vector(client, "dcgan", {"seed": 1}), atol=1e-4)


async def test_a_projection_lets_other_batches_run_between_its_steps(client):
    def slices(text: str) -> float:
        return metric(text, "genserve_batch_images_count", model="dcgan", operation="project")

    before = slices((await client.get("/metrics")).text)
    projection = asyncio.ensure_future(client.post("/v1/models/dcgan/latents",
                                                   json={"latent": {"image": await dcgan_image(client, 7)}}))
    async def begun() -> bool:
        return slices((await client.get("/metrics")).text) > before
    await until_async(begun, "the projection's first slice")
    sample = await client.post("/v1/models/dcgan/samples", json={"n": 4, "seed": 1})
    assert sample.status_code == 200
    done_during = slices((await client.get("/metrics")).text) - before
    assert not projection.done() and done_during < 10, "the samples did not wait for the whole projection"
    assert (await projection).status_code == 200
    assert slices((await client.get("/metrics")).text) - before == 10  # 100 steps in slices of 10


# -- the latent map -----------------------------------------------------------------------------

async def test_the_latent_map_decodes_back_to_the_plane_it_describes(client, models):
    assert models["vae"]["latent_map"] and not models["dcgan"]["latent_map"]
    assert models["vae"]["parameters"] > 1_000_000
    answer = await client.get("/v1/models/vae/latent-map")
    assert answer.status_code == 200
    body = answer.json()
    assert body["model"] == "vae" and body["classes"] == models["vae"]["classes"]
    assert len(body["points"]) == body["images"] and len(body["mean"]) == 32
    components = np.array(body["components"])
    assert np.allclose(components @ components.T, np.eye(2), atol=1e-4)
    labels = {label for _, _, label in body["points"]}
    assert labels <= set(range(10)) and len(labels) == 10
    for name in ("dcgan", "pixelcnn"):
        missing = await client.get(f"/v1/models/{name}/latent-map")
        assert missing.status_code == 400 and "latent map" in missing.json()["detail"]
