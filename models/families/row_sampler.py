"""The cached samplers' loop over rows of sub-pixels, and on a GPU each row recorded as a CUDA graph.

A cached sampler runs some 35 small operations per sub-pixel (`Stepper`). On a CPU thread they
cost about what they compute; on a GPU each is a kernel launch from Python, and an H200 spent
about 1 ms per pixel step for 16 images, slower than one CPU thread (docs/benchmarks.md). Once the
inputs that vary (a row's noise, its given levels, which of them are kept) are copied into buffers
made once (`RowPass`), a row is the same operations on the same memory for every row and every
batch of a size: recorded once per batch size and temperature as a CUDA graph (`RowGraph`), it is
replayed with one launch a row and its kernels run back to back. The stepper's per-row work
(`start_row`: a convolution per block over the rows above) stays eager.

The recorded row computes every sub-pixel and puts the given levels back (`torch.where`), where
the eager loop skips what no image draws: the same levels either way, since a sub-pixel's work
reaches later rows only through its level. The CPU never records: its loop is the eager one.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Recorded rows kept per model (batch sizes x temperatures); each holds its stepper's buffers.
MAX_GRAPHS = 16


class RowPass:
    """One row of sub-pixels through a stepper, over buffers made once, in sampling order (column
    by column, a column's colours in turn): [W * C, B, 1], each sub-pixel contiguous."""

    def __init__(self, stepper, batch: int, colours: int, width: int, levels: int,
                 dtype: torch.dtype, device: torch.device):
        self.stepper, self.batch, self.colours, self.width, self.top = stepper, batch, colours, width, levels - 1
        self.levels = torch.zeros(width * colours, batch, 1, dtype=torch.long, device=device)  # the row's outcome
        self.given = torch.zeros_like(self.levels)
        self.keep = torch.zeros_like(self.levels, dtype=torch.bool)
        self.noise = torch.zeros_like(self.levels, dtype=dtype)
        self.probs = torch.empty(batch, levels, dtype=dtype, device=device)
        # The level is the count of CDF values below u, at most levels - 1 (rounding may leave
        # the last one under u): searching all but the last one gives that with no clamp.
        self.cdf = torch.empty(batch, levels - 1, dtype=dtype, device=device)
        self.slots, self.given_subs, self.keep_subs, self.noise_subs = (
            t.unbind(0) for t in (self.levels, self.given, self.keep, self.noise))
        self.everything = [True] * (width * colours)

    def in_order(self, row: torch.Tensor) -> torch.Tensor:
        """[B, C, W] -> [W * C, B, 1], in sampling order."""
        return row.permute(2, 1, 0).reshape(-1, self.batch, 1)

    def load(self, images: torch.Tensor, noise: torch.Tensor, known: torch.Tensor, i: int) -> None:
        """Row i's noise, its levels as `images` gives them, and which of those are kept."""
        given = self.in_order((images[:, :, i, :] * self.top).round().long())
        self.given.copy_(given)
        self.levels.copy_(given)
        self.noise.copy_(self.in_order(noise[:, :, i, :]))
        self.keep.copy_(self.in_order(known[:, :, i, :]))

    def run(self, temperature: float, last: int, wanted: list[bool], mixed: list[bool]) -> None:
        """Columns 0 .. last; `wanted[k]`: whether any image draws sub-pixel k, `mixed[k]`: whether
        some image keeps it."""
        stepper, probs, cdf = self.stepper, self.probs, self.cdf
        for j in range(last + 1):
            for colour in range(self.colours):
                k = j * self.colours + colour
                logits = stepper.step(j, colour)
                slot = self.slots[k]
                if wanted[k]:
                    if temperature != 1.0:  # as the naive path divides (1.0 would change no bit)
                        logits = logits / temperature
                    torch.softmax(logits, -1, out=probs)
                    torch.cumsum(probs[:, :-1], -1, out=cdf)
                    torch.searchsorted(cdf, self.noise_subs[k], out=slot)
                    if mixed[k]:
                        torch.where(self.keep_subs[k], self.given_subs[k], slot, out=slot)
                stepper.emit(j, colour, slot)

    def run_whole(self, temperature: float) -> None:
        """Every sub-pixel drawn, then the kept ones put back: the same operations for any row."""
        self.run(temperature, self.width - 1, self.everything, self.everything)

    def store(self, images: torch.Tensor, i: int) -> None:
        images[:, :, i, :] = self.levels.view(self.width, self.colours, self.batch).permute(2, 1, 0).to(images.dtype) / self.top


def row_pass(model: nn.Module, stepper, batch: int) -> RowPass:
    """A `RowPass` of `model`'s shape and dtype, on its device."""
    colours, _, width = model.config.image_shape
    weight = next(model.parameters())
    return RowPass(stepper, batch, colours, width, model.config.levels, weight.dtype, weight.device)


def sample_rows(stepper, row: RowPass, images: torch.Tensor, noise: torch.Tensor, known: torch.Tensor,
                temperature: float, on_row: Callable[[int, torch.Tensor], bool] | None,
                replay: Callable[[], None] | None = None) -> torch.Tensor:
    """Draw the unknown sub-pixels of `images` [B, C, H, W] row by row, in place. `replay`, when
    given, runs `row.run_whole(temperature)` (a recorded graph of it); else the row runs eagerly,
    skipping what no image draws."""
    b, c, rows, width = noise.shape
    unknown = (~known).permute(2, 3, 1, 0).reshape(rows, width * c, b)
    # Read once, not per row: on a GPU each read waits for the work queued before it.
    wanted_rows, mixed_rows = unknown.any(2).tolist(), (~unknown.all(2)).tolist()
    for i in range(rows):
        stepper.start_row(i, images)
        wanted = wanted_rows[i]
        if not any(wanted) and not stepper.every_pixel:
            continue
        row.load(images, noise, known, i)
        if replay is not None:
            replay()
        else:
            last = width - 1 if stepper.every_pixel else max(k for k, w in enumerate(wanted) if w) // c
            row.run(temperature, last, wanted, mixed_rows[i])
        row.store(images, i)
        if on_row is not None and on_row(i, images) is False:
            break
    return images


@dataclass
class RowGraph:
    """A stepper, its `RowPass`, and the CUDA graph of `row.run_whole` at one temperature."""
    stepper: Any
    row: RowPass
    graph: Any  # torch.cuda.CUDAGraph

    def replay(self) -> None:
        self.graph.replay()


def capture(model: nn.Module, batch: int, temperature: float, cond: torch.Tensor | None) -> RowGraph | None:
    """Record a row for `batch` images; None, with a warning, where it cannot be recorded (then
    the eager loop draws the same pixels)."""
    try:
        stepper = model.stepper(cond, batch)
        if not callable(getattr(stepper, "bind", None)):  # a recorded row serves later batches through it
            raise TypeError(f"{type(stepper).__name__} has no bind(cond)")
        row = row_pass(model, stepper, batch)
        weight = next(model.parameters())
        # A defined state to warm up on; sampling starts each row over with `start_row`.
        stepper.start_row(0, torch.zeros(batch, *model.config.image_shape, dtype=weight.dtype, device=weight.device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS handles and workspaces are made here, outside the capture
            row.run_whole(temperature)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: only this thread's calls are checked; other threads may use CUDA meanwhile.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            row.run_whole(temperature)
        return RowGraph(stepper, row, graph)
    except Exception as error:  # whatever stops the recording, the eager loop computes the same pixels
        log.warning("%s: sampling without CUDA graphs, a row could not be recorded: %s", type(model).__name__, error)
        return None


class RowGraphs:
    """A model's recorded rows by (batch, temperature, inference mode), for its current weights."""

    def __init__(self):
        self.lock = threading.Lock()
        self.graphs: OrderedDict = OrderedDict()
        self.weights: tuple = ()
        self.broken = False  # a recording failed: this model samples eagerly from then on

    def get(self, model: nn.Module, batch: int, temperature: float, cond: torch.Tensor | None) -> RowGraph | None:
        # The steppers hold tensors derived from the weights: other weights, other graphs.
        weights = tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in model.parameters())
        if weights != self.weights:
            self.graphs.clear()
            self.weights = weights
        # Tensors made in inference mode cannot be written outside it, and the other way round.
        key = (batch, temperature, torch.is_inference_mode_enabled())
        recorded = self.graphs.get(key)
        if recorded is not None:
            self.graphs.move_to_end(key)
            recorded.stepper.bind(cond)
            return recorded
        recorded = capture(model, batch, temperature, cond)
        if recorded is None:
            self.broken = True
            return None
        self.graphs[key] = recorded
        if len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return recorded


@contextmanager
def borrowed_row_graph(model: nn.Module, batch: int, temperature: float,
                       cond: torch.Tensor | None) -> Iterator[RowGraph | None]:
    """`model`'s recorded row for `batch` images at `temperature`, its stepper bound to `cond`, for
    the block; None where the loop runs eagerly: off CUDA, `model.cuda_graphs` false, a recording
    that failed, or another thread sampling the same model with its graphs just now."""
    if next(model.parameters()).device.type != "cuda" or not model.cuda_graphs:
        yield None
        return
    graphs = model.__dict__.setdefault("_row_graphs", RowGraphs())
    if graphs.broken or not graphs.lock.acquire(blocking=False):
        yield None
        return
    try:
        yield graphs.get(model, batch, temperature, cond)
    finally:
        graphs.lock.release()
