"""Images in and out: the PNGs the service answers with, and safe decoding of uploads.

Outgoing PNGs come from `models.grid` (the project's one encoder). Uploads are PNG or JPEG, at
most `max_image_bytes` decoded and MAX_PIXELS declared, one frame. They are turned upright and
converted to the model's channels by the folder loader's own functions, `models.data.folder.upright`
(the EXIF orientation, ignored when it cannot be read) and `to_rgb` (16-bit scaled to 8-bit in
integers, palettes expanded, alpha composited over the model's background, what its training images
stand on: black for Fashion-MNIST, white for an image folder), then to gray by ITU-R 601 luma for
a gray model, and stretched to the model's height and width with Pillow's bilinear filter
(antialiased when shrinking; the aspect ratio is not kept). The result lies on the 8-bit grid, as
the training data does. No step holds a float copy of the full image, `app.routes.uploads` lets
DECODE_SLOTS uploads decode at once, and once none decodes, `release_freed_memory` hands what
they freed back to the system (issue 37: 40 uploads of 2048 x 2048 16-bit PNGs at once took the
server from 0.5 to 3.4 GiB, and 1.3 GiB stayed resident; docs/reliability.md has the figures now).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import io
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from models.data.folder import to_rgb, upright
from models.grid import make_grid, png_bytes, to_uint8

# Refuse before decoding: a small file may declare a huge image (a bomb). 4096 x 4096 already let a
# 32 KB 16-bit PNG cost 0.8 s and 400 MB to decode; the models are 28 x 28.
MAX_PIXELS = 2048 * 2048
# Uploads decoded at once (the rest wait their turn, off the threads): a 2048 x 2048 16-bit PNG
# peaks at some 40 MB in Pillow and numpy while it decodes.
DECODE_SLOTS = 4
FORMATS = ("PNG", "JPEG")
# zlib level 1 encodes a 64-image grid in half the time of the default 6 (2.4 ms against 5.0) for
# 6% more bytes: 7% of the server's CPU time per VAE grid (docs/benchmarks.md).
PNG_LEVEL = 1
GIF_FRAME_MS = 150
RESAMPLE = Image.Resampling.BILINEAR
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,")


class ImageError(ValueError):
    """An upload that is not a usable image; the message says why."""


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Hand the memory that decoding freed back to the system. glibc keeps freed blocks in the
    arena of the thread that freed them, and the pool's threads each have one: without this, a
    burst of large uploads left its peak resident for good (1.3 GiB of 3.4). Cheap when there is
    little to hand back (tens of microseconds)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# -- out ----------------------------------------------------------------------------------------

def grid_png(images: torch.Tensor, nrow: int | None = None) -> bytes:
    """float [N, C, H, W] in [0, 1] -> one PNG grid, 2 px padding, nrow images a row."""
    return png_bytes(make_grid(images, nrow=nrow), PNG_LEVEL)


def gif_bytes(images: torch.Tensor, frame_ms: int = GIF_FRAME_MS) -> bytes:
    """float [N, C, H, W] in [0, 1] -> an animated GIF that loops forever, one frame per image in
    order (gray frames are exact; colour ones are quantised to GIF's 256 colours). Pillow shows
    consecutive identical images as one frame for their total time."""
    tiles = to_uint8(images)
    frames = [Image.fromarray(tile[:, :, 0] if tile.shape[2] == 1 else tile) for tile in tiles]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=frame_ms)
    return buffer.getvalue()


def pngs_base64(images: torch.Tensor) -> list[str]:
    """float [N, C, H, W] in [0, 1] -> one base64 PNG per image."""
    return [base64.b64encode(png_bytes(tile, PNG_LEVEL)).decode("ascii") for tile in to_uint8(images)]


# -- in -----------------------------------------------------------------------------------------

def decode_base64(text: str, max_bytes: int) -> bytes:
    """Base64 (optionally a `data:image/...;base64,` URL) -> bytes, refusing more than max_bytes."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    if len(text) > 4 * (max_bytes // 3 + 1):
        raise ImageError(f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"not valid base64 ({e})") from None


def load_image(payload: bytes, image_shape: tuple[int, int, int], max_bytes: int,
               background: str = "black") -> torch.Tensor:
    """PNG or JPEG bytes -> float [1, C, H, W] in [0, 1] for a model of `image_shape` (C, H, W),
    transparency composited over `background` ("black" or "white")."""
    if len(payload) > max_bytes:
        raise ImageError(f"the image is {len(payload)} bytes; at most {max_bytes} are accepted")
    channels, height, width = image_shape
    try:
        with Image.open(io.BytesIO(payload), formats=FORMATS) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"the image declares {image.width}x{image.height} pixels; "
                                 f"at most {MAX_PIXELS} pixels are accepted")
            if getattr(image, "n_frames", 1) > 1:
                raise ImageError("animated or multi-frame images are not accepted")
            image.load()
            image = to_rgb(upright(image), background)
            if channels == 1:
                image = image.convert("L")  # ITU-R 601 luma; a gray image comes back exactly
            if image.size != (width, height):
                image = image.resize((width, height), RESAMPLE)
            pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    except ImageError:
        raise
    except UnidentifiedImageError:  # its message names a BytesIO object, of no use to a client
        raise ImageError("not a readable PNG or JPEG image") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"not a readable PNG or JPEG image ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:  # what Pillow raises on corrupt data
        raise ImageError(f"the image is corrupt or truncated ({e})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0).float().div(255)
