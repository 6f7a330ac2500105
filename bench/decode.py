"""CPU time per decoded image, for latent models side by side (a retrained generator against the
one it replaces, say), alternating so that each ratio comes from one run.

    python -m bench.decode weights/dcgan /tmp/dcgan-before [--threads 1] [--rounds 5]

Prints, per checkpoint and batch size, the best milliseconds per image over the rounds (process
CPU time divided by threads, so a busy machine inflates it less than wall time), and each
checkpoint's ratio to the first one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint

BATCHES = (1, 64)


def cpu_ms_per_image(model, z: torch.Tensor, threads: int, repeats: int) -> float:
    with torch.inference_mode():
        model.decode(z)  # warm-up: oneDNN builds its kernels for this shape once
        start = time.process_time()
        for _ in range(repeats):
            model.decode(z)
        return (time.process_time() - start) / threads / repeats / z.shape[0] * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {path: load_checkpoint(path)[0] for path in args.checkpoints}
    best = {(path, n): float("inf") for path in models for n in BATCHES}
    for _ in range(args.rounds):
        for n in BATCHES:
            for path, model in models.items():
                z = model.sample_latents(n, torch.Generator().manual_seed(0))
                best[path, n] = min(best[path, n], cpu_ms_per_image(model, z, args.threads, max(1, 256 // n)))
    first = args.checkpoints[0]
    for path, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        figures = "  ".join(f"batch {n}: {best[path, n]:.3f} ms/image ({best[path, n] / best[first, n]:.2f}x)"
                            for n in BATCHES)
        print(f"{path} ({params / 1e6:.2f} M parameters, threads {args.threads}): {figures}")


if __name__ == "__main__":
    main()
