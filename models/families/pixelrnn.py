"""Row LSTM PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks").

An LSTM runs down the image a row at a time. Its input-to-state part is a convolution over the
current row, masked to the pixel and the one on its left (computed for the whole image at once);
its state-to-state part is a width-3 convolution over the previous row's hidden state, so each
pixel's state sees a triangle of rows above it, and the first layer's 7x7 type-A mask brings in
the pixels to its left. Layers are joined by residual connections; the head is the PixelCNN's
256-way softmax per sub-pixel, and a class, if any, biases every gate as in the conditional
PixelCNN. In colour, the connections that read the current pixel carry the paper's colour masks
(`models.layers`): R from the context, G from it and R, B from both.

Unlike the PixelCNN, training is sequential too: the recurrence visits the rows one after another.
The incremental sampler keeps each layer's row state, so a pixel costs one column of every layer
instead of a pass over the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.families.autoregressive import AutoregressiveModel, HeadStep, PixelPush, RowConv, softmax_head
from models.card import MAX_CLASSES
from models.families.masked_conv import (MaskedConv2d, check_colour_widths, colour_conv, colour_groups, colour_mask, colour_slices,
                           tap_mask)


@dataclass
class PixelRNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    # the LSTM's hidden and cell state, and the residual stream
    channels: int = field(default=64, metadata={"bounds": (1, 1024)})
    n_layers: int = field(default=4, metadata={"bounds": (1, 64)})
    # the type-A masked convolution in front of the LSTMs
    first_kernel: int = field(default=7, metadata={"bounds": (3, 15)})
    head_channels: int = field(default=256, metadata={"bounds": (1, 4096)})
    n_classes: int = field(default=0, metadata={"bounds": (0, MAX_CLASSES)})  # > 0: class-conditional
    levels: int = field(default=256, metadata={"bounds": (2, 256)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)  # JSON gives a list back
        if self.first_kernel < 3 or self.first_kernel % 2 == 0:
            raise ValueError("first_kernel must be odd and >= 3")


class RowLSTM(nn.Module):
    """One Row LSTM layer over a [B, C, H, W] map, with a residual 1x1 projection of its output."""

    def __init__(self, channels: int, n_classes: int, colours: int = 1):
        super().__init__()
        # Kernel (1, 2) over a row padded by one on the left: the pixel (its tap masked by colour)
        # and its left neighbour.
        self.input_to_state = colour_conv(channels, 4 * channels, (1, 2), colours, out_chunks=4)
        # The row above holds only earlier sub-pixels: no colour mask.
        self.state_to_state = nn.Conv1d(channels, 4 * channels, 3, padding=1, bias=False)
        self.out = colour_conv(channels, channels, (1, 1), colours)
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
        c_img, k, c = config.image_shape[0], config.first_kernel, config.channels
        check_colour_widths(c_img, channels=c, head_channels=config.head_channels)
        self.config = config
        # Type A: of the pixel itself only the colours before each group's own (none in grayscale) ...
        centre = colour_mask(colour_groups(c, c_img), colour_groups(c_img, c_img), own=False)
        mask = tap_mask((c, c_img, k, k), k // 2, k // 2, centre)
        mask[:, :, k // 2, k // 2 + 1:] = 0  # ... none of the pixels right of it ...
        mask[:, :, k // 2 + 1:] = 0  # ... and no row below
        self.first = MaskedConv2d(c_img, c, k, padding=k // 2, mask=mask)
        self.layers = nn.ModuleList(RowLSTM(c, config.n_classes, c_img) for _ in range(config.n_layers))
        self.head = softmax_head(c, config.head_channels, c_img, config.levels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> logits [B, C, levels, H, W] of p(x_i | x_<i)."""
        self._check_cond(cond)
        h = self.first(x * 2 - 1)
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

    In colour a pixel takes one step per colour, as in the PixelCNN's stepper: step c reruns the
    column, whose groups of colours <= c are then final, and pushes only group c of each layer's
    input; the cell reads the last row's state, so rerunning it overwrites, never accumulates.
    """

    every_pixel = True

    def __init__(self, model: PixelRNN, cond: torch.Tensor | None, batch: int):
        config = model.config
        self.model = model
        c_img, height, width = config.image_shape
        c, half = config.channels, config.first_kernel // 2
        self.batch, self.c, self.width, self.half = batch, c, width, half
        weight = next(model.parameters())
        new = dict(dtype=weight.dtype, device=weight.device)
        double_g = torch.ones(4 * c, **new)
        double_g[3 * c:] = 2  # the tanh quarter, for tanh(g) = 2 sigmoid(2g) - 1
        self.double_g = double_g
        groups = colour_slices(c, c_img)  # the channels of each colour
        first_weight = model.first.masked_weight
        self.above = RowConv(first_weight[:, :, :half], model.first.bias)  # the rows above the pixel
        # The image, channels last, padded as the first convolution pads it, rows offset by half.
        self.image = torch.zeros(batch, height + half, width + 2 * half, c_img, **new)
        self.first_acc = torch.zeros(batch, (width + half) * c, **new)
        self.first_in = [self.first_acc[:, j * c:(j + 1) * c] for j in range(width)]
        self.first_in_colours = [[x[:, group] for group in groups] for x in self.first_in]
        # Pixel (i, q) reaches column q + t of its row through tap half - t: t = 1..half, and in
        # colour also t = 0, the later colours of its own column.
        reach = range(1 if c_img == 1 else 0, half + 1)
        self.pushes_own_column = reach.start == 0
        self.first_spill = [self.first_acc[:, (j + reach.start) * c:(j + half + 1) * c] for j in range(width)]
        push = torch.cat([first_weight[:, :, half, half - t].t() for t in reach], dim=1)
        self.first_push = PixelPush(push, config.levels)
        self.layers = []
        for layer in model.layers:
            w_in = layer.input_to_state.masked_weight[:, :, 0]  # [4c, c, 2]: tap 0 reads column j - 1, tap 1 column j
            acc = torch.zeros(batch, (width + 1) * 4 * c, **new)
            # h of the current row, and a column of ones; one zero column each side, the padding
            # of the state-to-state convolution.
            padded = torch.ones(batch, width + 2, c + 1, **new)
            padded[:, [0, -1], :c] = 0
            states = padded[:, 1:-1]
            cells = [torch.zeros(batch, width, c, **new) for _ in range(2)]  # c of this row and of the last
            push = torch.cat([(w_in[:, :, 1] * double_g[:, None]).t(), (w_in[:, :, 0] * double_g[:, None]).t()], 1)
            x = torch.empty(batch, c, **new)
            entry = {
                "recurrent": RowConv(layer.state_to_state.weight.unsqueeze(2), None),
                "padded_h": padded[:, None, :, :c],  # [B, 1, W + 2, c]
                "push": [push[group] for group in groups],  # per colour of the input
                "acc": acc, "states": states, "cells": cells,
                "c": cells[0].unbind(1), "c_last": cells[1].unbind(1),
                "w_out": torch.cat([layer.out.masked_weight[:, :, 0, 0].t(), layer.out.bias[None]]),
                "sig": torch.empty(batch, 4 * c, **new), "tanh": torch.empty(batch, c, **new),
                "x": x, "x_colours": [x[:, group] for group in groups],
                "pre": [acc[:, j * 4 * c:(j + 1) * 4 * c] for j in range(width)],
                "spill": [acc[:, j * 4 * c:(j + 2) * 4 * c] for j in range(width)],
                "h_aug": list(states.unbind(1)),
                "h": [states[:, j, :c] for j in range(width)],
            }
            sig = entry["sig"]
            entry["o"], entry["f"], entry["i"], entry["g"] = sig[:, :c], sig[:, c:2 * c], sig[:, 2 * c:3 * c], sig[:, 3 * c:]
            self.layers.append(entry)
        self.head = HeadStep(model.head, batch, c_img)
        self.bind(cond)

    def bind(self, cond: torch.Tensor | None) -> None:
        """The class biases of `cond` (one class per image, or None), which `start_row` adds."""
        for entry, layer in zip(self.layers, self.model.layers):
            bias = layer.input_to_state.bias.expand(self.batch, 4 * self.c)
            if cond is not None:
                bias = bias + layer.class_bias(cond)
            entry["bias"] = (bias * self.double_g)[:, None, :]

    def start_row(self, i: int, images: torch.Tensor) -> None:
        half, width, c = self.half, self.width, self.c
        if i > 0:
            self.image[:, i - 1 + half, half:half + width] = (images[:, :, i - 1] * 2 - 1).transpose(1, 2)
        first = self.first_acc.view(self.batch, width + half, c)
        first[:, :width] = self.above(self.image[:, i:i + half]).view(self.batch, width, c)
        first[:, width:] = 0
        for entry in self.layers:
            cells = entry["cells"]
            acc = entry["acc"].view(self.batch, width + 1, 4 * c)
            if i == 0:
                cells[1].zero_()
                entry["states"][:, :, :c].zero_()
                acc[:, :width] = entry["bias"]
            else:
                # The last row's cells copied, not swapped for this row's: the steps read fixed memory.
                cells[1].copy_(cells[0])
                recurrent = entry["recurrent"](entry["padded_h"]).view(self.batch, width, 4 * c)
                torch.addcmul(entry["bias"], recurrent, self.double_g, out=acc[:, :width])
            acc[:, width:] = 0

    def step(self, j: int, colour: int) -> torch.Tensor:
        """The logits of sub-pixel (i, j, colour): every layer's cell at column j."""
        x, x_colours = self.first_in[j], self.first_in_colours[j]
        for entry in self.layers:
            # This layer's input of this colour at column j, pushed to columns j and j + 1.
            entry["spill"][j].addmm_(x_colours[colour], entry["push"][colour])
            torch.sigmoid(entry["pre"][j], out=entry["sig"])
            c = entry["c"][j]
            torch.mul(entry["f"], entry["c_last"][j], out=c)
            c.addcmul_(entry["i"], entry["g"], value=2).sub_(entry["i"])  # + sigmoid(i) tanh(g)
            torch.tanh(c, out=entry["tanh"])
            torch.mul(entry["o"], entry["tanh"], out=entry["h"][j])
            x = torch.addmm(x, entry["h_aug"][j], entry["w_out"], out=entry["x"])
            x_colours = entry["x_colours"]
        return self.head(x, colour)

    def emit(self, j: int, colour: int, level: torch.Tensor) -> None:
        """Sub-pixel (i, j, colour) is final: through the masked first convolution it reaches
        columns j + 1 .. j + half, and in colour the later colours' groups of column j."""
        if self.pushes_own_column or j + 1 < self.width:
            self.first_push.add_to(self.first_spill[j], colour, level)
