"""The demo page in a real headless Chromium against the real app, acting as a user would.

Every image the page shows is checked to have loaded (naturalWidth > 0) and to be the image the
API gives for the same request (called here with httpx); every tab leaves a screenshot.
"""

from __future__ import annotations

import base64
import io
import math
import re
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

from .conftest import open_page, require_browser, wait_until

require_browser()

from playwright.sync_api import expect  # noqa: E402

expect.set_options(timeout=120_000)  # a PixelCNN on a busy CPU takes its time

TABS = {"sample": {"sample"}, "interpolate": {"interpolate"}, "traverse": {"traverse"}, "arithmetic": {"arithmetic"},
        "draw": {"reconstruct", "complete", "likelihood"}}


# -- helpers ------------------------------------------------------------------------------------

def loaded_images(locator, count: int) -> list[str]:
    """Wait for `count` images under `locator` to load; return their base64 PNGs."""
    expect(locator).to_have_count(count)
    wait_until(locator.first.page, "els => els.every(e => e.complete && e.naturalWidth > 0)",
               locator.element_handles())
    return locator.evaluate_all("els => els.map(e => e.src.split(',')[1])")


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=np.int16)


def assert_same_images(shown: list[str], expected: list[str]) -> None:
    """Same images; within one gray level, as the API allows when requests are batched together."""
    assert len(shown) == len(expected)
    for i, (a, b) in enumerate(zip(shown, expected)):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1, f"image {i} differs from the API's"


