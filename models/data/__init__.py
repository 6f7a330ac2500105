"""Image datasets as uint8 tensors: the IDX sets (Fashion-MNIST, the default, and MNIST) and
folders of your own images, each split into train and test.

    dataset.py   ImageDataset, the form every loader returns
    idx.py       the MNIST family's IDX files
    folder.py    a folder of images, one subfolder per class
    emoji.py     fetches Google's Noto emoji into such a folder
    augment.py   differentiable augmentations (a GAN's critic's view)
"""

from __future__ import annotations

from pathlib import Path

from models.data.dataset import DatasetError, ImageDataset, to_float
from models.data.folder import FOLDER, load_folder
from models.data.idx import CLASSES, FASHION_MNIST_CLASSES, SPLIT_FILES, load_idx_dataset, read_idx

DATASETS = [*CLASSES, FOLDER]
__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "FOLDER", "DatasetError", "ImageDataset", "dataset_of_card",
           "load_dataset", "read_idx", "to_float"]


def load_dataset(name: str = "fashion-mnist", split: str = "train", data_dir: str | Path | None = None,
                 limit: int | None = None, *, image_size: int | None = None, channels: int | None = None,
                 cache_dir: str | Path | None = None, quiet: bool = False, upscale: bool = False) -> ImageDataset:
    """Load a split of a known dataset as uint8 images [N, C, H, W] and labels: [N, 1, 28, 28] for
    the IDX sets, [N, C, image_size, image_size] for a folder (`models.folder`, which alone reads
    `image_size`, `channels`, `cache_dir`, `quiet` and `upscale`).

    `limit` keeps the first images only (for smoke tests and tiny training runs).
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")
    if split not in SPLIT_FILES:
        raise DatasetError(f"unknown split {split!r}; known: {sorted(SPLIT_FILES)}")
    if name == FOLDER:
        return load_folder(data_dir, split, image_size, channels, limit, cache_dir, quiet, upscale)
    if image_size is not None or channels is not None or upscale:
        raise DatasetError(f"{name} is 28x28 gray: --image-size, --channels and --upscale are for --dataset folder")
    return load_idx_dataset(name, split, data_dir, limit)


def dataset_of_card(card: dict, split: str, data_dir: str | Path | None = None, limit: int | None = None,
                    cache_dir: str | Path | None = None, quiet: bool = False) -> ImageDataset:
    """A split of the data a checkpoint was trained on, as its card records it (a folder: its
    path, unless `data_dir` names where it is now, at the size and channels of the model)."""
    name = card.get("dataset") or "fashion-mnist"
    if name != FOLDER:
        return load_dataset(name, split, data_dir, limit)
    channels, size, _ = card["image_shape"]
    return load_dataset(FOLDER, split, data_dir or card.get("data_dir"), limit, image_size=size, channels=channels,
                        cache_dir=cache_dir, quiet=quiet, upscale=bool(card.get("upscale")))
