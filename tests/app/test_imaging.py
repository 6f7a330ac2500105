"""Upload decoding: formats, modes, sizes and hostile files; and the PNGs the service writes."""

from __future__ import annotations

import base64
import io
import random
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging import ImageError, decode_base64, grid_png, load_image, pngs_base64
from models.data import folder
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


# -- EXIF (issue 37): an orientation that can be read turns the image, anything else is ignored ---

def tiff(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """An EXIF block (a little-endian TIFF header and one IFD) of (tag, type, count, value bytes)."""
    data_offset = 8 + 2 + 12 * len(entries) + 4
    table, data = struct.pack("<H", len(entries)), b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, kind, count, data_offset + len(data))
            data += value
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + table + struct.pack("<I", 0) + data


ORIENTATION, X_RESOLUTION, Y_RESOLUTION, SOFTWARE, EXIF_IFD = 0x0112, 0x011A, 0x011B, 0x0131, 0x8769
SHORT, ASCII, LONG, RATIONAL = 3, 2, 4, 5
TURNED = tiff([(ORIENTATION, SHORT, 1, struct.pack("<H", 6)), (X_RESOLUTION, RATIONAL, 1, struct.pack("<II", 72, 1)),
               (Y_RESOLUTION, RATIONAL, 1, struct.pack("<II", 72, 1)), (SOFTWARE, ASCII, 6, b"genny\0"),
               (EXIF_IFD, LONG, 1, struct.pack("<I", 8))])


def wide_ramp() -> np.ndarray:
    """A 40 x 20 picture whose every turn differs: the orientation applied is visible."""
    return (np.arange(20 * 40).reshape(20, 40) % 251).astype(np.uint8)


def test_the_issues_exif_decodes_upright_in_uploads_and_folders(tmp_path):
    """Issue 37's 150-byte PNG: Orientation 6 beside a YResolution typed as text once gave a 500
    (TypeError in ImageOps.exif_transpose) and aborted folder training. Its orientation is read
    and applied; the bad tag is ignored."""
    exif = tiff([(ORIENTATION, SHORT, 1, struct.pack("<H", 6)), (Y_RESOLUTION, ASCII, 4, b"abc\0")])
    payload = encoded(Image.fromarray(wide_ramp()), exif=exif)
    turned = np.rot90(wide_ramp(), -1)  # orientation 6: turn 90 degrees clockwise
    x = load_image(payload, (1, 40, 20), MiB)
    assert np.array_equal((x[0, 0] * 255).round().byte().numpy(), turned)
    (tmp_path / "odd.png").write_bytes(payload)
    assert np.array_equal(folder.decode_image(tmp_path / "odd.png", 20)[:, :, 0], turned[10:30])


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's word on each corrupt tag it skips
def test_fuzzed_exif_never_stops_an_image_from_decoding(tmp_path):
    """Seeded byte mutations of a camera-like EXIF block, in a PNG and a JPEG: every one decodes,
    as an upload and as a training-folder file (the old path raised TypeError, struct.error,
    AttributeError or SyntaxError on 1 in 150)."""
    rng = random.Random(37)
    picture = Image.fromarray(wide_ramp())
    for case in range(300):
        exif = bytearray(TURNED)
        for _ in range(rng.randint(1, 4)):
            exif[rng.randrange(6, len(exif))] = rng.randrange(256)  # past "Exif\0\0", which names the block
        kind = ("PNG", "JPEG")[case % 2]
        payload = encoded(picture, kind, exif=bytes(exif))
        x = load_image(payload, (1, 28, 28), MiB)
        assert x.shape == (1, 1, 28, 28), case
        path = tmp_path / f"{case}.{kind.lower()}"
        path.write_bytes(payload)
        assert folder.decode_image(path, 16).shape == (16, 16, 3), case
