"""How a training run ends, and how far it has come: its limits (`--epochs`, `--max-steps`,
`--minutes`), the line that states them at the start, and one progress bar for the whole run.

A run ends at the first limit it reaches. `--minutes` replaces the preset's epoch count: a run
given a budget and no `--epochs` on the command line trains until the budget is spent, however
many epochs that takes (a small folder's epoch is a few steps). The budget counts the training
loop's CPU time per thread on the CPU (as `models.baselines` counts its budgets: a run beside
others gets the compute it asked for, and takes longer in wall time), its wall time on a GPU.
"""

from __future__ import annotations

import json
import sys

import torch
from tqdm import tqdm

BAR_TOTAL = 100  # the bar counts percent of the run, whichever limit ends it


def budget_time(progress: dict) -> float:
    """The time `--minutes` counts; states saved before CPU time was kept count wall time."""
    return progress.get("budget_time_s", progress["wall_time_s"])


def run_done(args, progress: dict, batches_per_epoch: int) -> float:
    """How much of the run is done, from 0 to 1: the largest share spent of any limit it has."""
    shares = [0.0]
    if args.epochs is not None:
        shares.append((progress["epoch"] + progress["batch"] / batches_per_epoch) / args.epochs)
    if args.max_steps:
        shares.append(progress["step"] / args.max_steps)
    if args.minutes:
        shares.append(budget_time(progress) / (args.minutes * 60))
    return min(1.0, max(shares))


def run_over(args, progress: dict) -> bool:
    """Whether a limit is reached: the epochs (whole ones), the steps or the budget."""
    return bool(args.epochs is not None and progress["epoch"] >= args.epochs
                or args.max_steps and progress["step"] >= args.max_steps
                or args.minutes and budget_time(progress) >= args.minutes * 60)


def budget_counts(device: torch.device) -> str:
    if device.type == "cuda":
        return "wall time of the training loop (on a GPU)"
    threads = torch.get_num_threads()
    return (f"CPU time of the training loop per thread ({threads} thread{'s' if threads > 1 else ''}): on a "
            f"machine busy with other work the wall time is longer, the compute the same")


def budget_line(args, device: torch.device, batches_per_epoch: int) -> str:
    """The run's limits and what its budget counts, as one JSON line (printed at the start)."""
    line = {"event": "budget", "family": args.family, "epochs": args.epochs, "max_steps": args.max_steps,
            "minutes": args.minutes, "steps_per_epoch": batches_per_epoch}
    if args.minutes:
        line["minutes_count"] = budget_counts(device)
        if args.epochs is None:
            line["epochs_note"] = (f"the budget ends the run, not the preset's {args.preset_epochs} epochs "
                                   f"(--epochs caps a budgeted run)")
    return json.dumps(line)


class RunBar:
    """One progress bar for the whole run, in percent of it (of whichever limit comes first), so
    that its remaining time is the run's; the figures of the last step beside it. A line written
    through `write` goes to stdout without breaking the bar (tqdm draws on stderr)."""

    def __init__(self, args, progress: dict, batches_per_epoch: int, disable: bool):
        self.args, self.batches_per_epoch = args, batches_per_epoch
        self.bar = tqdm(total=BAR_TOTAL, initial=self._percent(progress), desc=args.family, disable=disable,
                        mininterval=2, dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self.line_ended_at = None

    def _percent(self, progress: dict) -> float:
        return round(BAR_TOTAL * run_done(self.args, progress, self.batches_per_epoch), 3)

    def update(self, progress: dict, logs: dict) -> None:
        epochs = "" if self.args.epochs is None else f"/{self.args.epochs}"
        self.bar.set_description_str(f"{self.args.family} epoch {progress['epoch'] + 1}{epochs}, "
                                     f"step {progress['step']}", refresh=False)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()}, refresh=False)
        self.bar.update(self._percent(progress) - self.bar.n)

    def write(self, line: str) -> None:
        if self.bar.disable or self.bar.fp.isatty():  # on a terminal: above the bar, which is drawn again
            with self.bar.external_write_mode(file=sys.stdout):
                print(line, flush=True)
            return
        # In a log, where stdout and stderr may be one file: the bar's line (if drawn since the last
        # line) ended first, so that each JSON line stands alone.
        if self.bar.last_print_t != self.line_ended_at:
            self.bar.fp.write("\n")
            self.bar.fp.flush()
            self.line_ended_at = self.bar.last_print_t
        print(line, flush=True)

    def close(self) -> None:
        self.bar.close()
