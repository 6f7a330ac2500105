"""Row LSTM PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks").

An LSTM runs down the image a row at a time. Its input-to-state part is a convolution over the
current row, masked to the pixel and the one on its left (computed for the whole image at once);
its state-to-state part is a width-3 convolution over the previous row's hidden state, so each
pixel's state sees a triangle of rows above it, and the first layer's 7x7 type-A mask brings in
the pixels to its left. Layers are joined by residual connections; the head is the PixelCNN's
256-way softmax per sub-pixel, and a class, if any, biases every gate as in the conditional
PixelCNN.

Unlike the PixelCNN, training is sequential too: the recurrence visits the rows one after another.
The incremental sampler keeps each layer's row state, so a pixel costs one column of every layer
instead of a pass over the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.autoregressive import AutoregressiveModel, softmax_head


@dataclass
class PixelRNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    channels: int = 64  # the LSTM's hidden and cell state, and the residual stream
    n_layers: int = 4
    first_kernel: int = 7  # the type-A masked convolution in front of the LSTMs
    head_channels: int = 256
    n_classes: int = 0  # > 0: class-conditional
    levels: int = 256

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)  # JSON gives a list back
        if self.first_kernel < 3 or self.first_kernel % 2 == 0:
            raise ValueError("first_kernel must be odd and >= 3")


class RowLSTM(nn.Module):
    """One Row LSTM layer over a [B, C, H, W] map, with a residual 1x1 projection of its output."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        # Kernel (1, 2) over a row padded by one on the left: the pixel and its left neighbour.
        self.input_to_state = nn.Conv2d(channels, 4 * channels, (1, 2))
        self.state_to_state = nn.Conv1d(channels, 4 * channels, 3, padding=1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)
        self.class_bias = nn.Embedding(n_classes, 4 * channels) if n_classes else None

    def input_gates(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The input-to-state pre-activations of every pixel of x [B, C, H, W'] -> [B, 4C, H, W'],
        the class bias included."""
        pre = self.input_to_state(F.pad(x, (1, 0)))
        return pre if cond is None else pre + self.class_bias(cond)[:, :, None, None]

    def cell(self, gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM update from pre-activations [B, 4C, ...] and the previous cell state [B, C, ...]."""
        o, f, i, g = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        b, channels, _, width = x.shape
        h = x.new_zeros(b, channels, width)
        c = x.new_zeros(b, channels, width)
        rows = []
        # unbind, not indexing: each index's backward would write a zero tensor of the whole map.
        for from_input in self.input_gates(x, cond).unbind(2):
            h, c = self.cell(from_input + self.state_to_state(h), c)
            rows.append(h)
        return x + self.out(torch.stack(rows, dim=2))


class PixelRNN(AutoregressiveModel):
    family = "pixelrnn"
    Config = PixelRNNConfig
    summary = "Autoregressive: an LSTM runs down the image row by row; exact likelihood."

    def __init__(self, config: PixelRNNConfig):
        super().__init__()
        self.config = config
        c_img, k = config.image_shape[0], config.first_kernel
        self.first = nn.Conv2d(c_img, config.channels, k, padding=k // 2)
        mask = torch.ones(k, k)
        mask[k // 2, k // 2:] = 0  # type A: the pixel itself and those right of it ...
        mask[k // 2 + 1:] = 0  # ... and every row below
        self.register_buffer("first_mask", mask, persistent=False)
        self.layers = nn.ModuleList(RowLSTM(config.channels, config.n_classes) for _ in range(config.n_layers))
        self.head = softmax_head(config.channels, config.head_channels, c_img, config.levels)

    def _first_weight(self) -> torch.Tensor:
        return self.first.weight * self.first_mask

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> logits [B, C, levels, H, W] of p(x_i | x_<i)."""
        self._check_cond(cond)
        h = F.conv2d(x * 2 - 1, self._first_weight(), self.first.bias, padding=self.config.first_kernel // 2)
        for layer in self.layers:
            h = layer(h, cond)
        return self._logits(h)

    def incremental_sampler(self, cond: torch.Tensor | None) -> "_StateSampler":
        self._check_cond(cond)
        return _StateSampler(self, cond)


class _StateSampler:
    """Keeps, for every layer, the LSTM state of the last finished row and the current row's
    inputs and states, and computes only the columns not computed yet: one column per pixel in
    raster order. Columns or rows skipped (known pixels of a completion) are caught up in one
    slice the next time they are needed, from `out`, where they are final by then."""

    def __init__(self, model: PixelRNN, cond: torch.Tensor | None):
        self.model, self.cond = model, cond
        self.row, self.col = -1, -1  # the current row, and its last computed column
        self.h = self.c = None  # per layer: the state of row `row - 1`, [B, C, W]
        self.row_h = self.row_c = self.row_in = None  # per layer: row `row` so far, [B, C, W]
        self.recurrent = None  # per layer: state_to_state(h), fixed for the whole row

    def _first_layer(self, out: torch.Tensor, i: int, lo: int, hi: int) -> torch.Tensor:
        """The masked first convolution at row i, columns lo..hi-1 -> [B, C, hi - lo]."""
        half = self.model.config.first_kernel // 2
        padded = F.pad(out * 2 - 1, (half, half, half, 0))  # rows below i are masked out anyway
        window = padded[:, :, i:i + half + 1, lo:hi + 2 * half]
        weight = self.model._first_weight()[:, :, : half + 1]
        return F.conv2d(window, weight, self.model.first.bias)[:, :, 0]

    def _start_row(self, out: torch.Tensor, i: int) -> None:
        model, (b, _, _, width) = self.model, out.shape
        channels = model.config.channels
        if self.row < 0:
            zeros = out.new_zeros(b, channels, width)
            self.h, self.c = [zeros] * len(model.layers), [zeros] * len(model.layers)
        else:
            self._advance(out, width - 1)  # finish the current row: its states feed the next
            self.h, self.c = self.row_h, self.row_c
        for skipped in range(self.row + 1, i):  # rows skipped whole (known): run them, then go on
            self._begin(out, skipped)
            self._advance(out, width - 1)
            self.h, self.c = self.row_h, self.row_c
        self._begin(out, i)

    def _begin(self, out: torch.Tensor, i: int) -> None:
        width = out.shape[3]
        self.row, self.col = i, -1
        self.recurrent = [layer.state_to_state(h) for layer, h in zip(self.model.layers, self.h)]
        self.row_in = [out.new_zeros(h.shape[0], h.shape[1], width) for h in self.h]
        self.row_h = [torch.zeros_like(h) for h in self.h]
        self.row_c = [torch.zeros_like(c) for c in self.c]

    def _advance(self, out: torch.Tensor, j: int) -> torch.Tensor | None:
        """Compute columns col+1..j of the current row in every layer; returns the last layer's
        output there [B, C, j - col], or None if nothing was left."""
        lo, hi = self.col + 1, j + 1
        if lo >= hi:
            return None
        x = self._first_layer(out, self.row, lo, hi)
        for n, layer in enumerate(self.model.layers):
            self.row_in[n][:, :, lo:hi] = x
            # The input-to-state kernel also reads the column left of lo, computed before.
            left = max(lo - 1, 0)
            gates = layer.input_gates(self.row_in[n][:, :, None, left:hi], self.cond)[:, :, 0, lo - left:]
            h, c = layer.cell(gates + self.recurrent[n][:, :, lo:hi], self.c[n][:, :, lo:hi])
            self.row_h[n][:, :, lo:hi], self.row_c[n][:, :, lo:hi] = h, c
            x = x + layer.out(h[:, :, None])[:, :, 0]
        self.col = j
        return x

    def logits(self, out: torch.Tensor, i: int, j: int) -> torch.Tensor:
        if i != self.row:
            self._start_row(out, i)
        if j <= self.col:
            raise ValueError("the incremental sampler goes forward in raster order only")
        x = self._advance(out, j)
        return self.model._logits(x[:, :, None, -1:])[..., 0, 0]
