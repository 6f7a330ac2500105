"""The latent explorer in Chromium: the Traverse tab and the 2-D manifold, the VAE's latent map, and
PixelCNN samples drawn row by row from the event stream."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import require_browser, wait_until
from .test_page import api_images, assert_same_images, loaded_images, shot

require_browser()

from playwright.sync_api import expect  # noqa: E402


def test_traverse_tab_walks_dimensions_and_toward_a_class(page, api, models, artifacts):
    page.goto("/?model=vae&tab=traverse")  # opens with the defaults: dimension 0 through seed 0
    default = {"center": {"seed": 0}, "axes": [{"dim": 0}], "steps": 9, "extent": 3, "spacing": "linear"}
    shown = loaded_images(page.locator("#traverse-result img"), 9)
    assert_same_images(shown, api_images(api, "vae", "traverse", default)["images"])

    form = page.locator("#traverse-form")
    form.get_by_label("Second axis: kind").select_option("toward")
    form.get_by_label("Second axis: class").select_option("Sneaker")
    form.get_by_label("Steps").fill("4")
    form.get_by_label("gaussian").check()
    form.get_by_role("button", name="Traverse", exact=True).click()
    body = {"center": {"seed": 0}, "axes": [{"dim": 0}, {"toward": {"class": "Sneaker"}}], "steps": 4,
            "extent": 3, "spacing": "gaussian"}
    expect(page.locator("#traverse-result img").first).to_have_attribute("alt", "dimension 0 × toward Sneaker "
                                                                        "through seed 0, gaussian: step 1, 1 of 4")
    shown = loaded_images(page.locator("#traverse-result img"), 16)
    assert_same_images(shown, api_images(api, "vae", "traverse", body)["images"])
    shot(page, artifacts, "traverse")


def test_the_2d_manifold_of_vae2d_and_the_latent_map_decode_on_click(page, api, models, artifacts):
    if "vae2d" not in models:
        pytest.fail("weights/vae2d is not served", pytrace=False)
    page.goto("/?model=vae2d&tab=traverse")
    page.get_by_role("button", name="Draw the 2-D manifold").click()
    manifold = {"center": {"vector": [0, 0]}, "axes": [{"dim": 0}, {"dim": 1}], "steps": 16, "spacing": "gaussian"}
    expect(page.locator("#traverse-result img").first).to_have_attribute("alt", "the learned 2-D manifold: "
                                                                        "dimensions 0 × 1 at the normal quantiles: "
                                                                        "step 1, 1 of 16")
    shown = loaded_images(page.locator("#traverse-result img"), 256)
    assert_same_images(shown, api_images(api, "vae2d", "traverse", manifold)["images"])
    shot(page, artifacts, "vae2d-manifold")

    # The VAE's map of test latents; a click on a point decodes it.
    page.locator("label.model-card").filter(has=page.locator('input[value="vae"]')).click()
    latent_map = api.get("/v1/models/vae/latent-map").raise_for_status().json()
    dots = page.locator("#latent-map-plot circle")
    expect(dots).to_have_count(len(latent_map["points"]))
    x, y, label = latent_map["points"][5]
    dots.nth(5).dispatch_event("click")  # points overlap: address this one, as a pointer on it would
    expect(page.locator("#latent-map-caption")).to_contain_text(f"class {latent_map['classes'][label]}")
    vector = np.array(latent_map["mean"]) + x * np.array(latent_map["components"][0]) \
        + y * np.array(latent_map["components"][1])
    expected = api_images(api, "vae", "arithmetic", {"terms": [{"latent": {"vector": vector.tolist()}}], "n": 1,
                                                     "show_terms": False})["images"]
    assert_same_images(loaded_images(page.locator("#latent-map-image"), 1), expected)
    shot(page, artifacts, "vae-latent-map")


# The page's record of every row count it showed, kept by an observer installed before the run:
# the value each change replaced (several changes may reach one callback, so the value read then
# would repeat the last), the final value being the attribute itself.
RECORD_ROWS = """() => {
  window.rowsReplaced = [];
  const output = document.querySelector('#panel-sample .output');
  new MutationObserver((records) => records.forEach((record) => window.rowsReplaced.push(record.oldValue)))
    .observe(output, { attributes: true, attributeFilter: ['data-rows-drawn'], attributeOldValue: true });
}"""


def test_pixelcnn_samples_are_drawn_row_by_row_from_the_event_stream(page, api, artifacts):
    page.goto("/?model=dcgan&tab=sample&n=3&seed=9")
    loaded_images(page.locator("#sample-result img"), 3)
    page.evaluate(RECORD_ROWS)
    page.locator("label.model-card").filter(has=page.locator('input[value="pixelcnn"]')).click()
    wait_until(page, "() => window.rowsReplaced.length > 1")
    expect(page.locator("#sample-live")).to_be_visible()
    shot(page, artifacts, "pixelcnn-rows")
    expect(page.locator("#sample-seed-shown")).to_have_text("9")
    shown = loaded_images(page.locator("#sample-result img"), 3)
    assert_same_images(shown, api_images(api, "pixelcnn", "samples", {"n": 3, "seed": 9})["images"])
    replaced = page.evaluate("window.rowsReplaced")  # the first replaced the last run's value
    rows = [int(r) for r in replaced[1:]] + [int(page.locator("#panel-sample .output").get_attribute("data-rows-drawn"))]
    assert rows == list(range(rows[0], 29)) and rows[0] <= 1, "every row was shown, in order"
    expect(page.locator("#sample-live")).to_be_hidden()
    shot(page, artifacts, "pixelcnn-done")
