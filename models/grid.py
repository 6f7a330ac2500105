"""Image grids and PNG bytes from float image tensors, with numpy and Pillow (no torchvision)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C], rounding to the nearest gray level (half to
    even). In numpy: the server makes one per answer on its event loop, and on one image five
    torch calls take 21 us against numpy's 13 (the same bytes)."""
    array = images.detach().float().cpu().numpy()
    return np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile images into one uint8 [H, W, C] array, torchvision style.

    `nrow` is the number of images per row (default ceil(sqrt(n))); `padding` pixels of
    `pad_value` separate the cells and frame the grid.
    """
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    ncol = min(nrow or math.ceil(math.sqrt(n)), n)
    nrows = math.ceil(n / ncol)
    grid = np.full((padding + nrows * (h + padding), padding + ncol * (w + padding), c), pad_value, np.uint8)
    for i in range(n):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[top:top + h, left:left + w] = tiles[i]
    return grid


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """uint8 [H, W, 1|3] -> PNG bytes (8-bit gray or RGB); zlib's `compress_level` 0-9."""
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(
        buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(png_bytes(make_grid(images, nrow=nrow)))
