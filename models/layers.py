"""The gated, causal convolution block of the gated PixelCNN (van den Oord et al. 2016).

Two stacks run side by side. The vertical stack at row i sees the input rows <= i; it reaches the
horizontal stack only shifted down by one row, so the horizontal stack at (i, j) sees every row
above i in full. The horizontal stack sees the pixels left of j in row i (and, after the first
block, its own column j, which by then carries only information from before (i, j)). Together the
receptive field is every pixel before (i, j) in raster order, with no blind spot.

Causality comes from padding and kernel shapes rather than masks, so each stack is a plain conv:
the vertical kernel is (k//2 + 1) x k over rows padded on top, the horizontal kernel 1 x (k//2 + 1)
over columns padded on the left (1 x k//2, excluding the current pixel, in the first block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row down by one (row 0 becomes zeros), so row i holds what row i - 1 held."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedBlock(nn.Module):
    """One block of both stacks. `first` makes it a type-A block that never sees the current pixel."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool, n_classes: int = 0):
        super().__init__()
        half = kernel_size // 2
        self.first = first
        self.half = half
        self.vertical_conv = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel_size))
        self.horizontal_conv = nn.Conv2d(in_channels, 2 * channels, (1, half if first else half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)
        # A per-class bias on the gates' pre-activations, as in the paper's conditional PixelCNN.
        self.class_bias = nn.Embedding(n_classes, 4 * channels) if n_classes else None

    def vertical(self, v: torch.Tensor, class_bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the vertical stack's output and its contribution to the horizontal stack."""
        pre = self.vertical_conv(F.pad(v, (self.half, self.half, self.half, 0)))
        to_horizontal = self.vertical_to_horizontal(shift_down(pre))
        if class_bias is not None:
            pre = pre + class_bias[:, : pre.shape[1], None, None]
        return gate(pre), to_horizontal

    def horizontal(self, h: torch.Tensor, from_vertical: torch.Tensor, class_bias: torch.Tensor | None) -> torch.Tensor:
        """Advance the horizontal stack, given the vertical stack's contribution for the same rows."""
        if self.first:
            # Pad one column more than the kernel reaches and drop the last output: excludes pixel j.
            pre = self.horizontal_conv(F.pad(h, (self.half, 0)))[:, :, :, : h.shape[3]]
        else:
            pre = self.horizontal_conv(F.pad(h, (self.half, 0)))
        pre = pre + from_vertical
        if class_bias is not None:
            pre = pre + class_bias[:, pre.shape[1]:, None, None]
        out = self.horizontal_out(gate(pre))
        return out if self.first else h + out

    def embed(self, cond: torch.Tensor | None) -> torch.Tensor | None:
        if self.class_bias is None or cond is None:
            return None
        return self.class_bias(cond)
