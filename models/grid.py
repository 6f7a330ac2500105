"""Image grids and PNG bytes from float image tensors, with numpy and zlib (no torchvision)."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import torch


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
    """uint8 [H, W, 1|3] -> PNG bytes (8-bit gray or RGB, no row filter); zlib's `compress_level`
    0-9. Written with zlib directly: Pillow writes its chunks in Python, and for the service's
    small grids that was most of the time (0.37 against 0.13 ms for a 16-image grid), paid 28
    times by an event stream."""
    height, width, channels = array.shape
    rows = np.zeros((height, 1 + width * channels), np.uint8)  # each row: filter type 0, then pixels
    rows[:, 1:] = array.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(png_bytes(make_grid(images, nrow=nrow)))
