"""Gated PixelCNN (van den Oord et al. 2016): masked convolutions over the pixels before each one.

Training sees every pixel's context at once (one parallel pass); sampling is still one pixel at a
time. The likelihood, the class posterior and the samplers' shared loop are in
`models.autoregressive`; a pixel's channels are independent given the earlier pixels (simpler
than the paper's R -> G -> B masking).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.autoregressive import AutoregressiveModel, softmax_head
from models.layers import GatedBlock


@dataclass
class PixelCNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    channels: int = 64
    n_layers: int = 7
    kernel_size: int = 7
    head_channels: int = 256
    n_classes: int = 0  # > 0: class-conditional
    levels: int = 256

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)  # JSON gives a list back


class PixelCNN(AutoregressiveModel):
    family = "pixelcnn"
    Config = PixelCNNConfig
    summary = "Autoregressive: masked convolutions see the pixels before each one; exact likelihood."

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        if config.kernel_size < 3 or config.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd and >= 3")
        self.config = config
        c_img = config.image_shape[0]
        self.blocks = nn.ModuleList(
            GatedBlock(c_img if i == 0 else config.channels, config.channels, config.kernel_size,
                       first=(i == 0), n_classes=config.n_classes)
            for i in range(config.n_layers)
        )
        self.head = softmax_head(config.channels, config.head_channels, c_img, config.levels)

    # -- the network -------------------------------------------------------------------------

    def _vertical_pass(self, x: torch.Tensor, biases: list) -> list[torch.Tensor]:
        """The vertical stack's contribution to each block of the horizontal stack."""
        v, contributions = x, []
        for block, bias in zip(self.blocks, biases):
            v, to_horizontal = block.vertical(v, bias)
            contributions.append(to_horizontal)
        return contributions

    def _horizontal_pass(self, x: torch.Tensor, contributions: list, biases: list) -> torch.Tensor:
        """Logits [B, C, levels, H, W] from the input and the vertical stack's contributions."""
        h = x
        for block, from_vertical, bias in zip(self.blocks, contributions, biases):
            h = block.horizontal(h, from_vertical, bias)
        return self._logits(h)

    def _biases(self, cond: torch.Tensor | None) -> list:
        self._check_cond(cond)
        return [block.embed(cond) for block in self.blocks]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> logits [B, C, levels, H, W] of p(x_i | x_<i)."""
        inputs = x * 2 - 1
        biases = self._biases(cond)
        return self._horizontal_pass(inputs, self._vertical_pass(inputs, biases), biases)

    def incremental_sampler(self, cond: torch.Tensor | None) -> "_RowSampler":
        return _RowSampler(self, self._biases(cond))


class _RowSampler:
    """The vertical stack runs once per row, on the rows up to it; the horizontal stack runs on
    that one row for each pixel, cut at the current column."""

    def __init__(self, model: PixelCNN, biases: list):
        self.model, self.biases = model, biases
        self.row, self.contributions = None, None

    def logits(self, out: torch.Tensor, i: int, j: int) -> torch.Tensor:
        if self.row != i:
            # Rows <= i of the input are all the vertical stack needs for row i.
            self.row = i
            self.contributions = [t[:, :, i:i + 1, :]
                                  for t in self.model._vertical_pass(out[:, :, : i + 1] * 2 - 1, self.biases)]
        row = out[:, :, i:i + 1, : j + 1] * 2 - 1
        cut = [t[..., : j + 1] for t in self.contributions]
        return self.model._horizontal_pass(row, cut, self.biases)[..., 0, j]
