"""The in-memory form of every data set: uint8 images [N, C, H, W], labels and class names."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DatasetError(RuntimeError):
    """A dataset is missing or malformed; the message says what to do about it."""


@dataclass
class ImageDataset:
    """Images as uint8 [N, C, H, W] with int64 labels and the names of the classes."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]  # empty for unlabelled data (every label 0)
    # What transparency was composited on: the IDX sets have none and black grounds; a folder's
    # images are composited on white (models.folder).
    background: str = "black"
    files: list[str] = field(default_factory=list)  # a folder's images, relative to it, in order

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1], the convention every model's inputs and outputs use."""
    return images.float().div_(255.0)
