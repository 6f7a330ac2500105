"""Where a training run writes, and what it may replace (the rule the README states).

A run writes its checkpoint to `--out` (default `weights/FAMILY`) and its resumable state to
`--state-dir` (default `runs/<the --out folder's name>`). It replaces
- a checkpoint in `--out` only when this run wrote it (each run has an id, kept in its state and
  on its card, so `--resume` continues its own), when `--init-from` names that same folder
  (continuing a checkpoint in place), or with `--overwrite`;
- a state in `--state-dir` only when it resumes that state, or with `--overwrite`.
So `python -m models.train dcgan --dataset folder ...` is refused rather than replacing the
shipped `weights/dcgan`. A folder that cannot be written is refused at start, before any
training; each refusal is one line (`error: ...`). At each save the checkpoint in `--out` must
still be the one the run found or last wrote: a run never overwrites what another wrote meanwhile.
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile
from pathlib import Path

import torch

from models.checkpoint import CARD_FILE, CheckpointError, read_card


def new_run_id() -> str:
    return secrets.token_hex(6)


def check_writable(args) -> None:
    """SystemExit unless files can be made beside `--out` (a new version of the folder is written
    there, then renamed) and in `--state-dir`. Nothing is created: a probe file in the nearest
    folder that exists is made and removed."""
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"error: --out {args.out} is a file, not a checkpoint folder")
    for flag, folder in (("--out", args.out.parent), ("--state-dir", args.state_dir)):
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            fd, probe = tempfile.mkstemp(prefix=".genserve-probe-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise SystemExit(f"error: {flag} {folder}: cannot write there ({e.strerror or e})") from None


def load_state(trainer, state_file: Path, device: torch.device) -> dict:
    """The state saved in `state_file`, loaded into `trainer`; one line if it is not this run's kind."""
    state = torch.load(state_file, map_location=device, weights_only=True)
    try:
        trainer.load_state_dict(state["trainer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        why = " ".join(line.strip() for line in str(e).strip().splitlines()[:2]) or type(e).__name__
        raise SystemExit(f"error: --state-dir {state_file.parent} holds the state of a run that does not fit this "
                         f"one ({why}); resume it with its own family and --set, or choose another "
                         f"--state-dir") from None
    return state


def save_state(state: dict, state_file: Path) -> None:
    """The training state, written whole (a temporary file synced, then renamed)."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = state_file.with_name(f".{state_file.name}.tmp-{os.getpid()}")
    torch.save(state, temporary)
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, state_file)


class Target:
    """`--out` as this run may write it: the checkpoint it found there (if allowed to replace it)
    and those it wrote since."""

    def __init__(self, out: Path, replaceable: str | None):
        self.out = out
        self.replaceable = {None, replaceable}

    def check(self) -> None:
        """Before a save: SystemExit if another writer has put a checkpoint in `--out` meanwhile."""
        card = _card(self.out)
        held = card.get("sha256") if card else None
        if held not in self.replaceable:
            raise SystemExit(f"error: --out {self.out} now holds {_describe(card)}, written by another run "
                             f"since this one started; not replacing it (this run's state is in its "
                             f"--state-dir: --resume with another --out)")

    def wrote(self, sha256: str) -> None:
        self.replaceable.add(sha256)


def claim(args, state: dict | None) -> Target:
    """Check that this run may write `--out` and `--state-dir` (the rule above); `state` is the one
    it resumes, if any."""
    card = _card(args.out)
    if card is not None:
        run = state["progress"].get("run") if state else None
        own = state is not None and card.get("training", {}).get("run") == run  # (both None: a run from before ids)
        in_place = args.init_from is not None and args.init_from.resolve() == args.out.resolve()
        if not (own or in_place or args.overwrite):
            other = args.out.parent / f"{args.out.name}-2"
            raise SystemExit(f"error: --out {args.out} holds {_describe(card)}, which this run did not write; not "
                             f"replacing it: choose another --out (say --out {other}), continue the run that "
                             f"wrote it with --resume, or replace it with --overwrite")
    state_file = args.state_dir / "state.pt"
    if state is None and state_file.exists() and not args.overwrite:
        raise SystemExit(f"error: --state-dir {args.state_dir} holds another run's training state; continue it "
                         f"with --resume, choose another --state-dir, or start afresh over it with --overwrite")
    return Target(args.out, card.get("sha256") if card else None)


def _card(out: Path) -> dict | None:
    """The card of the checkpoint in `out`; {} for a folder that holds files but no readable card
    (a save would replace them); None where nothing would be replaced."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        return read_card(out)
    except CheckpointError:
        return {}


def _describe(card: dict) -> str:
    if not card:
        return f"files but no readable {CARD_FILE}"
    training = card.get("training") or {}
    when = f", trained {str(training['trained_at'])[:10]}" if training.get("trained_at") else ""
    return (f"a {card.get('family')} checkpoint ({card.get('dataset')}, {training.get('epochs')} epochs{when})")
