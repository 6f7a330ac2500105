"""Masked and gated convolutions shared by PixelCNN and PixelRNN.

Colour (van den Oord et al. 2016, PixelRNN section 3.4): a pixel's R is predicted from the
context, G from the context and R, B from the context, R and G. Every feature map is split into
one group of channels per colour (`colour_groups`), and the connections that read the current
pixel are masked by group (`colour_mask`): type A in the first layer, where an output of colour g
sees only the input colours before g, and type B after it, where it also sees its own group (the
features of colour g, which by then carry only what colour g may see). Connections to earlier
pixels stay whole. With one colour, type B masks nothing and type A everything (a grayscale
first layer leaves the current pixel out), so a grayscale model has no colour masks.

The gated block of the gated PixelCNN: two stacks run side by side. The vertical stack at row i
sees the input rows <= i; it reaches the horizontal stack only shifted down by one row, so the
horizontal stack at (i, j) sees every row above i in full. The horizontal stack sees the pixels
left of j in row i and, through a colour-masked tap, the current pixel (in a grayscale first
block nothing of it, so that tap is left out). Together the receptive field is every sub-pixel
before the current one, with no blind spot.

Causality between pixels comes from padding and kernel shapes rather than masks: the vertical
kernel is (k//2 + 1) x k over rows padded on top, the horizontal kernel 1 x (k//2 + 1) over
columns padded on the left (1 x k//2, excluding the current pixel, in a grayscale first block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def colour_groups(n: int, colours: int, chunks: int = 1) -> torch.Tensor:
    """The colour each of n channels serves, [n]: `chunks` equal parts (the halves or quarters a
    gate splits its pre-activations into), each split into `colours` consecutive groups, as even
    as the count allows."""
    size = n // chunks
    return torch.arange(n) % size * colours // size


def colour_slices(n: int, colours: int) -> list[slice]:
    """The channels of each colour's group among n (`colour_groups`, one chunk)."""
    groups = colour_groups(n, colours)
    return [slice(int((groups < g).sum()), int((groups <= g).sum())) for g in range(colours)]


def colour_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, own: bool) -> torch.Tensor:
    """[out, in]: 1 where an output of colour g may read an input at the current pixel: one of a
    colour before g (type A), or also of g itself (type B, `own`)."""
    allowed = out_groups[:, None] >= in_groups[None] if own else out_groups[:, None] > in_groups[None]
    return allowed.float()


def check_colour_widths(colours: int, **widths: int) -> None:
    """Every colour needs channels of its own in every feature map."""
    for name, width in widths.items():
        if width < colours:
            raise ValueError(f"{name} ({width}) must be at least the image's {colours} channels")


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed mask, or a plain one when `mask` is
    None. The mask is not saved: a checkpoint holds the plain convolution's weight and bias."""

    def __init__(self, *args, mask: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", mask, persistent=False)

    @property
    def masked_weight(self) -> torch.Tensor:
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.masked_weight, self.bias)


def tap_mask(shape: tuple[int, ...], row: int, column: int, centre: torch.Tensor) -> torch.Tensor:
    """A mask for a conv weight of `shape`: ones, with `centre` [out, in] at the tap that reads
    the current pixel."""
    mask = torch.ones(shape)
    mask[:, :, row, column] = centre
    return mask


def colour_conv(in_channels: int, out_channels: int, kernel: tuple[int, int], colours: int,
                out_chunks: int = 1, own: bool = True, **kwargs) -> MaskedConv2d:
    """A convolution whose last tap reads the current pixel, masked there by colour (type B, or
    type A without `own`); a grayscale type-B one needs no mask."""
    mask = None
    if colours > 1 or not own:
        centre = colour_mask(colour_groups(out_channels, colours, out_chunks),
                             colour_groups(in_channels, colours), own)
        mask = tap_mask((out_channels, in_channels, *kernel), kernel[0] - 1, kernel[1] - 1, centre)
    return MaskedConv2d(in_channels, out_channels, kernel, mask=mask, **kwargs)


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row down by one (row 0 becomes zeros), so row i holds what row i - 1 held."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channels."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedBlock(nn.Module):
    """One block of both stacks. `first` makes it a type-A block: of the current pixel it sees
    only the colours before each group's own."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool, n_classes: int = 0,
                 colours: int = 1):
        super().__init__()
        half = kernel_size // 2
        self.first = first
        self.half = half
        self.centre_tap = not first or colours > 1  # whether the horizontal kernel reads the current pixel
        self.vertical_conv = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel_size))
        if self.centre_tap:
            self.horizontal_conv = colour_conv(in_channels, 2 * channels, (1, half + 1), colours,
                                               out_chunks=2, own=not first)
        else:  # nothing of the current pixel is known yet: the kernel stops left of it
            self.horizontal_conv = MaskedConv2d(in_channels, 2 * channels, (1, half))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = colour_conv(channels, channels, (1, 1), colours)
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
        if not self.centre_tap:
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