def api_images(api, model: str, op: str, body: dict) -> dict:
    response = api.post(f"/v1/models/{model}/{op}", params={"format": "json"}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def choose_model(page, name: str) -> None:
    page.locator("label.model-card", has=page.locator(f'input[value="{name}"]')).click()
    expect(page.locator(f'input[name=model][value="{name}"]')).to_be_checked()


def latent(page, panel: str, name: str, models: dict, model: str, cls: str | None, seed: int) -> dict:
    """Set picker `name` of `panel` to class `cls` when the model has class latents, else to `seed`."""
    fieldset = page.locator(f'#panel-{panel} fieldset[data-latent="{name}"]')
    if cls and models[model]["conditional"] and cls in models[model]["classes"]:
        fieldset.get_by_label("Class", exact=True).check()
        fieldset.locator("select").select_option(cls)
        return {"class": cls}
    if models[model]["conditional"]:  # otherwise seeds are all there is, and no switch is shown
        fieldset.get_by_label("Seed", exact=True).check()
    fieldset.locator("input[type=number]").fill(str(seed))
    return {"seed": seed}


def describe(spec: dict) -> str:
    """How the page names a latent."""
    return spec["class"] if "class" in spec else f"seed {spec['seed']}"


def canvas_png(page) -> str:
    return page.locator("#pad").evaluate("c => c.toDataURL('image/png').split(',')[1]")


def draw_stroke(page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through `points`, given in pad pixels (0..28 for a 28x28 model)."""
    pad = page.locator("#pad")
    box = pad.bounding_box()
    width, height = pad.evaluate("c => [c.width, c.height]")
    at = [(box["x"] + x / width * box["width"], box["y"] + y / height * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for point in at[1:]:
        page.mouse.move(*point, steps=6)
    page.mouse.up()


def shot(page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


# -- tests --------------------------------------------------------------------------------------

def metric_leaves(metrics: dict, prefix: str = "") -> dict:
    """A card's figures as the page keys them: nested ones as "outer.inner"; the class shares apart."""
    leaves = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            if key != "class_shares" or prefix:
                leaves.update(metric_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def test_model_picker_shows_the_models_and_tabs_follow_capabilities(page, models, artifacts):
    page.goto("/?n=1")  # n=1 keeps the samples that each model switch shows cheap
    cards = page.locator("label.model-card")
    expect(cards).to_have_count(len(models))
    about = page.locator("#about")
    for name, info in models.items():
        card = cards.filter(has=page.locator(f'input[value="{name}"]'))
        expect(card.locator(".name")).to_have_text(name)
        expect(card.locator(".family")).to_have_text(info["family"])

        choose_model(page, name)
        # Its card, one click away (closed, its text is there): the family's own line (from the API),
        # the data, every figure in plain words with the technical name as its tooltip, the chart.
        expect(about.locator("summary")).to_contain_text(f"{name} · {info['summary']}")
        expect(about.locator(".meta")).to_contain_text(info["dataset"])
        terms = about.locator("dt")
        shown = dict(zip((term.get_attribute("title") for term in terms.all()),
                         about.locator("dd").all_text_contents()))
        plain = terms.all_text_contents()
        expected = metric_leaves(info["metrics"])
        assert set(shown) == set(expected), name
        assert all("_" not in words for words in plain), plain
        for key, value in expected.items():
            if isinstance(value, (int, float)):
                assert math.isclose(float(shown[key]), value, rel_tol=1e-3), key
        shares = info["metrics"].get("class_shares")
        if shares:
            bars = about.locator("svg.shares rect")
            expect(bars).to_have_count(len(shares))
            heights = {bar.get_attribute("data-class"): float(bar.get_attribute("height")) for bar in bars.all()}
            assert all(heights[a] >= heights[b] for a in shares for b in shares if shares[a] > shares[b])

        for tab, needs in TABS.items():
            button = page.locator(f"#tab-{tab}")
            if needs & set(info["capabilities"]):
                expect(button).to_be_enabled()
            else:
                expect(button).to_be_disabled()
        # A sampler that takes steps offers them, starting at its default.
        steps = page.locator("#sample-steps")
        if info.get("sampling_steps"):
            expect(steps).to_have_value(str(info["sampling_steps"][0]))
        else:
            expect(steps).to_be_hidden()
        expect(page.locator("#sample-result img")).to_have_attribute("alt", re.compile(f"^{name} sample 1 of 1"))
        assert parse_qs(urlparse(page.url).query)["model"] == [name]

    # One click opens the card.
    expect(about.locator("dl")).to_be_hidden()
    about.locator("summary").click()
    expect(about.locator("dl")).to_be_visible()
    shot(page, artifacts, "model-card")

    # Keyboard: arrow keys move through the enabled tabs only (WAI-ARIA tabs).
    choose_model(page, "dcgan")
    page.locator("#tab-sample").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-interpolate")).to_be_focused()
    expect(page.locator("#tab-interpolate")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-interpolate")).to_be_visible()
    page.keyboard.press("End")
    expect(page.locator("#tab-draw")).to_be_focused()  # a DCGAN reconstructs uploads by projection
    page.keyboard.press("Home")
    expect(page.locator("#tab-sample")).to_be_focused()
    shot(page, artifacts, "models")


def test_sample_tab(page, api, models, artifacts):
    page.goto("/")
    choose_model(page, "dcgan")
    panel = page.locator("#panel-sample")
    panel.get_by_label("Images").fill("9")
    panel.get_by_label("Seed", exact=True).fill("42")
    panel.get_by_role("button", name="Generate").click()
    expect(page.locator("#sample-seed-shown")).to_have_text("42")
    shown = loaded_images(page.locator("#sample-result img"), 9)
    expected = api_images(api, "dcgan", "samples", {"n": 9, "seed": 42})
    assert expected["seed"] == 42
    assert_same_images(shown, expected["images"])
    expect(page.locator("#sample-result img").nth(4)).to_have_attribute("alt", "dcgan sample 5 of 9, seed 46")
    query = parse_qs(urlparse(page.url).query)
    assert {key: query[key] for key in ("model", "tab", "n", "seed")} == {
        "model": ["dcgan"], "tab": ["sample"], "n": ["9"], "seed": ["42"]}

    # "New seed" rolls a seed and samples it; the seed shown is the one the API used (X-Seed).
    panel.get_by_role("button", name="New seed").click()
    expect(page.locator("#sample-seed-shown")).not_to_have_text("42")
    seed = int(page.locator("#sample-seed-shown").inner_text())
    assert panel.get_by_label("Seed", exact=True).input_value() == str(seed)
    shown = loaded_images(page.locator("#sample-result img"), 9)
    grid = api.post("/v1/models/dcgan/samples", json={"n": 9, "seed": seed})
    assert grid.headers["X-Seed"] == str(seed)
    assert_same_images(shown, api_images(api, "dcgan", "samples", {"n": 9, "seed": seed})["images"])

    # A class, where the model takes one.
    body = {"n": 9, "seed": seed}
    if models["dcgan"]["conditional"]:
        cls = models["dcgan"]["classes"][-1]
        panel.get_by_label("Class").select_option(cls)
        panel.get_by_role("button", name="Generate").click()
        expect(page.locator("#sample-result img").first).to_have_attribute(
            "alt", f"dcgan sample 1 of 9, seed {seed}, class {cls}")
        body["class"] = cls
    shown = loaded_images(page.locator("#sample-result img"), 9)
    assert_same_images(shown, api_images(api, "dcgan", "samples", body)["images"])
    shot(page, artifacts, "sample")

    # The share link alone reproduces the grid in a fresh page.
    link = page.locator("#panel-sample a.share").get_attribute("href")
    other = page.context.new_page()
    other.goto(link)
    expect(other.locator("#sample-seed-shown")).to_have_text(str(seed))
    assert_same_images(loaded_images(other.locator("#sample-result img"), 9), shown)


def test_sample_pixelcnn_shows_progress_and_temperature(page, api, models, artifacts):
    held = []  # the page's request waits here until the progress indicator has been seen
    stream = re.compile(r"/v1/models/pixelcnn/samples$")  # the event stream, not the picker's thumbnail
    page.route(stream, lambda route: held.append(route))
    page.goto("/?model=pixelcnn&tab=sample&n=2&seed=5&temperature=0.8")  # a shared link
    panel = page.locator("#panel-sample")
    progress = panel.get_by_role("status").filter(has_text="Sampling")
    expect(progress).to_be_visible()
    expect(page.locator("#panel-sample .output")).to_have_attribute("aria-busy", "true")
    assert len(held) == 1
    # It fades in after a moment (so that quick answers do not flicker); wait for it to show fully.
    wait_until(page, "() => getComputedStyle(document.querySelector('#panel-sample .progress')).opacity === '1'")
    shot(page, artifacts, "sample-pixelcnn-progress")
    held[0].continue_()
    page.unroute(stream)
    expect(page.locator("#sample-seed-shown")).to_have_text("5")
    expect(progress).to_be_hidden()
    expect(page.locator("output[for=sample-temperature]")).to_have_text("0.8")
    shown = loaded_images(page.locator("#sample-result img"), 2)
    assert_same_images(shown, api_images(api, "pixelcnn", "samples", {"n": 2, "seed": 5, "temperature": 0.8})["images"])

    # As a user: a class, one image, the keyboard on the temperature slider.
    body = {"n": 1, "seed": 6}
    panel.get_by_label("Images").fill("1")
    panel.get_by_label("Seed", exact=True).fill("6")
    panel.get_by_label("Temperature").focus()
    page.keyboard.press("ArrowRight")  # 0.8 + one step of 0.05
    expect(page.locator("output[for=sample-temperature]")).to_have_text("0.85")
    body["temperature"] = 0.85
    if models["pixelcnn"]["conditional"]:
        panel.get_by_label("Class").select_option(models["pixelcnn"]["classes"][1])
        body["class"] = models["pixelcnn"]["classes"][1]
    panel.get_by_label("Seed", exact=True).press("Enter")  # submits the form, as Enter does
    expect(page.locator("#sample-result img")).to_have_count(1)
    expect(page.locator("#sample-seed-shown")).to_have_text("6")
    expect(page.locator("#sample-elapsed")).to_have_text(re.compile(r"^drawn in \d+\.\d\d s$"))
    shown = loaded_images(page.locator("#sample-result img"), 1)
    assert_same_images(shown, api_images(api, "pixelcnn", "samples", body)["images"])
    shot(page, artifacts, "sample-pixelcnn")


def test_interpolate_tab(page, api, models, artifacts):
    page.goto("/")
    choose_model(page, "vae")
    page.get_by_role("tab", name="Interpolate").click()
    loaded_images(page.locator("#interpolate-strip img"), 8)  # what the tab shows by itself

    start = latent(page, "interpolate", "start", models, "vae", None, 3)
    classes = models["vae"]["classes"]
    end = latent(page, "interpolate", "end", models, "vae", classes[7] if len(classes) > 7 else None, 11)
    panel = page.locator("#panel-interpolate")
    panel.locator("input[name=method][value=lerp]").check()
    panel.get_by_label("Steps").fill("6")
    panel.get_by_role("button", name="Interpolate").click()
    expect(panel.locator(".caption-extra")).to_have_text(f"lerp from {describe(start)} to {describe(end)} in 6 steps")
    shown = loaded_images(page.locator("#interpolate-strip img"), 6)
    expected = api_images(api, "vae", "interpolate", {"start": start, "end": end, "steps": 6, "method": "lerp"})
    assert_same_images(shown, expected["images"])

    # Scrub with the keyboard: the big frame follows the slider.
    frame = page.locator("#interpolate-frame")
    page.get_by_label("Frame").focus()
    page.keyboard.press("End")
    expect(page.locator("#interpolate-position")).to_have_text("6 / 6")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#interpolate-position")).to_have_text("4 / 6")
    assert frame.evaluate("img => img.naturalWidth") > 0
    assert frame.get_attribute("src").split(",")[1] == shown[3]
    # Clicking a frame of the strip selects it too.
    page.locator("#interpolate-strip button").nth(1).click()
    expect(page.get_by_label("Frame")).to_have_value("1")
    assert frame.get_attribute("src").split(",")[1] == shown[1]
    shot(page, artifacts, "interpolate")


def test_arithmetic_tab(page, api, models, artifacts):
    page.goto("/")
    choose_model(page, "dcgan")
    page.get_by_role("tab", name="Arithmetic").click()
    classes = models["dcgan"]["classes"]
    a = latent(page, "arithmetic", "a", models, "dcgan", "Ankle boot" if "Ankle boot" in classes else None, 5)
    b = latent(page, "arithmetic", "b", models, "dcgan", "Sneaker" if "Sneaker" in classes else None, 6)
    c = latent(page, "arithmetic", "c", models, "dcgan", None, 7)
    panel = page.locator("#panel-arithmetic")
    panel.get_by_label("Results").fill("3")
    panel.get_by_label("Noise", exact=True).fill("0.5")
    panel.get_by_label("Noise seed").fill("9")
    panel.get_by_role("button", name="Compute").click()
    expect(panel.locator(".caption-extra")).to_have_text(
        f"{describe(a)} − {describe(b)} + {describe(c)}, noise seed 9")
    equation = loaded_images(page.locator("#arithmetic-equation img"), 4)
    variations = loaded_images(page.locator("#arithmetic-variations img"), 2)
    expected = api_images(api, "dcgan", "arithmetic", {
        "terms": [{"latent": a, "weight": 1}, {"latent": b, "weight": -1}, {"latent": c, "weight": 1}],
        "n": 3, "noise": 0.5, "seed": 9, "show_terms": True})
    assert_same_images(equation + variations, expected["images"])
    expect(page.locator("#arithmetic-equation figcaption")).to_have_text(
        [f"A: {describe(a)}", f"B: {describe(b)}", f"C: {describe(c)}", "result"])
    shot(page, artifacts, "arithmetic")


def test_draw_tab_vae_reconstruct_and_likelihood(page, api, artifacts):
    page.goto("/")
    choose_model(page, "vae")
    page.get_by_role("tab", name="Draw or upload").click()
    expect(page.get_by_role("button", name="Complete")).to_be_hidden()
    # A trouser-ish shape: two legs from a waistband.
    draw_stroke(page, [(9, 5), (19, 5)])
    draw_stroke(page, [(10, 5), (9, 24)])
    draw_stroke(page, [(18, 5), (19, 24)])
    image = canvas_png(page)
    assert pixels(image).max() > 200, "the strokes did not reach the canvas"

    page.get_by_role("button", name="Reconstruct").click()
    shown = loaded_images(page.locator("#reconstruct-result img"), 2)
    assert_same_images(shown, api_images(api, "vae", "reconstruct", {"image": image})["images"])

    page.get_by_role("button", name="Likelihood").click()
    expected = api.post("/v1/models/vae/likelihood", json={"image": image}).raise_for_status().json()
    expect(page.locator("#bits-per-dim")).to_have_text(
        f"{'' if expected['exact'] else '≤ '}{expected['bits_per_dim']:.3f}")
    shot(page, artifacts, "draw-vae")


def test_draw_tab_pixelcnn_upload_complete_and_likelihood(page, api, artifacts, tmp_path):
    upload = tmp_path / "bag.png"
    picture = Image.new("RGB", (56, 56), "white")  # a dark bag on white: the page makes it gray
    picture.paste((30, 30, 30), (10, 20, 46, 50))
    picture.paste((30, 30, 30), (20, 8, 36, 22))
    picture.paste((255, 255, 255), (24, 12, 32, 22))
    picture.save(upload)

    page.goto("/")
    choose_model(page, "pixelcnn")
    page.get_by_role("tab", name="Draw or upload").click()
    expect(page.get_by_role("button", name="Reconstruct")).to_be_hidden()
    pixel = "() => document.querySelector('#pad').getContext('2d').getImageData(14, 18, 1, 1).data[0]"
    page.locator("#pad-upload").set_input_files(upload)
    wait_until(page, f"() => ({pixel})() < 60")  # the upload is on the pad, dark on light
    page.get_by_role("button", name="Invert").click()  # light on dark, like the training images
    wait_until(page, f"() => ({pixel})() > 200")
    draw_stroke(page, [(3, 3), (8, 3)])
    image = canvas_png(page)

    page.get_by_role("button", name="Likelihood").click()
    expected = api.post("/v1/models/pixelcnn/likelihood", json={"image": image}).raise_for_status().json()
    assert expected["exact"]
    expect(page.locator("#bits-per-dim")).to_have_text(f"{expected['bits_per_dim']:.3f}")

    panel = page.locator("#panel-draw")
    panel.get_by_label("Keep top rows").fill("20")
    panel.get_by_label("Completions").fill("2")
    panel.get_by_label("Seed").fill("3")
    panel.get_by_role("button", name="Complete").click()
    shown = loaded_images(page.locator("#complete-result img"), 3)
    body = {"image": image, "keep_rows": 20, "n": 2, "seed": 3, "temperature": 1.0}
    assert_same_images(shown, api_images(api, "pixelcnn", "complete", body)["images"])
    expect(page.locator("#likelihood-result")).to_be_visible()
    shot(page, artifacts, "draw-pixelcnn")


def test_api_errors_are_readable_messages(page, api, console, artifacts, tmp_path):
    """The page's own checks keep bad values from the API, so the API's real error answers (and
    a few failures no API should give) are replayed into the page's request."""
    def real(response):
        return dict(status=response.status_code, json=response.json()), response.json()["detail"]

    too_many, too_many_detail = real(api.post("/v1/models/dcgan/samples", json={"n": 1000}))
    unable, unable_detail = real(api.post("/v1/models/pixelcnn/reconstruct", json={"image": "aGVsbG8="}))
    unknown, unknown_detail = real(api.post("/v1/models/nope/samples", json={}))
    assert too_many["status"] == 422 and unable["status"] == 400 and unknown["status"] == 404
    cases = [
        (too_many, f"n: {too_many_detail[0]['msg']} (HTTP 422)"),
        (unable, f"{unable_detail} (HTTP 400)"),
        (unknown, f"{unknown_detail} (HTTP 404)"),
        (dict(status=500, content_type="text/plain", body="Internal Server Error"), "(HTTP 500)"),
        (dict(status=200, json={"images": ["bm90IGEgcG5n"], "seed": 1}), "an image the browser cannot show"),
    ]

    page.goto("/?model=dcgan&n=4&seed=1")
    loaded_images(page.locator("#sample-result img"), 4)
    # The picker's samples in first (each a request like the tab's), so the replies below reach the tab only.
    wait_until(page, "() => !document.querySelector('#models span.thumb')", timeout_s=60)
    samples = "**/v1/models/dcgan/samples*"
    alert = page.locator("#panel-sample").get_by_role("alert")
    generate = page.get_by_role("button", name="Generate")
    for answer, message in cases:
        page.route(samples, (lambda answer: lambda route: route.fulfill(**answer))(answer))
        generate.click()
        expect(alert).to_contain_text(message)
        expect(page.locator("#sample-result")).to_be_hidden()  # never a broken or stale image
        assert page.evaluate("[...document.images].filter(i => i.checkVisibility())"
                             ".every(i => i.complete && i.naturalWidth > 0)")
        page.unroute(samples)
    shot(page, artifacts, "error")

    page.route(samples, lambda route: route.abort())
    generate.click()
    expect(alert).to_contain_text("Could not reach the service")
    page.unroute(samples)

    generate.click()  # the real API again: the message goes, the images come back
    expect(alert).to_be_hidden()
    loaded_images(page.locator("#sample-result img"), 4)

    # A file that is not an image, in the draw tab.
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    choose_model(page, "vae")
    page.get_by_role("tab", name="Draw or upload").click()
    page.locator("#pad-upload").set_input_files(not_an_image)
    expect(page.locator("#panel-draw").get_by_role("alert")).to_have_text(
        "notes.png is not an image this browser can read")
    console.clear()  # the browser logs the failed requests above, as it should


def test_phone_layout_and_touch_drawing(browser, server, console, api, artifacts):
    page = open_page(browser, server, console, viewport={"width": 390, "height": 844},
                     device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page.goto("/?model=dcgan&n=16&seed=3")
        loaded_images(page.locator("#sample-result img"), 16)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
        shot(page, artifacts, "phone-sample")

        choose_model(page, "vae")
        page.get_by_role("tab", name="Draw or upload").click()
        page.locator("#pad").scroll_into_view_if_needed()
        box = page.locator("#pad").bounding_box()
        cdp = page.context.new_cdp_session(page)
        points = [(box["x"] + box["width"] * f, box["y"] + box["height"] * 0.5) for f in (0.2, 0.4, 0.6, 0.8)]
        for kind, (x, y) in zip(["touchStart", "touchMove", "touchMove", "touchMove"], points):
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        image = canvas_png(page)
        assert (pixels(image)[14, 6:22] > 200).all(), "a finger stroke across the middle was not drawn"
        page.get_by_role("button", name="Reconstruct").click()
        shown = loaded_images(page.locator("#reconstruct-result img"), 2)
        assert_same_images(shown, api_images(api, "vae", "reconstruct", {"image": image})["images"])
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
        shot(page, artifacts, "phone-draw")
    finally:
        page.context.close()
    assert console == []
