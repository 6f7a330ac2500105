"""PixelCNN sampling time: the naive sampler (whole network per pixel) against the fast one.

    python bench/pixelcnn.py [--weights weights/pixelcnn] [--threads 2] [--repeats 1]

Prints one figure per line: seconds per batch of 1 and of 16 for each sampler, the speedup, and
whether both drew identical pixels from the same noise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights/pixelcnn"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.weights, args.device)
    print(f"model: {args.weights} ({card['parameters']} parameters), device {args.device}, threads {args.threads}")
    for n in (1, 16):
        noise, cond = model.draw_noise(n, torch.Generator().manual_seed(0))
        with torch.inference_mode():
            fast_s, fast = timed(lambda: model.sample_from_noise(noise, 1.0, cond, fast=True), args.repeats)
            naive_s, naive = timed(lambda: model.sample_from_noise(noise, 1.0, cond, fast=False), args.repeats)
        print(f"batch {n:2d}: naive {naive_s:8.2f} s  fast {fast_s:6.2f} s  speedup {naive_s / fast_s:5.1f}x  "
              f"identical pixels: {bool(torch.equal(fast, naive))}")


if __name__ == "__main__":
    main()
