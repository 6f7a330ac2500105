"""The page starts with the work: on a 1366x768 screen with nine models the picker (one sample of
each), the chosen model's controls and its result are all in the first view; every result
downloads as the API's own file (PNG, GIF where the endpoint animates, JSON); traverse results are
drawn at the size of a sample grid of as many images."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import MANY, open_page, require_browser, wait_until
from .test_page import assert_same_images, draw_stroke, loaded_images, shot

require_browser()

from playwright.sync_api import expect  # noqa: E402

WIDTH, HEIGHT = 1366, 768
THUMBNAILS_LOADED = "() => document.querySelectorAll('#models img.thumb').length === {count}"


def in_first_view(locator) -> None:
    box = locator.bounding_box()
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT and box["x"] + box["width"] <= WIDTH, \
        f"{locator} lies at {box}, outside the first {WIDTH}x{HEIGHT} view"


def test_nine_models_the_controls_and_the_result_fit_the_first_view(browser, many_server, many_api, console,
                                                                    artifacts):
    models = many_api.get("/v1/models").raise_for_status().json()["models"]
    assert len(models) >= MANY
    page = open_page(browser, many_server, console, viewport={"width": WIDTH, "height": HEIGHT})
    try:
        page.goto("/")
        loaded_images(page.locator("#sample-result img"), 16)
        # One chip per model, each with a sample of its own: the API's first sample at the model's size.
        wait_until(page, THUMBNAILS_LOADED.format(count=len(models)), timeout_s=60)
        for info in models:
            chip = page.locator("label.model-card").filter(has=page.locator(f'input[value="{info["name"]}"]'))
            in_first_view(chip)
            sample = many_api.post(f"/v1/models/{info['name']}/samples", params={"format": "json"},
                                   json={"n": 1, "seed": 0}).raise_for_status().json()["images"][0]
            assert_same_images(loaded_images(chip.locator("img.thumb"), 1), [sample])
        # The chosen model's controls, its result and the result's download, with no scrolling.
        panel = page.locator("#panel-sample")
        for control in ("Images", "Seed"):
            in_first_view(panel.get_by_label(control, exact=True))
        in_first_view(panel.get_by_role("button", name="Generate"))
        in_first_view(page.locator("#sample-result"))
        in_first_view(panel.get_by_role("button", name="Download PNG"))
        assert page.evaluate("window.scrollY") == 0
        shot(page, artifacts, "first-view")
    finally:
        page.context.close()
    assert console == [], "the page logged errors or left the service"


def download(page, button) -> tuple[str, bytes]:
    with page.expect_download() as info:
        button.click()
    return info.value.suggested_filename, Path(info.value.path()).read_bytes()


def api_file(api, model: str, op: str, body: dict, format: str | None = None) -> bytes:
    response = api.post(f"/v1/models/{model}/{op}", json=body, params={"format": format} if format else None)
    assert response.status_code == 200, response.text
    return response.content


def test_every_result_downloads_as_the_apis_file_and_traversals_are_drawn_as_sample_grids(page, api, artifacts):
    page.goto("/?model=vae&tab=sample&n=9&seed=4")
    grid = page.locator("#sample-result")
    loaded_images(grid.locator("img"), 9)
    name, content = download(page, page.locator("#panel-sample").get_by_role("button", name="Download PNG"))
    assert name == "vae-samples-seed4.png"
    assert content == api_file(api, "vae", "samples", {"n": 9, "seed": 4})
    sample_grid = grid.bounding_box()

    # Traverse: its default, nine steps along one axis, is drawn as the grid of nine samples was.
    page.get_by_role("tab", name="Traverse").click()
    walk = page.locator("#traverse-result")
    loaded_images(walk.locator("img"), 9)
    box = walk.bounding_box()
    assert abs(box["width"] - sample_grid["width"]) <= 1 and abs(box["height"] - sample_grid["height"]) <= 1, \
        (box, sample_grid)
    traverse = {"center": {"seed": 0}, "axes": [{"dim": 0}], "steps": 9, "extent": 3, "spacing": "linear"}
    panel = page.locator("#panel-traverse")
    assert download(page, panel.get_by_role("button", name="Download PNG"))[1] == \
        api_file(api, "vae", "traverse", traverse)
    name, content = download(page, panel.get_by_role("button", name="Download GIF"))
    assert name == "vae-traverse.gif" and content == api_file(api, "vae", "traverse", traverse, "gif")

    page.get_by_role("tab", name="Interpolate").click()
    loaded_images(page.locator("#interpolate-strip img"), 8)
    interpolation = {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 8, "method": "slerp"}
    assert download(page, page.locator("#panel-interpolate").get_by_role("button", name="Download GIF"))[1] == \
        api_file(api, "vae", "interpolate", interpolation, "gif")

    page.get_by_role("tab", name="Arithmetic").click()
    loaded_images(page.locator("#arithmetic-equation img"), 4)
    panel = page.locator("#panel-arithmetic")
    terms = [{"latent": {"class": panel.locator(f'fieldset[data-latent="{name}"] select').input_value()},
              "weight": weight} for name, weight in zip("abc", (1, -1, 1))]
    seed = int(panel.get_by_label("Noise seed").input_value())
    assert download(page, panel.get_by_role("button", name="Download PNG"))[1] == api_file(
        api, "vae", "arithmetic", {"terms": terms, "n": 4, "noise": 0.3, "seed": seed, "show_terms": True})

    # Draw: the reconstruction's PNG and the likelihood's JSON, of the pad as drawn.
    page.get_by_role("tab", name="Draw or upload").click()
    draw_stroke(page, [(8, 6), (20, 22)])
    image = page.locator("#pad").evaluate("c => c.toDataURL('image/png').split(',')[1]")
    panel = page.locator("#panel-draw")
    panel.get_by_role("button", name="Reconstruct").click()
    loaded_images(page.locator("#reconstruct-result img"), 2)
    assert download(page, page.locator("#reconstruct-result").get_by_role("button", name="Download PNG"))[1] == \
        api_file(api, "vae", "reconstruct", {"image": image})
    panel.get_by_role("button", name="Likelihood").click()
    expect(page.locator("#likelihood-result")).to_be_visible()
    name, content = download(page, page.locator("#likelihood-result").get_by_role("button", name="Download JSON"))
    assert name == "vae-likelihood.json"
    assert json.loads(content) == json.loads(api_file(api, "vae", "likelihood", {"image": image}))
    shot(page, artifacts, "downloads")
