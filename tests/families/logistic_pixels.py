"""A PixelCNN whose head is a discretized logistic mixture per sub-pixel (Salimans et al. 2017),
written against models/contract.py alone, outside models/.

The shipped masked convolutions (`GatedBlock`) give each sub-pixel's features; a 1x1 head turns
them into `mixtures` (weight, mean, log-scale) triples. Training scores each sub-pixel's own value
from its triples (`sub_pixel_log_probs`, the autoregressive mix-in's public hook), with no
256-way softmax; the sampler asks the `stepper` for the `levels` log-probabilities of one
sub-pixel at a time, the same mixture integrated over every bin. Registered by
`GENSERVE_FAMILIES=tests.families.logistic_pixels:LogisticPixelCNN`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.card import MAX_CLASSES
from models.families.autoregressive import AutoregressiveModel
from models.families.discretized_logistic import discretized_logistic_log_prob
from models.families.masked_conv import GatedBlock, check_colour_widths, colour_conv

MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor: a bin's mass stays finite in float32


@dataclass
class LogisticPixelCNNConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    channels: int = field(default=16, metadata={"bounds": (1, 512)})
    n_layers: int = field(default=3, metadata={"bounds": (1, 16)})
    kernel_size: int = field(default=3, metadata={"bounds": (3, 15)})
    mixtures: int = field(default=2, metadata={"bounds": (1, 10)})
    n_classes: int = field(default=0, metadata={"bounds": (0, MAX_CLASSES)})  # > 0: class-conditional
    levels: int = field(default=256, metadata={"bounds": (2, 256)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")


class LogisticPixelCNN(AutoregressiveModel):
    family = "logistic-pixelcnn"
    Config = LogisticPixelCNNConfig
    summary = "Autoregressive, a discretized logistic mixture per sub-pixel; exact likelihood (a test family)."

    def __init__(self, config: LogisticPixelCNNConfig):
        super().__init__()
        colours = config.image_shape[0]
        check_colour_widths(colours, channels=config.channels)
        self.config = config
        self.blocks = nn.ModuleList(
            GatedBlock(colours if i == 0 else config.channels, config.channels, config.kernel_size,
                       first=i == 0, n_classes=config.n_classes, colours=colours)
            for i in range(config.n_layers))
        # Each colour's triples from its own features and the earlier colours' (a type B mask).
        self.head = nn.Sequential(nn.ReLU(), colour_conv(config.channels, colours * 3 * config.mixtures, (1, 1),
                                                         colours))

    def biases(self, cond: torch.Tensor | None) -> list[torch.Tensor | None]:
        self._check_cond(cond)
        return [block.embed(cond) for block in self.blocks]

    def vertical(self, inputs: torch.Tensor, biases: list) -> list[torch.Tensor]:
        """Each block's vertical-stack contribution to the horizontal stack, [B, 2c, H, W]."""
        contributions, v = [], inputs
        for block, bias in zip(self.blocks, biases):
            v, to_horizontal = block.vertical(v, bias)
            contributions.append(to_horizontal)
        return contributions

    def mixture_params(self, inputs: torch.Tensor, contributions: list, biases: list) -> torch.Tensor:
        """The horizontal stack and the head: [B, C, H, W, 3 * mixtures], channels last."""
        h = inputs
        for block, from_vertical, bias in zip(self.blocks, contributions, biases):
            h = block.horizontal(h, from_vertical, bias)
        params = self.head(h)
        b, _, height, width = params.shape
        return params.view(b, self.config.image_shape[0], -1, height, width).permute(0, 1, 3, 4, 2)

    def _mixture(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., 3K] -> log mixture weights, means (about [0, 1]) and log-scales, each [..., K]."""
        weight_logits, mean, log_scale = params.chunk(3, dim=-1)
        return F.log_softmax(weight_logits, -1), torch.sigmoid(mean) * 1.1 - 0.05, log_scale.clamp(min=MIN_LOG_SCALE)

    def level_log_probs(self, params: torch.Tensor) -> torch.Tensor:
        """[..., 3K] -> the log-probability of each of the `levels` values, [..., levels]."""
        log_weight, mean, log_scale = self._mixture(params)
        levels = self.config.levels
        grid = torch.arange(levels, dtype=params.dtype, device=params.device)[:, None] / (levels - 1)
        per_component = discretized_logistic_log_prob(grid, mean[..., None, :], log_scale[..., None, :], levels)
        return torch.logsumexp(log_weight[..., None, :] + per_component, dim=-1)

    def sub_pixel_log_probs(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """log p(x_i | x_<i) [B, C, H, W] from each sub-pixel's K triples: no 256-way softmax."""
        inputs, biases = x * 2 - 1, self.biases(cond)
        log_weight, mean, log_scale = self._mixture(self.mixture_params(inputs, self.vertical(inputs, biases), biases))
        per_component = discretized_logistic_log_prob(x[..., None], mean, log_scale, self.config.levels)
        return torch.logsumexp(log_weight + per_component, dim=-1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The `levels` log-probabilities of every sub-pixel [B, C, levels, H, W]: what the naive
        sampler reads (training never builds them)."""
        inputs, biases = x * 2 - 1, self.biases(cond)
        params = self.mixture_params(inputs, self.vertical(inputs, biases), biases)
        return self.level_log_probs(params).permute(0, 1, 4, 2, 3)

    def stepper(self, cond: torch.Tensor | None, batch: int) -> RowStepper:
        return RowStepper(self, cond, batch)


class RowStepper:
    """The network one sub-pixel at a time, each activation computed once. At the start of a row
    the vertical stack runs over the rows above that reach it (1 + n_layers * kernel_size // 2);
    a step computes column j of each block's horizontal stack, as matrix products over the
    block's cached inputs at columns j - kernel_size // 2 .. j (in colour once per colour: the
    masks keep each colour's channels blind to the colours not drawn yet). Every buffer is made
    once and rewritten in place, so that a row can be recorded as a CUDA graph and replayed."""

    every_pixel = False  # nothing carries from row to row but the images themselves

    def __init__(self, model: LogisticPixelCNN, cond: torch.Tensor | None, batch: int):
        config = model.config
        self.model, self.half = model, config.kernel_size // 2
        self.reach = 1 + config.n_layers * self.half
        weight = next(model.parameters())
        new = {"dtype": weight.dtype, "device": weight.device}
        width = config.image_shape[2]
        self.layers = []
        for block in model.blocks:
            conv = block.horizontal_conv.masked_weight[:, :, 0]  # [2c, c_in, taps]: tap s reads column j - half + s
            self.layers.append({
                "taps": conv.shape[2],
                "conv": conv.permute(2, 1, 0).reshape(-1, conv.shape[0]),  # [taps * c_in, 2c]
                "out": block.horizontal_out.masked_weight[:, :, 0, 0].t(),
                "out_bias": block.horizontal_out.bias,
                # the block's input row, channels last, `half` zero columns on the left
                "inputs": torch.zeros(batch, width + self.half, conv.shape[1], **new),
                "offset": torch.empty(batch, width, conv.shape[0], **new),  # the row's pre-activations so far
                "residual": not block.first,
            })
        head = model.head[1]
        self.head = (head.masked_weight[:, :, 0, 0].t(), head.bias)
        self.bind(cond)

    def bind(self, cond: torch.Tensor | None) -> None:
        self.biases = self.model.biases(cond)

    def start_row(self, i: int, images: torch.Tensor) -> None:
        """Each block's pre-activations of row i from the rows above it, channels last [B, W, 2c]."""
        above = images[:, :, max(0, i - self.reach):i + 1] * 2 - 1
        for layer, block, bias, from_vertical in zip(self.layers, self.model.blocks, self.biases,
                                                     self.model.vertical(above, self.biases)):
            offset = layer["offset"]
            torch.add(from_vertical[:, :, -1].transpose(1, 2), block.horizontal_conv.bias, out=offset)
            if bias is not None:
                offset += bias[:, None, offset.shape[2]:]

    def step(self, j: int, colour: int) -> torch.Tensor:
        """The `levels` log-probabilities of sub-pixel (i, j, colour), [B, levels]."""
        h = None
        for n, layer in enumerate(self.layers):
            window = layer["inputs"][:, j:j + layer["taps"]].flatten(1)  # columns j - half .. j - half + taps - 1
            pre = torch.addmm(layer["offset"][:, j], window, layer["conv"])
            a, b = pre.chunk(2, dim=1)
            out = torch.addmm(layer["out_bias"], torch.tanh(a) * torch.sigmoid(b), layer["out"])
            h = h + out if layer["residual"] else out
            if n + 1 < len(self.layers):
                self.layers[n + 1]["inputs"][:, j + self.half] = h
        weight, bias = self.head
        params = torch.addmm(bias, torch.relu(h), weight).view(h.shape[0], self.model.config.image_shape[0], -1)
        return self.model.level_log_probs(params[:, colour])

    def emit(self, j: int, colour: int, level: torch.Tensor) -> None:
        # As the images hold it (level / (levels - 1)), then as the network reads it (x * 2 - 1).
        first = self.layers[0]["inputs"]
        first[:, j + self.half, colour] = level.view(-1).to(first.dtype) / (self.model.config.levels - 1) * 2 - 1
