"""Your own images, in colour, end to end (issue 26): a folder of small RGB pictures in two class
subfolders, drawn here, trains every family for two steps through the training command line; the
real app serves the weights folder; every endpoint a model declares answers with RGB PNGs of the
model's 3 x 32 x 32, an uploaded grayscale PNG is converted to the model's colour, and the
folder's class names are the models' classes.

The capability -> endpoint table and its checks (shapes, seeds, counts) are those of
test_api_capabilities.py; this module adds what colour needs of each answer: Pillow reads every
PNG in it as mode "RGB", tiles of 32 x 32 framed by the grid's black padding."""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from apptest import PAD, b64png, encode_png, model_infos, serving
from models.training import command as train
from models.checkpoint import read_card, update_card
from models.families import FAMILIES
from test_api_capabilities import DESCRIPTIVE, ENDPOINTS

pytestmark = pytest.mark.anyio

SIZE = 32  # the models' side; the drawings are larger, so the loader scales and crops them
DRAWN = 40
PER_CLASS = 100
CLASSES = ["discs", "squares"]  # the subfolders: sorted, as the loader names the classes
# Widths small enough that two steps of each family, and its answers, take a blink.
TINY = {
    # class-conditional, as the shipped colour DCGAN: the class embedding rides in the latent
    "dcgan": ["latent_dim=8", "generator_width=8", "discriminator_width=8", "n_classes=dataset", "class_dim=3"],
    "vae": ["latent_dim=4", "width=8", "hidden=32", "prior_components=4"],
    "pixelcnn": ["channels=12", "n_layers=2", "kernel_size=3", "head_channels=12"],
    "pixelrnn": ["channels=12", "n_layers=1", "first_kernel=3", "head_channels=12"],
}
NAMES = {family: f"colour-{family}" for family in TINY}  # the weights folders, the served names


def draw_folder(directory) -> None:
    """Reddish discs and bluish squares on white, of random size and place; PNG and JPEG mixed."""
    rng = np.random.default_rng(26)
    for name in CLASSES:
        (directory / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            image = Image.new("RGB", (DRAWN, DRAWN), "white")
            radius = int(rng.integers(8, 16))
            x, y = rng.integers(radius + 1, DRAWN - radius - 1, 2)
            strong, weak = int(rng.integers(180, 256)), rng.integers(0, 80, 2).tolist()
            box = [x - radius, y - radius, x + radius, y + radius]
            if name == "discs":
                ImageDraw.Draw(image).ellipse(box, fill=(strong, *weak))
            else:
                ImageDraw.Draw(image).rectangle(box, fill=(*weak, strong))
            image.save(directory / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}")


@pytest.fixture(scope="module")
def colour_weights(tmp_path_factory):
    """The weights folder: one checkpoint per family, trained 2 steps on the drawn folder by the
    command line; the latent models' cards then get what evaluation would add, a latent mean and
    spread per class (as tests/conftest.py does for its tiny checkpoints)."""
    root = tmp_path_factory.mktemp("colour")
    draw_folder(root / "images")
    for family, widths in TINY.items():
        train.main([family, "--dataset", "folder", "--data-dir", str(root / "images"), "--image-size", str(SIZE),
                    "--max-steps", "2", "--batch-size", "16", "--out", str(root / "weights" / NAMES[family]),
                    "--state-dir", str(root / "runs" / family), "--cache-dir", str(root / "cache"),
                    "--threads", "1", "--quiet", "--set", *widths])
    rng = np.random.default_rng(0)
    for family in ("vae", "dcgan"):
        dim = read_card(root / "weights" / NAMES[family])["config"]["latent_dim"]
        update_card(root / "weights" / NAMES[family], class_latents={
            name: {"mean": (rng.standard_normal(dim) * 0.5).tolist(), "std": [0.8] * dim} for name in CLASSES})
    return root / "weights"


@pytest.fixture(scope="module")
async def colour(colour_weights, anyio_backend):
    """One app for the module, serving the colour weights folder."""
    async with serving(colour_weights) as client:
        yield client


@pytest.fixture(scope="module")
async def infos(colour) -> dict:
    """served name -> ModelInfo of the colour models."""
    return await model_infos(colour)


# -- what an RGB answer is -----------------------------------------------------------------------

def rgb(content: bytes) -> np.ndarray:
    """PNG bytes that Pillow reads as 8-bit RGB -> uint8 [H, W, 3]."""
    image = Image.open(io.BytesIO(content))
    assert image.format == "PNG" and image.mode == "RGB", (image.format, image.mode)
    return np.asarray(image)


def assert_rgb_grid(content: bytes) -> None:
    """An RGB PNG grid of SIZE x SIZE tiles: each 2 px black frame line where the tiling puts it."""
    grid = rgb(content)
    height, width, _ = grid.shape
    step = SIZE + PAD
    assert (height - PAD) % step == 0 and (width - PAD) % step == 0 and height > PAD and width > PAD, grid.shape
    for line in range(0, height, step):
        assert not grid[line:line + PAD].any(), f"padding row {line} of a {grid.shape} grid is not black"
    for line in range(0, width, step):
        assert not grid[:, line:line + PAD].any(), f"padding column {line} of a {grid.shape} grid is not black"


def assert_rgb_tile(text: str) -> None:
    assert rgb(base64.b64decode(text)).shape == (SIZE, SIZE, 3)


def assert_rgb_answer(answer) -> int:
    """Every image in a 200 answer is an RGB PNG of the model's size: a grid, the `images` of
    ?format=json, or the grids of an event stream. Returns how many images it checked."""
    kind = answer.headers["content-type"]
    if kind == "image/png":
        assert_rgb_grid(answer.content)
        return 1
    if kind.startswith("text/event-stream"):
        events = [json.loads(block.split("data: ", 1)[1]) for block in answer.text.strip().split("\n\n")]
        for data in events:
            assert_rgb_grid(base64.b64decode(data["image"]))
        return len(events)
    body = answer.json()
    for image in body.get("images", []):
        assert_rgb_tile(image)
    return len(body.get("images", []))


def gray_upload() -> tuple[np.ndarray, str]:
    """A grayscale ("L") PNG of the model's size: a ramp with a bright block; its pixels and base64."""
    image = np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1))
    image[8:24, 10:22] = 230
    return image, encode_png(image)


