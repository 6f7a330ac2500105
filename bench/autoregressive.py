"""PixelRNN against PixelCNN, side by side on one machine: the lecture's comparison, measured.

    python -m bench.autoregressive [--weights weights/pixelcnn weights/pixelrnn] [--threads 2]

For each checkpoint, in one run: parameters; the time of one training step (batch 64, forward,
backward and Adam) and the epoch of Fashion-MNIST it makes; the test bits/dim from its card; the
time to sample 16 images with the naive sampler (the whole network per pixel) and the incremental
one, and whether both drew the same pixels; the time of the exact likelihood per image (the
marginal over the classes, as `POST .../likelihood` computes it without a class). Prints one JSON
line per model and a Markdown table.

The shipped models differ in size, so the last lines time a training step of each family at the
other's parameter count too (`--match-sizes`: fresh weights, each config's width scaled until
the parameter counts meet), which tells the architectures' cost apart from their sizes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.checkpoint import build_model, load_checkpoint
from models.data import load_dataset, to_float

TRAIN_BATCH = 64
EPOCH_BATCHES = 60000 // TRAIN_BATCH


def seconds(fn, repeats: int = 1) -> float:
    """The best wall time of `repeats` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def training_step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """The mean time of a training step after one warm-up step, on a copy (the weights stay as shipped)."""
    trained = type(model)(model.config).to(x.device)
    trained.load_state_dict(model.state_dict())
    trained.train()
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-4)

    def step():
        loss, _ = trained.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    return seconds(lambda: [step() for _ in range(steps)]) / steps


def measure(path: Path, device: str, train_steps: int, n_samples: int, repeats: int) -> dict:
    model, card = load_checkpoint(path, device)
    test = load_dataset(card["dataset"], "test", limit=max(TRAIN_BATCH, 100))
    x, y = to_float(test.images[:TRAIN_BATCH]).to(device), test.labels[:TRAIN_BATCH].to(device)
    step_s = training_step_seconds(model, x, y, train_steps)
    noise, cond = model.noise_for_seeds(range(n_samples))
    samples, timings = {}, {}
    with torch.inference_mode():
        for fast in (True, False):
            def draw(fast=fast):
                samples[fast] = model.sample_from_noise(noise, 1.0, cond, fast=fast)
            timings[fast] = seconds(draw, repeats)
        images = to_float(test.images[:100]).to(device)
        likelihood_s = seconds(lambda: model.nll(images), repeats) / len(images)
    return {
        "model": path.name, "family": model.family, "parameters": sum(p.numel() for p in model.parameters()),
        "train_step_s": round(step_s, 4), "train_epoch_min": round(step_s * EPOCH_BATCHES / 60, 1),
        "test_bits_per_dim": card["metrics"].get("test_bits_per_dim"),
        f"sample_{n_samples}_naive_s": round(timings[False], 2), f"sample_{n_samples}_cached_s": round(timings[True], 2),
        "cached_speedup": round(timings[False] / timings[True], 1),
        "identical_pixels": bool(torch.equal(samples[True], samples[False])),
        "likelihood_ms_per_image": round(likelihood_s * 1000, 2),
    }


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resized(model: torch.nn.Module, target: int) -> torch.nn.Module:
    """A fresh module of `model`'s family whose `channels` are scaled so that its parameter count
    comes closest to `target`."""
    config = {**vars(model.config), "image_shape": list(model.config.image_shape)}
    sizes = {c: parameters(build_model(model.family, {**config, "channels": c}, "meta")) for c in range(4, 257, 2)}
    channels = min(sizes, key=lambda c: abs(sizes[c] - target))
    return build_model(model.family, {**config, "channels": channels})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoregressive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", default=[Path("weights/pixelcnn"), Path("weights/pixelrnn")])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--match-sizes", action="store_true",
                        help="also time a training step of each family at the other's parameter count")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} threads, torch {torch.__version__}", flush=True)
    rows = []
    for path in args.weights:
        rows.append(measure(path, args.device, args.train_steps, args.samples, args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    n = args.samples
    print(f"\n| model | parameters | training (min/epoch) | test bits/dim | {n} samples, naive (s) | "
          f"{n} samples, cached (s) | likelihood (ms/image) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['parameters']:,} | {r['train_epoch_min']} | {r['test_bits_per_dim']} | "
              f"{r[f'sample_{n}_naive_s']} | {r[f'sample_{n}_cached_s']} | {r['likelihood_ms_per_image']} |")
    if args.match_sizes:
        models = [load_checkpoint(path, args.device)[0] for path in args.weights]
        test = load_dataset("fashion-mnist", "test", limit=TRAIN_BATCH)
        x, y = to_float(test.images).to(args.device), test.labels.to(args.device)
        print("\n| family | channels | parameters | training (min/epoch) |\n| --- | --- | --- | --- |")
        for target in models:
            for model in models:
                sized = model if model is target else resized(model, parameters(target)).to(args.device)
                minutes = training_step_seconds(sized, x, y, args.train_steps) * EPOCH_BATCHES / 60
                print(f"| {sized.family} | {sized.config.channels} | {parameters(sized):,} | {minutes:.1f} |", flush=True)


if __name__ == "__main__":
    main()
