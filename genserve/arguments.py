"""The Python API's arguments, checked as the HTTP API's schemas check them, and turned into what
the shared rules (models.inference) take: latent specs, images, seeds.

A latent is what the API's JSON says, `{"seed": 3}`, `{"seeds": [1, 2]}`, `{"vector": [...]}`,
`{"class": "Sneaker"}` or `{"image": ...}`, or in short an int (a seed), a str (a class), a
sequence of numbers or a tensor (a vector), or an image. An image is a PIL image, a path to a PNG
or JPEG file, its bytes, or a float tensor [C, H, W] in [0, 1] of the model's shape. Every bad
argument is a ValueError with a one-line message.
"""

from __future__ import annotations

import io
import math
import numbers
from os import PathLike
from pathlib import Path

import torch
from PIL import Image

from app.imaging import ImageError, load_image
from models.data.folder import upright
from models.inference import InvalidArgument

LATENT_KINDS = ("seed", "seeds", "vector", "class", "image")
SEED_MAX = 2**63 - 1
# The largest image file read: the service takes at most 1 MiB (max_image_bytes); a script may
# hand over larger files (the pixel count is capped by the decoder either way).
MAX_IMAGE_BYTES = 64 << 20
INTERPOLATIONS = ("slerp", "lerp")
SPACINGS = ("linear", "gaussian")


def seed(value, what: str = "seed") -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
        raise InvalidArgument(f"{what} must be an integer from 0 to {SEED_MAX}, not {value!r}")
    return int(value)


def optional_seed(value) -> int | None:
    return None if value is None else seed(value)


def count(value, what: str, least: int = 1) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        raise InvalidArgument(f"{what} must be an integer of at least {least}, not {value!r}")
    return int(value)


def number(value, what: str, *, zero: bool = False) -> float:
    """A finite number above 0 (with `zero`, at least 0)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        raise InvalidArgument(f"{what} must be a number {'of at least' if zero else 'above'} 0, not {value!r}")
    return float(value)


def choice(value, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InvalidArgument(f"{what} must be one of {', '.join(choices)}, not {value!r}")
    return value


def latent_spec(value, what: str) -> tuple[str, object]:
    """A latent, in the API's form or in short -> (kind, value) of LATENT_KINDS."""
    if isinstance(value, dict):
        given = [kind for kind in LATENT_KINDS if kind in value]
        if len(value) != 1 or len(given) != 1:
            raise InvalidArgument(f"{what}: a latent is exactly one of {', '.join(LATENT_KINDS)}; got {sorted(value)}")
        kind = given[0]
        value = value[kind]
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        kind = "seed"
    elif isinstance(value, str):
        kind = "class"
    elif isinstance(value, (Image.Image, bytes, PathLike)):
        kind = "image"
    elif isinstance(value, (torch.Tensor, list, tuple)):
        kind = "vector"
    else:
        raise InvalidArgument(f"{what}: {type(value).__name__} is not a latent: give a seed (int), a class (str), "
                              f"a vector, an image or a dict such as {{'seed': 3}}")
    if kind == "seed":
        return kind, seed(value, f"{what}'s seed")
    if kind == "seeds":
        if not isinstance(value, (list, tuple, range)) or not value:
            raise InvalidArgument(f"{what}: seeds must be a non-empty list of seeds")
        return kind, [seed(s, f"{what}'s seeds") for s in value]
    if kind == "vector":
        vector = torch.as_tensor(value, dtype=torch.float32).cpu()
        if vector.dim() != 1 or not vector.isfinite().all():
            raise InvalidArgument(f"{what}: a vector latent is one row of finite numbers")
        return kind, vector
    if kind == "class" and not isinstance(value, str):
        raise InvalidArgument(f"{what}: a class is one of the model's class names, not {value!r}")
    return kind, value


def term(value, index: int) -> tuple[tuple[str, object], float]:
    """A term of latent arithmetic -> (its latent spec, its weight)."""
    if isinstance(value, dict) and "latent" in value and set(value) <= {"latent", "weight"}:
        latent, weight = value["latent"], value.get("weight", 1.0)
    elif isinstance(value, tuple) and len(value) == 2:
        latent, weight = value
    else:
        latent, weight = value, 1.0
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise InvalidArgument(f"term {index}: its weight must be a finite number, not {weight!r}")
    return latent_spec(latent, f"term {index}"), float(weight)


def image_tensor(image, image_shape: tuple[int, int, int], background: str) -> torch.Tensor:
    """An image -> float [1, C, H, W] in [0, 1] for a model of `image_shape`, decoded and converted
    by the service's own upload decoder (app.imaging.load_image): the same pixels as an upload of
    the same file."""
    if isinstance(image, torch.Tensor):
        pixels = image.detach().float().cpu()
        pixels = pixels[None] if pixels.dim() == 3 else pixels
        if tuple(pixels.shape) != (1, *image_shape) or not ((pixels >= 0) & (pixels <= 1)).all():
            raise InvalidArgument(f"an image tensor must be [C, H, W] = {list(image_shape)}, in [0, 1]")
        return pixels
    if isinstance(image, (str, PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such image file")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise InvalidArgument(f"{path}: larger than {MAX_IMAGE_BYTES} bytes")
        payload = path.read_bytes()
    elif isinstance(image, Image.Image):
        payload = _png(image)
    elif isinstance(image, (bytes, bytearray)):
        payload = bytes(image)
    else:
        raise InvalidArgument(f"{type(image).__name__} is not an image: give a PIL image, a path to a PNG or "
                              f"JPEG file, its bytes, or a tensor [C, H, W] in [0, 1]")
    try:
        return load_image(payload, image_shape, MAX_IMAGE_BYTES, background)
    except ImageError as e:
        raise InvalidArgument(str(e)) from None


def _png(image: Image.Image) -> bytes:
    """A PIL image as the PNG file the service would be sent, turned upright first (PNG keeps no
    EXIF orientation)."""
    buffer = io.BytesIO()
    try:
        upright(image).save(buffer, format="PNG")
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"a PIL image of mode {image.mode} cannot be saved as PNG ({e}): convert it to RGB") \
            from None
    return buffer.getvalue()