def colour_upload() -> tuple[np.ndarray, str]:
    """A reddish disc on white, as the training folder holds them, in RGB; its pixels and base64."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    ImageDraw.Draw(image).ellipse([6, 6, 26, 26], fill=(220, 40, 30))
    return np.asarray(image), encode_png(np.asarray(image))


# -- training ------------------------------------------------------------------------------------

def test_every_family_trains_on_the_colour_folder_into_a_colour_card(colour_weights):
    for family, name in NAMES.items():
        card = read_card(colour_weights / name)
        assert card["family"] == family and card["dataset"] == "folder", name
        assert card["classes"] == CLASSES and card["image_shape"] == [3, SIZE, SIZE], name
        assert card["background"] == "white", name  # the folder's transparency was composited on white
        assert card["config"]["image_shape"] == [3, SIZE, SIZE] and card["training"]["steps"] == 2, name
        # 5 % held out by a hash of the path: most of the 200 train, some do not
        assert 150 < card["training"]["train_images"] < 2 * PER_CLASS, name
        if family.startswith("pixel"):  # the preset's n_classes "dataset": the folder's two classes
            assert card["config"]["n_classes"] == len(CLASSES), name
        assert_rgb_grid((colour_weights / name / "samples.png").read_bytes())  # the training preview


# -- the service ---------------------------------------------------------------------------------

async def test_models_lists_the_four_colour_models_with_their_capabilities(colour, infos):
    assert sorted(infos) == sorted(NAMES.values())
    for family, name in NAMES.items():
        info = infos[name]
        assert info["family"] == family and info["dataset"] == "folder", name
        assert info["image_shape"] == [3, SIZE, SIZE] and info["classes"] == CLASSES, name
        assert info["background"] == "white", name
        declared = set(FAMILIES[family].capabilities)
        expected = declared | ({"encode"} if "image_latent" in declared else set())  # and the old name
        assert set(info["capabilities"]) == expected, name
        assert set(info["capabilities"]) <= set(ENDPOINTS) | DESCRIPTIVE, name
        assert info["conditional"], f"{name}: class-conditional, or class latents in its card"
        metadata = (await colour.get(f"/v2/models/{name}")).json()  # the Open Inference Protocol's view
        assert metadata["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 3, SIZE, SIZE]}], name


@pytest.mark.parametrize("family", TINY)
async def test_every_declared_endpoint_answers_rgb_pngs_of_the_models_size(colour, infos, family):
    info = infos[NAMES[family]]
    declared = set(info["capabilities"])
    served = [capability for capability, (needs, _) in ENDPOINTS.items() if needs <= declared]
    assert "sample" in served and "stream" in served
    for capability in served:
        answer = await ENDPOINTS[capability][1](colour, info)  # its request, and its checks of a 200
        assert answer.status_code == 200, f"{info['name']} {capability}: {answer.text[:300]}"
        images = assert_rgb_answer(answer)
        assert images >= 1 or capability in ("likelihood", "image_latent"), f"{info['name']} {capability}"


@pytest.mark.parametrize("family", ["dcgan", "vae"])
async def test_a_colour_animation_is_a_gif_of_the_models_size(colour, infos, family):
    info = infos[NAMES[family]]
    bodies = {"interpolate": {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 3},
              "traverse": {"axes": [{"dim": 0}], "steps": 3}}
    for endpoint, body in bodies.items():
        answer = await colour.post(f"/v1/models/{info['name']}/{endpoint}?format=gif", json=body)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/gif", answer.text[:300]
        animation = Image.open(io.BytesIO(answer.content))
        assert animation.format == "GIF" and animation.size == (SIZE, SIZE)
        assert 1 <= animation.n_frames <= 3
        assert np.asarray(animation.convert("RGB")).shape == (SIZE, SIZE, 3)


async def test_a_colour_upload_reaches_the_model_in_colour(colour, infos):
    pixels, upload = colour_upload()
    for name in (NAMES["vae"], NAMES["dcgan"]):
        answer = await colour.post(f"/v1/models/{name}/reconstruct?format=json", json={"image": upload})
        assert answer.status_code == 200, f"{name}: {answer.text[:300]}"
        seen, reconstruction = (b64png(image) for image in answer.json()["images"])
        assert (seen == pixels).all(), f"{name}: the input as the model saw it is not the upload"
        assert_rgb_tile(answer.json()["images"][1])


async def test_an_uploads_transparency_lies_on_the_models_white_ground(colour):
    """As the folder's training images were composited: a transparent upload is white where clear."""
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[:, : SIZE // 2] = (200, 30, 30, 255)  # opaque red on the left, clear on the right
    answer = await colour.post(f"/v1/models/{NAMES['vae']}/reconstruct?format=json",
                               json={"image": encode_png(rgba)})
    assert answer.status_code == 200, answer.text[:300]
    seen = b64png(answer.json()["images"][0])
    assert (seen[:, : SIZE // 2] == (200, 30, 30)).all() and (seen[:, SIZE // 2:] == 255).all()


@pytest.mark.parametrize("family", TINY)
async def test_a_grayscale_upload_is_converted_to_the_colour_models_rgb(colour, infos, family):
    """app/imaging.py load_image: an upload is converted to the model's channels; a gray image
    becomes RGB with R = G = B, so it means to the model what its RGB copy means."""
    info = infos[NAMES[family]]
    name = info["name"]
    gray, upload = gray_upload()
    assert Image.open(io.BytesIO(base64.b64decode(upload))).mode == "L"
    replicated = encode_png(np.repeat(gray[:, :, None], 3, axis=2))
    checked = 0
    if "reconstruct" in info["capabilities"]:
        answer = await colour.post(f"/v1/models/{name}/reconstruct?format=json", json={"image": upload})
        assert answer.status_code == 200, f"{name} reconstruct: {answer.text[:300]}"
        seen, _ = answer.json()["images"]
        assert_rgb_tile(seen)
        assert (b64png(seen) == gray[:, :, None]).all(), f"{name}: the gray upload is not R = G = B = its gray"
        copy = await colour.post(f"/v1/models/{name}/reconstruct?format=json", json={"image": replicated})
        assert copy.json()["images"] == answer.json()["images"], f"{name}: gray and its RGB copy reconstruct apart"
        checked += 1
    if "likelihood" in info["capabilities"]:
        answer = await colour.post(f"/v1/models/{name}/likelihood", json={"image": upload})
        assert answer.status_code == 200, f"{name} likelihood: {answer.text[:300]}"
        body = answer.json()
        assert math.isclose(body["bits_per_dim"], body["nll_nats"] / (3 * SIZE * SIZE * math.log(2)), rel_tol=1e-6)
        copy = (await colour.post(f"/v1/models/{name}/likelihood", json={"image": replicated})).json()
        assert math.isclose(copy["nll_nats"], body["nll_nats"], rel_tol=1e-6), f"{name}: {copy} != {body}"
        checked += 1
    if "complete" in info["capabilities"]:
        keep = SIZE // 2
        body = {"image": upload, "n": 1, "seed": 5, "keep_rows": keep}
        answer = await colour.post(f"/v1/models/{name}/complete?format=json", json=body)
        assert answer.status_code == 200, f"{name} complete: {answer.text[:300]}"
        for image in answer.json()["images"]:
            assert_rgb_tile(image)
            assert (b64png(image)[:keep] == gray[:keep, :, None]).all(), f"{name}: kept rows are not the gray rows"
        checked += 1
    assert checked >= 1, f"{name} declares none of reconstruct, likelihood, complete"


# -- the folder's classes ------------------------------------------------------------------------

@pytest.mark.parametrize("family", TINY)
async def test_the_folders_class_names_are_the_models_classes(colour, infos, family):
    name = NAMES[family]
    grids = {}
    for label in CLASSES:
        answer = await colour.post(f"/v1/models/{name}/samples", json={"n": 2, "seed": 3, "class": label})
        assert answer.status_code == 200, f"{name} class {label!r}: {answer.text[:300]}"
        assert_rgb_grid(answer.content)
        grids[label] = answer.content
    assert grids["discs"] != grids["squares"], f"{name}: the class changes nothing in the samples"
    unknown = await colour.post(f"/v1/models/{name}/samples", json={"n": 1, "seed": 3, "class": "cats"})
    assert unknown.status_code == 422, f"{name}: {unknown.status_code} {unknown.text[:300]}"
    assert "class" in unknown.json()["detail"][0]["loc"], unknown.text
    assert all(label in unknown.text for label in CLASSES), unknown.text


@pytest.mark.parametrize("family", ["dcgan", "vae"])
async def test_a_class_is_a_latent_of_the_latent_models(colour, colour_weights, infos, family):
    name = NAMES[family]
    mean = read_card(colour_weights / name)["class_latents"]["squares"]["mean"]
    vector = await colour.post(f"/v1/models/{name}/latents", json={"latent": {"class": "squares"}})
    assert vector.status_code == 200 and np.allclose(vector.json()["vector"], mean, atol=1e-6), vector.text[:300]
    body = {"terms": [{"latent": {"class": "discs"}}, {"latent": {"class": "squares"}, "weight": -1},
                      {"latent": {"seed": 1}}], "n": 1}
    answer = await colour.post(f"/v1/models/{name}/arithmetic?format=json", json=body)
    assert answer.status_code == 200, answer.text[:300]
    assert len(answer.json()["images"]) == 3 + 1 and assert_rgb_answer(answer) == 4
    interpolation = await colour.post(f"/v1/models/{name}/interpolate",
                                      json={"start": {"class": "discs"}, "end": {"class": "squares"}, "steps": 4})
    assert interpolation.status_code == 200, interpolation.text[:300]
    assert_rgb_grid(interpolation.content)
    assert rgb(interpolation.content).shape == (PAD + SIZE + PAD, PAD + 4 * (SIZE + PAD), 3)


@pytest.mark.parametrize("family", ["pixelcnn", "pixelrnn"])
async def test_a_class_conditions_the_autoregressive_models_completion_and_likelihood(colour, family):
    name = NAMES[family]
    _, upload = colour_upload()
    nll = {}
    for label in CLASSES:
        likelihood = await colour.post(f"/v1/models/{name}/likelihood", json={"image": upload, "class": label})
        assert likelihood.status_code == 200, likelihood.text[:300]
        nll[label] = likelihood.json()["nll_nats"]
        body = {"image": upload, "n": 1, "seed": 6, "keep_rows": SIZE // 2, "class": label}
        completion = await colour.post(f"/v1/models/{name}/complete?format=json", json=body)
        assert completion.status_code == 200, completion.text[:300]
        assert assert_rgb_answer(completion) == 2
    assert nll["discs"] != nll["squares"], f"{name}: log p(x | class) is the same for both classes"
