"""Gated PixelCNN (van den Oord et al. 2016): masked convolutions over the pixels before each one.

Training sees every sub-pixel's context at once (one parallel pass); sampling is still one
sub-pixel at a time, a colour pixel's R, then G given R, then B given both (the colour masks are
in `models.layers`). The likelihood, the class posterior and the samplers' shared loop are in
`models.autoregressive`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from models.families.autoregressive import AutoregressiveModel, HeadStep, PixelPush, RowConv, softmax_head
from models.card import MAX_CLASSES
from models.families.masked_conv import GatedBlock, check_colour_widths, colour_slices


@dataclass
class PixelCNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    channels: int = field(default=64, metadata={"bounds": (1, 1024)})
    n_layers: int = field(default=7, metadata={"bounds": (1, 64)})
    kernel_size: int = field(default=7, metadata={"bounds": (1, 15)})
    head_channels: int = field(default=256, metadata={"bounds": (1, 4096)})
    n_classes: int = field(default=0, metadata={"bounds": (0, MAX_CLASSES)})  # > 0: class-conditional
    levels: int = field(default=256, metadata={"bounds": (2, 256)})

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
        c_img = config.image_shape[0]
        check_colour_widths(c_img, channels=config.channels, head_channels=config.head_channels)
        self.config = config
        self.blocks = nn.ModuleList(
            GatedBlock(c_img if i == 0 else config.channels, config.channels, config.kernel_size,
                       first=(i == 0), n_classes=config.n_classes, colours=c_img)
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

    def stepper(self, cond: torch.Tensor | None, batch: int) -> "_GatedStepper":
        return _GatedStepper(self, cond, batch)


class _GatedStepper:
    """The gated PixelCNN one sub-pixel at a time, each activation computed once (Fast PixelCNN++'s
    caching, Ramachandran et al. 2017, for the two-stack network).

    The vertical stack needs only rows above the current one: at the start of row i it computes
    row i - 1 of every block (one convolution over that block's cached input rows) and from it the
    contribution of the vertical stack to all of row i of the horizontal stack. The horizontal
    stack is a 1-D convolution along the row, computed by pushing: once a block's input at column
    j is known, one matrix product adds what it contributes to the pre-activations of columns
    j .. j + k//2 (`acc`). A step is then, per block, that product, one sigmoid, one product of
    halves and one matrix product out; tanh(a) is 2 sigmoid(2a) - 1 (the a-half of the
    pre-activations is kept doubled), and constant columns of ones carry the biases.

    In colour a pixel takes one step per colour. Step c recomputes the pixel's whole column, of
    which the groups of colours <= c are then final (the masks keep later colours out of them),
    and pushes only group c of each block's input: it is final, so what it adds to this column
    and the next ones is added once, and over the pixel's steps every group is pushed once. A
    drawn colour reaches the first block's later groups of the same column through `emit`.
    """

    every_pixel = False  # the horizontal stack feeds no later row: rows given whole are skipped

    def __init__(self, model: PixelCNN, cond: torch.Tensor | None, batch: int):
        config = model.config
        self.model = model
        self.batch = batch
        c_img, height, width = config.image_shape
        c = config.channels
        self.c, self.width, self.half = c, width, config.kernel_size // 2
        weight = next(model.parameters())
        new = dict(dtype=weight.dtype, device=weight.device)
        double_a = torch.ones(2 * c, **new)
        double_a[:c] = 2  # the tanh half, for tanh(a) = 2 sigmoid(2a) - 1
        self.double_a = double_a
        half = self.half
        groups = colour_slices(c, c_img)  # the channels of each colour
        self.blocks = []
        for block in model.blocks:
            c_in = c_img if block.first else c
            w_h = block.horizontal_conv.masked_weight[:, :, 0]  # [2c, c_in, taps]; tap s reads column j - half + s
            # Input at column q reaches column q + t through tap half - t: t = 1..half for a grayscale
            # first block (it never sees its own pixel), 0..half otherwise.
            reach = range(0 if block.centre_tap else 1, half + 1)
            push = torch.cat([(w_h[:, :, half - t] * double_a[:, None]).t() for t in reach], dim=1)
            w_out = block.horizontal_out.masked_weight[:, :, 0, 0].t()  # [c, c]
            if block.first:  # its input is the image: a drawn sub-pixel pushes one table row
                self.first_push = PixelPush(push, config.levels)
                self.pushes_own_column = reach.start == 0
            h = torch.empty(batch, c, **new)
            self.blocks.append({
                "vertical": RowConv(block.vertical_conv.weight, block.vertical_conv.bias),
                "to_horizontal": (block.vertical_to_horizontal.bias, block.vertical_to_horizontal.weight[:, :, 0, 0].t()),
                # The block's vertical input, channels last, padded as the convolution pads it,
                # rows offset by half.
                "v_in": torch.zeros(batch, height + half, width + 2 * half, c_in, **new),
                "push": None if block.first else [push[group] for group in groups],  # per colour of the input
                "first_reach": reach.start,
                # Pre-activations of the current row, plus `half` columns that pushes may spill into.
                "acc": torch.zeros(batch, (width + half) * 2 * c, **new),
                # [(2 s_a - 1) s_b] W = [s_a s_b, s_b, 1] [2W; -W; bias]
                "w_out": torch.cat([2 * w_out, -w_out, block.horizontal_out.bias[None]]),
                "gates": torch.ones(batch, 2 * c + 1, **new),
                "h": h,
                "h_colours": [h[:, group] for group in groups],
            })
        for entry in self.blocks:
            acc, gates = entry["acc"], entry["gates"]
            entry["pre"] = [acc[:, j * 2 * c:(j + 1) * 2 * c] for j in range(width)]
            entry["spill"] = [acc[:, (j + entry["first_reach"]) * 2 * c:(j + half + 1) * 2 * c] for j in range(width)]
            entry["sig"], entry["a"], entry["b"] = gates[:, : 2 * c], gates[:, :c], gates[:, c:2 * c]
        self.head = HeadStep(model.head, batch, c_img)
        self.zeros = torch.zeros(batch * width, 2 * c, **new)  # shift_down's first row
        self.bind(cond)

    def bind(self, cond: torch.Tensor | None) -> None:
        """The class biases of `cond` (one class per image, or None), which `start_row` adds."""
        c = self.c
        for entry, block, bias in zip(self.blocks, self.model.blocks, self.model._biases(cond)):
            h_bias = block.horizontal_conv.bias.expand(self.batch, 2 * c)
            if bias is not None:
                h_bias = h_bias + bias[:, 2 * c:]
            entry["h_bias"] = (h_bias * self.double_a)[:, None, :]
            entry["v_bias"] = None if bias is None else bias[:, None, : 2 * c]

    def start_row(self, i: int, images: torch.Tensor) -> None:
        """Row i - 1 of the vertical stack, and its contribution to row i of the horizontal one."""
        half, width, c = self.half, self.width, self.c
        if i > 0:
            self.blocks[0]["v_in"][:, i - 1 + half, half:half + width] = (images[:, :, i - 1] * 2 - 1).transpose(1, 2)
        for n, entry in enumerate(self.blocks):
            if i == 0:
                above = self.zeros
            else:
                above = pre = entry["vertical"](entry["v_in"][:, i - 1:i + half])  # [B * W, 2c]
                if n + 1 < len(self.blocks):
                    pre = pre.view(self.batch, width, 2 * c)
                    if entry["v_bias"] is not None:
                        pre = pre + entry["v_bias"]
                    row = self.blocks[n + 1]["v_in"][:, i - 1 + half, half:half + width]
                    torch.mul(torch.tanh(pre[..., :c]), torch.sigmoid(pre[..., c:]), out=row)
            bias, weight = entry["to_horizontal"]
            to_horizontal = torch.addmm(bias, above, weight).view(self.batch, width, 2 * c)
            acc = entry["acc"].view(self.batch, width + half, 2 * c)
            torch.addcmul(entry["h_bias"], to_horizontal, self.double_a, out=acc[:, :width])
            acc[:, width:] = 0

    def step(self, j: int, colour: int) -> torch.Tensor:
        """The logits of sub-pixel (i, j, colour): every block's horizontal stack at column j."""
        h = h_colours = None
        for entry in self.blocks:
            if h is not None:  # this block's input of this colour at column j, pushed to columns j .. j + half
                entry["spill"][j].addmm_(h_colours[colour], entry["push"][colour])
            torch.sigmoid(entry["pre"][j], out=entry["sig"])
            torch.mul(entry["a"], entry["b"], out=entry["a"])
            if h is None:
                torch.mm(entry["gates"], entry["w_out"], out=entry["h"])
            else:
                torch.addmm(h, entry["gates"], entry["w_out"], out=entry["h"])
            h, h_colours = entry["h"], entry["h_colours"]
        return self.head(h, colour)

    def emit(self, j: int, colour: int, level: torch.Tensor) -> None:
        """Sub-pixel (i, j, colour) is final: the first block's input there reaches columns
        j + 1 .. j + half, and in colour the later colours' groups of column j."""
        if self.pushes_own_column or j + 1 < self.width:
            self.first_push.add_to(self.blocks[0]["spill"][j], colour, level)
