"""A training run's figures on disk, beside its resumable state (`--state-dir`, default runs/NAME):

    metrics.csv              a row every LOG_EVERY steps and at each epoch's end: the step, the epoch
                             (fractional), wall and budget time, the learning rate, and the averages
                             of the family's figures (loss, bits_per_dim, loss_d ...) since the row before
    tensorboard/RUN/         the same figures as TensorBoard scalars (`tensorboard --logdir runs/NAME`),
                             and the sample grid of each save (the checkpoint's samples.png)

RUN is the run's id (its card's `training.run`): a run over another's state starts a new folder
and a new metrics.csv. A resumed run continues both, dropping what was logged after the state it
resumes from (those steps are trained again).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

LOG_EVERY = 50  # steps
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
FIRST_COLUMNS = ["step", "epoch", "wall_time_s", "budget_time_s", "lr"]


class MetricsLog:
    """Rows of averaged figures into metrics.csv and TensorBoard; a no-op where `enabled` is false
    (the other ranks of a data-parallel run)."""

    def __init__(self, state_dir: Path, run: str, resumed_step: int | None, enabled: bool = True):
        self.enabled = enabled
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # a second's import: only for a run that logs

        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / METRICS_FILE
        rows = self._rows_up_to(resumed_step) if resumed_step is not None else []
        self.columns = list(dict.fromkeys([*FIRST_COLUMNS, *(key for row in rows for key in row)]))
        self._rewrite(rows)
        # Written out every 10 s (and at a save's image, and at the end), not at every row: a small
        # folder's epoch, and so a row, is a few steps.
        self.writer = SummaryWriter(str(state_dir / TENSORBOARD_DIR / run), flush_secs=10,
                                    purge_step=None if resumed_step is None else resumed_step + 1)

    def _rows_up_to(self, step: int) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return [row for row in csv.DictReader(f) if row.get("step", "").isdigit() and int(row["step"]) <= step]

    def _rewrite(self, rows: list[dict]) -> None:
        """The file as these rows under the current columns (a temporary file, renamed over it)."""
        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)

    def add(self, logs: dict[str, float]) -> None:
        """One step's figures (a figure logged on some steps only, a GAN's loss_g, averages over those)."""
        for key, value in logs.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def row(self, progress: dict, lr: float, batches_per_epoch: int, budget_time_s: float) -> None:
        """Write the averages since the last row, at the run's current step."""
        if not self.enabled or not self.counts:
            return
        figures = {key: total / self.counts[key] for key, total in self.totals.items()}
        self.totals, self.counts = {}, {}
        step = progress["step"]
        row = {"step": step, "epoch": round(progress["epoch"] + progress["batch"] / batches_per_epoch, 4),
               "wall_time_s": round(progress["wall_time_s"], 2), "budget_time_s": round(budget_time_s, 2),
               "lr": f"{lr:.6g}", **{key: f"{value:.6g}" for key, value in figures.items()}}
        if set(row) - set(self.columns):  # a figure first logged now (a critic's step, say): a wider header
            with open(self.path, newline="") as f:
                earlier = list(csv.DictReader(f))
            self.columns += [key for key in row if key not in self.columns]
            self._rewrite([*earlier, row])
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)
        for key, value in figures.items():
            self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.add_scalar("train/lr", lr, step)

    def image(self, grid: np.ndarray, step: int) -> None:
        """A save's sample grid (uint8 [H, W, C])."""
        if self.enabled:
            self.writer.add_image("samples", grid, step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
