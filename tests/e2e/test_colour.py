"""A colour model's page in Chromium: a random-initialised 3x32x32 DCGAN served beside the shipped
28x28 grayscale models (the package's server of nine models, tests/e2e/conftest.py), and every tab
drawing it in colour at its own size, with defaults that are its own.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from .conftest import COLOUR_CLASSES, COLOUR_MODEL, COLOUR_SHAPE as SHAPE, open_page, require_browser, wait_until
from .test_page import api_images, choose_model, draw_stroke, loaded_images, shot

require_browser()

from playwright.sync_api import expect  # noqa: E402

# How many pixels of an <img> or <canvas> have channels that differ (R != G or G != B), read back
# from a canvas: 0 for a grayscale picture, most of them for a colourful one.
COLOURFUL_PIXELS = """source => {
  const canvas = document.createElement("canvas");
  canvas.width = source.naturalWidth ?? source.width;
  canvas.height = source.naturalHeight ?? source.height;
  const context = canvas.getContext("2d");
  context.drawImage(source, 0, 0);
  const px = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let colourful = 0;
  for (let i = 0; i < px.length; i += 4) if (px[i] !== px[i + 1] || px[i + 1] !== px[i + 2]) colourful++;
  return colourful;
}"""
PAD_PIXEL = "([x, y]) => [...document.querySelector('#pad').getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)]"


def rgb(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def assert_model_sized_colour_images(locator, count: int) -> None:
    """`count` images under `locator`, each 32x32 as the API made it, in colour, shown square."""
    loaded_images(locator, count)
    for img in locator.all():
        size = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [SHAPE[2], SHAPE[1]], f"{img.get_attribute('alt')}: {size}"
        assert img.evaluate(COLOURFUL_PIXELS) > 0, f"{img.get_attribute('alt')} is gray"
        box = img.bounding_box()
        assert abs(box["width"] - box["height"]) <= 1, f"{img.get_attribute('alt')} is shown {box}"


def test_a_colour_model_is_drawn_in_colour_at_its_size(browser, many_server, many_api, console, artifacts,
                                                       tmp_path):
    models = {m["name"]: m for m in many_api.get("/v1/models").raise_for_status().json()["models"]}
    assert models[COLOUR_MODEL]["image_shape"] == list(SHAPE)
    page = open_page(browser, many_server, console, viewport={"width": 1280, "height": 900})
    try:
        page.goto("/?n=4&seed=1")  # the only page load: the first model, a grayscale DCGAN, samples

        # The introduction names what is served: the families, and grayscale beside colour.
        served = page.locator("#served")
        expect(served).to_contain_text("trained on small grayscale and colour pictures (28×28 and 32×32)")
        for family in {m["family"] for m in models.values()}:
            expect(served).to_contain_text(family, ignore_case=True)

        # The grayscale model's samples read back gray: the colour check below can tell.
        gray = page.locator("#sample-result img")
        loaded_images(gray, 4)
        assert gray.first.evaluate(COLOURFUL_PIXELS) == 0

        # Sample: the API's own 32x32 RGB images, shown as they are.
        choose_model(page, COLOUR_MODEL)
        expect(page.locator("#about-body .meta")).to_contain_text("32×32 colour")
        samples = page.locator("#sample-result img")
        expect(samples.first).to_have_attribute("alt", f"{COLOUR_MODEL} sample 1 of 4, seed 1")
        assert_model_sized_colour_images(samples, 4)
        expected = api_images(many_api, COLOUR_MODEL, "samples", {"n": 4, "seed": 1})["images"]
        shown = samples.evaluate_all("els => els.map(e => e.src.split(',')[1])")
        for i, (a, b) in enumerate(zip(shown, expected)):
            assert np.abs(rgb(a) - rgb(b)).max() <= 1, f"sample {i} differs from the API's"
        # A streamed grid (2 px padding) is cut into cells of the model's size, in colour.
        grid = base64.b64encode(many_api.post(f"/v1/models/{COLOUR_MODEL}/samples", json={"n": 4, "seed": 1})
                                .raise_for_status().content).decode()
        assert Image.open(io.BytesIO(base64.b64decode(grid))).size == (2 + 2 * (32 + 2), 2 + 2 * (32 + 2))
        cells = page.evaluate("""async (grid) => {
            const { gridCells } = await import("/static/ui.js");
            return gridCells(grid, 4, 2, 32, 32);
        }""", grid)
        for i, (cell, b) in enumerate(zip(cells, expected)):
            assert np.abs(rgb(cell) - rgb(b)).max() <= 1, f"grid cell {i} differs from sample {i}"
        shot(page, artifacts, "colour-sample")

        # Interpolate, traverse (with its latent map) and arithmetic run their defaults on opening.
        page.get_by_role("tab", name="Interpolate").click()
        assert_model_sized_colour_images(page.locator("#interpolate-strip img"), 8)
        page.get_by_role("tab", name="Traverse").click()
        assert_model_sized_colour_images(page.locator("#traverse-result img"), 9)
        dots = page.locator("#latent-map-plot circle")
        expect(dots).to_have_count(4)
        dots.first.click()
        assert_model_sized_colour_images(page.locator(".map-pick img"), 1)
        shot(page, artifacts, "colour-traverse")
        # Arithmetic starts from the model's own classes (the grayscale model's were chosen before),
        # A and B apart.
        page.get_by_role("tab", name="Arithmetic").click()
        assert_model_sized_colour_images(page.locator("#arithmetic-equation img"), 4)
        terms = [page.locator(f'#panel-arithmetic fieldset[data-latent="{name}"] select').input_value()
                 for name in "abc"]
        assert set(terms) <= set(COLOUR_CLASSES) and terms[0] != terms[1], terms
        expect(page.locator("#arithmetic-equation figcaption")).to_have_text(
            [f"A: {terms[0]}", f"B: {terms[1]}", f"C: {terms[2]}", "result"])

        # Draw: a 32x32 pad in colour; an upload keeps its colour, fitted on the paper.
        page.get_by_role("tab", name="Draw or upload").click()
        pad = page.locator("#pad")
        assert pad.evaluate("c => [c.width, c.height]") == [32, 32]
        expect(pad).to_have_attribute("aria-label", "Drawing pad, 32 by 32 pixels, in colour: "
                                                    "draw with a mouse, finger or pen")
        expect(page.locator("#pad-hint")).to_contain_text("keeps its colour, is scaled to fit 32×32")
        box = pad.bounding_box()
        assert abs(box["width"] - box["height"]) <= 1

        upload = tmp_path / "flag.png"
        flag = Image.new("RGB", (40, 20), (0, 0, 255))  # blue | yellow, fitted as 32x16 in the middle
        flag.paste((255, 255, 0), (20, 0, 40, 20))
        flag.save(upload)
        # The paper starts as the model's background, white, the ink its opposite.
        expect(page.get_by_label("Paper", exact=True)).to_have_value("#ffffff")
        expect(page.get_by_label("Ink", exact=True)).to_have_value("#000000")
        assert page.evaluate(PAD_PIXEL, [16, 16]) == [255, 255, 255]
        page.locator("#pad-upload").set_input_files(upload)
        wait_until(page, f"() => ({PAD_PIXEL})([24, 16]).join() === '255,255,0'", timeout_s=10)
        assert page.evaluate(PAD_PIXEL, [8, 16]) == [0, 0, 255]
        assert page.evaluate(PAD_PIXEL, [16, 2]) == [255, 255, 255]  # the paper around it
        page.get_by_label("Ink", exact=True).fill("#ff0000")
        draw_stroke(page, [(4, 4.5), (28, 4.5)])
        red, green, blue = page.evaluate(PAD_PIXEL, [16, 4])
        assert red > 200 and green < 60 and blue < 60, "the red ink did not reach the pad"

        # The API is sent the pad as drawn, and answers in colour at 32x32.
        drawn = pad.evaluate("c => c.toDataURL('image/png').split(',')[1]")
        page.get_by_role("button", name="Reconstruct").click()
        reconstruction = page.locator("#reconstruct-result img")
        assert_model_sized_colour_images(reconstruction, 2)
        given = reconstruction.first.evaluate("img => img.src.split(',')[1]")
        assert np.abs(rgb(given) - rgb(drawn)).max() <= 1, "the input came back changed"
        shot(page, artifacts, "colour-draw")

        # Back to a grayscale model: the pad takes its size and turns gray, the colours go.
        choose_model(page, "vae")
        wait_until(page, "() => document.querySelector('#pad').width === 28", timeout_s=5)
        assert pad.evaluate("c => c.height") == 28
        assert pad.evaluate(COLOURFUL_PIXELS) == 0
        expect(pad).to_have_attribute("aria-label", "Drawing pad, 28 by 28 pixels: draw with a mouse, finger or pen")
        expect(page.get_by_label("Ink", exact=True)).to_be_hidden()
    finally:
        page.context.close()
    assert console == [], "the page logged errors or left the service"
