"""A small CNN classifier: labels generated samples and supplies the features for the Frechet distance."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.card import MAX_CLASSES
from models.contract import Family


@dataclass
class ClassifierConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    n_classes: int = field(default=10, metadata={"bounds": (0, MAX_CLASSES)})
    width: int = field(default=32, metadata={"bounds": (1, 1024)})
    feature_dim: int = field(default=128, metadata={"bounds": (1, 4096)})
    dropout: float = field(default=0.3, metadata={"bounds": (0, 1)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)


class Classifier(Family):
    family = "classifier"
    Config = ClassifierConfig
    capabilities = ()  # evaluation's judge: not a generator, so the service does not serve it

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        k = config.width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True)]

        self.body = nn.Sequential(
            *block(c, k), *block(k, k), nn.MaxPool2d(2),
            *block(k, 2 * k), *block(2 * k, 2 * k), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * k * (h // 4) * (w // 4), config.feature_dim), nn.ReLU(True),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> penultimate features [B, feature_dim]."""
        return self.body(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, n_classes]."""
        return self.head(self.dropout(self.features(x)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """What `models.train` minimises: cross-entropy on the labels."""
        logits = self(x)
        return F.cross_entropy(logits, y), {"accuracy": (logits.argmax(1) == y).float().mean().item()}
