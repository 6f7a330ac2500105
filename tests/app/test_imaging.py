"""Upload decoding: formats, modes, sizes and hostile files; and the PNGs the service writes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging import ImageError, decode_base64, grid_png, load_image, pngs_base64
from models.grid import to_uint8

GRAY = (1, 28, 28)
MiB = 1 << 20


def encoded(image: Image.Image, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def ramp(width: int = 28, height: int = 28) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


def test_8bit_gray_png_passes_unchanged():
    x = load_image(encoded(Image.fromarray(ramp())), GRAY, MiB)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal((x[0, 0] * 255).round().to(torch.uint8), torch.from_numpy(ramp()))


def test_16bit_png_is_scaled_to_8_bits():
    levels = (ramp().astype(np.uint16) * 257)
    x = load_image(encoded(Image.fromarray(levels)), GRAY, MiB)
    assert torch.equal((x[0, 0] * 255).round().to(torch.uint8), torch.from_numpy(ramp()))


def test_palette_png_is_expanded():
    palette = Image.fromarray(ramp()).convert("P")
    assert palette.mode == "P"
    x = load_image(encoded(palette), GRAY, MiB)
    assert np.abs(x[0, 0].numpy() * 255 - ramp()).max() <= 1


def test_alpha_is_composited_over_the_models_background():
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:, :14, 3] = 255  # left half opaque white, right half transparent white
    x = load_image(encoded(Image.fromarray(rgba)), GRAY, MiB)[0, 0]  # black by default: Fashion-MNIST's
    assert x[:, :14].eq(1).all() and x[:, 14:].eq(0).all()
    rgba[..., :3] = (200, 0, 0)  # opaque red on the left; the transparent right becomes the white ground
    x = load_image(encoded(Image.fromarray(rgba)), (3, 28, 28), MiB, background="white")[0].mul(255).round()
    assert x[0, :, :14].eq(200).all() and x[1:, :, :14].eq(0).all() and x[:, :, 14:].eq(255).all()


def test_rgb_becomes_luma_and_gray_becomes_rgb():
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 255
    x = load_image(encoded(Image.fromarray(red)), GRAY, MiB)
    assert torch.allclose(x, torch.full_like(x, 76 / 255))  # ITU-R 601: 0.299 * 255
    rgb = load_image(encoded(Image.fromarray(ramp())), (3, 28, 28), MiB)
    assert rgb.shape == (1, 3, 28, 28) and torch.equal(rgb[0, 0], rgb[0, 2])


def test_jpeg_is_accepted():
    x = load_image(encoded(Image.fromarray(ramp()), "JPEG", quality=95), GRAY, MiB)
    assert np.abs(x[0, 0].numpy() * 255 - ramp()).max() < 12


def test_any_size_is_stretched_to_the_model_size():
    x = load_image(encoded(Image.fromarray(np.full((300, 100), 200, np.uint8))), GRAY, MiB)
    assert x.shape == (1, 1, 28, 28) and torch.allclose(x, torch.full_like(x, 200 / 255))


@pytest.mark.parametrize("payload, message", [
    (b"GIF89a", "not a readable"),
    (encoded(Image.new("L", (28, 28)), "GIF"), "not a readable"),
    (encoded(Image.fromarray(ramp()))[:-30], "corrupt"),
    (encoded(Image.new("L", (5000, 5000))), "pixels"),
])
def test_bad_images_are_refused_with_a_reason(payload, message):
    with pytest.raises(ImageError, match=message):
        load_image(payload, GRAY, MiB)


def test_animated_png_is_refused():
    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    with pytest.raises(ImageError, match="animated"):
        load_image(encoded(frames[0], save_all=True, append_images=frames[1:]), GRAY, MiB)


def test_size_limit_is_checked_before_decoding():
    payload = encoded(Image.fromarray(ramp()))
    with pytest.raises(ImageError, match="bytes"):
        load_image(payload, GRAY, len(payload) - 1)
    with pytest.raises(ImageError, match="larger than"):
        decode_base64(base64.b64encode(b"x" * 4000).decode(), 3000)


def test_base64_accepts_data_urls_and_refuses_garbage():
    payload = encoded(Image.fromarray(ramp()))
    text = base64.b64encode(payload).decode()
    assert decode_base64(text, MiB) == payload
    assert decode_base64("data:image/png;base64," + text, MiB) == payload
    with pytest.raises(ImageError, match="base64"):
        decode_base64("not*base64", MiB)


def test_outgoing_pngs_round_trip():
    images = torch.rand(3, 1, 28, 28)
    expected = (images * 255).round().to(torch.uint8)
    for text, image in zip(pngs_base64(images), expected):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
        assert np.array_equal(decoded, image[0].numpy())
    grid = Image.open(io.BytesIO(grid_png(images, nrow=3)))
    assert grid.size == (2 + 3 * 30, 32) and grid.mode == "L"


def test_gray_levels_round_to_nearest_half_to_even_and_clamp():
    # Every level's midpoint, the levels themselves, and values past both ends, as torch rounds them.
    levels = torch.arange(256, dtype=torch.float32)
    values = torch.cat([(levels + 0.5) / 255, levels / 255, torch.tensor([-0.3, -1e-6, 1 + 1e-6, 1.7]),
                        torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2])
    images = values.view(-1, 1, 1, 1)
    expected = images.clamp(0, 1).mul(255).round().to(torch.uint8).numpy().transpose(0, 2, 3, 1)
    assert np.array_equal(to_uint8(images), expected)
