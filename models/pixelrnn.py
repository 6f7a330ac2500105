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

from models.autoregressive import AutoregressiveModel, HeadStep, PixelPush, RowConv, softmax_head


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

    def stepper(self, cond: torch.Tensor | None, batch: int) -> "_RowLSTMStepper":
        self._check_cond(cond)
        return _RowLSTMStepper(self, cond, batch)


class _RowLSTMStepper:
    """The Row LSTM one pixel at a time: per row, the masked first convolution over the rows above
    and every layer's state-to-state product over the previous row's states run once (each a
    convolution over the whole row); per pixel, each layer pushes its input's contribution into
    the gate pre-activations of its column and the next (`acc`, one matrix product), then runs the
    LSTM cell on that column alone. tanh(g) is 2 sigmoid(2g) - 1, so one sigmoid covers all four
    gates (the g-quarter of the pre-activations is kept doubled); columns of ones carry biases.
    A row's states feed the next row, so every pixel is stepped, known ones too (`every_pixel`).
    """

    every_pixel = True

    def __init__(self, model: PixelRNN, cond: torch.Tensor | None, batch: int):
        config = model.config
        c_img, height, width = config.image_shape
        c, half = config.channels, config.first_kernel // 2
        self.batch, self.c, self.width, self.half = batch, c, width, half
        weight = next(model.parameters())
        new = dict(dtype=weight.dtype, device=weight.device)
        double_g = torch.ones(4 * c, **new)
        double_g[3 * c:] = 2  # the tanh quarter, for tanh(g) = 2 sigmoid(2g) - 1
        self.double_g = double_g
        first_weight = model._first_weight()
        self.above = RowConv(first_weight[:, :, :half], model.first.bias)  # the rows above the pixel
        # The image, channels last, padded as the first convolution pads it, rows offset by half.
        self.image = torch.zeros(batch, height + half, width + 2 * half, c_img, **new)
        self.first_acc = torch.zeros(batch, (width + half) * c, **new)
        self.first_in = [self.first_acc[:, j * c:(j + 1) * c] for j in range(width)]
        self.first_spill = [self.first_acc[:, (j + 1) * c:(j + half + 1) * c] for j in range(width)]
        # Pixel (i, q) reaches column q + t of its row through tap half - t, t = 1..half.
        push = torch.cat([first_weight[:, :, half, half - t].t() for t in range(1, half + 1)], dim=1)
        self.first_push = PixelPush(push, config.levels, batch)
        self.layers = []
        for layer in model.layers:
            w_in = layer.input_to_state.weight[:, :, 0]  # [4c, c, 2]: tap 0 reads column j - 1, tap 1 column j
            bias = layer.input_to_state.bias.expand(batch, 4 * c)
            if cond is not None:
                bias = bias + layer.class_bias(cond)
            acc = torch.zeros(batch, (width + 1) * 4 * c, **new)
            # h of the current row, and a column of ones; one zero column each side, the padding
            # of the state-to-state convolution.
            padded = torch.ones(batch, width + 2, c + 1, **new)
            padded[:, [0, -1], :c] = 0
            states = padded[:, 1:-1]
            cells = [torch.zeros(batch, width, c, **new) for _ in range(2)]  # c of this row and the last
            entry = {
                "recurrent": RowConv(layer.state_to_state.weight.unsqueeze(2), None),
                "padded_h": padded[:, None, :, :c],  # [B, 1, W + 2, c]
                "bias": (bias * double_g)[:, None, :],
                "push": torch.cat([(w_in[:, :, 1] * double_g[:, None]).t(), (w_in[:, :, 0] * double_g[:, None]).t()], 1),
                "acc": acc, "states": states, "cells": cells,
                "w_out": torch.cat([layer.out.weight[:, :, 0, 0].t(), layer.out.bias[None]]),
                "sig": torch.empty(batch, 4 * c, **new), "tanh": torch.empty(batch, c, **new),
                "x": torch.empty(batch, c, **new),
                "pre": [acc[:, j * 4 * c:(j + 1) * 4 * c] for j in range(width)],
                "spill": [acc[:, j * 4 * c:(j + 2) * 4 * c] for j in range(width)],
                "h_aug": list(states.unbind(1)),
                "h": [states[:, j, :c] for j in range(width)],
            }
            sig = entry["sig"]
            entry["o"], entry["f"], entry["i"], entry["g"] = sig[:, :c], sig[:, c:2 * c], sig[:, 2 * c:3 * c], sig[:, 3 * c:]
            self.layers.append(entry)
        self.head = HeadStep(model.head, batch)

    def start_row(self, i: int, images: torch.Tensor) -> None:
        half, width, c = self.half, self.width, self.c
        if i > 0:
            self.image[:, i - 1 + half, half:half + width] = (images[:, :, i - 1] * 2 - 1).transpose(1, 2)
        first = self.first_acc.view(self.batch, width + half, c)
        first[:, :width] = self.above(self.image[:, i:i + half]).view(self.batch, width, c)
        first[:, width:] = 0
        for entry in self.layers:
            cells = entry["cells"]
            cells.reverse()  # this row's cells become the last row's
            acc = entry["acc"].view(self.batch, width + 1, 4 * c)
            if i == 0:
                cells[1].zero_()
                entry["states"][:, :, :c].zero_()
                acc[:, :width] = entry["bias"]
            else:
                recurrent = entry["recurrent"](entry["padded_h"]).view(self.batch, width, 4 * c)
                torch.addcmul(entry["bias"], recurrent, self.double_g, out=acc[:, :width])
            acc[:, width:] = 0
            entry["c"] = list(cells[0].unbind(1))
            entry["c_last"] = list(cells[1].unbind(1))

    def step(self, j: int) -> torch.Tensor:
        x = self.first_in[j]
        for entry in self.layers:
            entry["spill"][j].addmm_(x, entry["push"])
            torch.sigmoid(entry["pre"][j], out=entry["sig"])
            c = entry["c"][j]
            torch.mul(entry["f"], entry["c_last"][j], out=c)
            c.addcmul_(entry["i"], entry["g"], value=2).sub_(entry["i"])  # + sigmoid(i) tanh(g)
            torch.tanh(c, out=entry["tanh"])
            torch.mul(entry["o"], entry["tanh"], out=entry["h"][j])
            x = torch.addmm(x, entry["h_aug"][j], entry["w_out"], out=entry["x"])
        return self.head(x)

    def emit(self, j: int, level: torch.Tensor) -> None:
        """Pixel (i, j) is final: through the masked first convolution it reaches j + 1 .. j + half."""
        if j + 1 < self.width:
            self.first_push.add_to(self.first_spill[j], level)
