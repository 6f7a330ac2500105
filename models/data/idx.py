"""The MNIST family's IDX files: Fashion-MNIST where Debian's `dataset-fashion-mnist` puts it, and
MNIST, which `download_mnist` fetches only when a user asks (`python -m models.data download mnist`)."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from models.data.dataset import DatasetError, ImageDataset

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]

DEFAULT_DIRS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path(os.path.expanduser("~/.cache/genserve/mnist")),
}
CLASSES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# IDX type codes (the third byte of the magic number) and the numpy dtype each stands for.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, checking its header against its size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises these for truncated or non-gzip files
        raise DatasetError(f"{path}: cannot read IDX file ({e})") from e
    if len(data) < 4:
        raise DatasetError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(f"{path}: header declares {ndim} dimensions but the file ends early")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_len != expected:
        raise DatasetError(
            f"{path}: header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(data) - header_len}; it is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.exists():
            return candidate
    raise DatasetError(f"{stem}[.gz] not found in {data_dir}")


def load_idx_dataset(name: str, split: str, data_dir: str | Path | None, limit: int | None) -> ImageDataset:
    """A split of an IDX set as uint8 images [N, 1, 28, 28] and labels."""
    directory = Path(data_dir) if data_dir else DEFAULT_DIRS[name]
    if not directory.is_dir():
        hint = {
            "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir",
            "mnist": "fetch it with `python -m models.data download mnist` or pass --data-dir",
        }[name]
        raise DatasetError(f"{name}: no data in {directory}; {hint}")
    images_file, labels_file = SPLIT_FILES[split]
    images = read_idx(_find(directory, images_file))
    labels = read_idx(_find(directory, labels_file))
    if images.ndim == 3:
        images = images[:, None]  # grayscale: add the channel axis
    elif images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    else:
        raise DatasetError(f"{name}: images have {images.ndim} dimensions, expected 3 or 4")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(f"{name}: {images.shape[0]} images but labels of shape {labels.shape}")
    if images.dtype != np.uint8:
        raise DatasetError(f"{name}: images are {images.dtype}, expected 8-bit")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageDataset(
        name=name,
        split=split,
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(CLASSES[name]),
    )


def download_mnist(data_dir: str | Path = DEFAULT_DIRS["mnist"], mirror: str = MNIST_MIRROR) -> Path:
    """Fetch MNIST's four IDX files into `data_dir` (only when a user asks for it)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for stems in SPLIT_FILES.values():
        for stem in stems:
            target = data_dir / f"{stem}.gz"
            if target.exists():
                continue
            url = f"{mirror}{stem}.gz"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    payload = response.read()
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                raise DatasetError(
                    f"cannot download {url} ({e}); this machine may be offline. "
                    f"Copy the MNIST IDX files into {data_dir} by hand instead."
                ) from e
            target.write_bytes(payload)
            read_idx(target)  # fail now, not at training time, on a bad download
    return data_dir
