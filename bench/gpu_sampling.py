"""PixelCNN and PixelRNN sampling on a CUDA device: 16 images naive, cached, and cached with each
row replayed as a recorded CUDA graph (models/families/row_sampler.py), and whether all three draw
the same pixels.

    python -m bench.gpu_sampling [--weights weights/pixelcnn weights/pixelrnn] [--images 16]
                                 [--repeats 5] [--no-naive] [--device cuda]

In process, each checkpoint on the device in float32 with TF32 off (cuDNN's convolutions, the
naive sampler's, use it by default; the steppers' matrix products do not), seeds 0 .. N-1 as the
API draws them. Each time is the wall time of one call with the device synchronised before and
after: the naive sampler once; the cached sampler without graphs the best of `--repeats` after a
warm-up; with graphs, the first call (which records the row: once per batch size and temperature)
and then the best of `--repeats`; one image with graphs (run as two, as the API runs it) likewise.
`graphs_recorded` counts the rows the model holds recorded: 0 means the recording failed and the
sampler ran eagerly (the log says why). Prints a JSON line per model, a Markdown table, and last
`JSON {...}` with everything (bench.gpu_check reads that line).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint

FLOOR_16_S = 0.15  # issue 43: 16 images on an H100 or H200, each family


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(wall seconds, result) of one call, the device idle before and done after."""
    synchronise(device)
    start = time.perf_counter()
    result = fn()
    synchronise(device)
    return time.perf_counter() - start, result


def best(fn, device: torch.device, repeats: int) -> float:
    return min(timed(fn, device)[0] for _ in range(repeats))


def measure(path: Path, device: torch.device, images: int, repeats: int, naive: bool) -> dict:
    model, _ = load_checkpoint(path, device)
    noise, cond = model.noise_for_seeds(range(images))

    def sample(graphs: bool, n: int = images, fast: bool = True) -> torch.Tensor:
        model.cuda_graphs = graphs
        return model.sample_from_noise(noise[:n], 1.0, None if cond is None else cond[:n], fast=fast)

    _, height, width = model.config.image_shape
    row = {"model": path.name, "device": str(device), "images": images}
    with torch.inference_mode():  # as the worker samples
        cached = sample(False)  # also the warm-up: cuBLAS handles, the allocator's blocks
        row["cached_s"] = best(lambda: sample(False), device, repeats)
        row["graphs_first_s"], graphs = timed(lambda: sample(True), device)
        row["graphs_s"] = best(lambda: sample(True), device, repeats)
        row["graphs_1_first_s"], _ = timed(lambda: sample(True, 1), device)
        row["graphs_1_s"] = best(lambda: sample(True, 1), device, repeats)
        if naive:
            row["naive_s"], naive_images = timed(lambda: sample(False, fast=False), device)
    recorded = vars(model).get("_row_graphs")
    row["graphs_recorded"] = 0 if recorded is None or recorded.broken else len(recorded.graphs)
    row["graphs_equal_cached"] = bool(torch.equal(graphs, cached))
    if naive:
        row["naive_equal_cached"] = bool(torch.equal(naive_images, cached))
    row["graphs_step_ms"] = row["graphs_s"] / (height * width) * 1000
    row["cached_step_ms"] = row["cached_s"] / (height * width) * 1000
    row["cached_over_graphs"] = row["cached_s"] / row["graphs_s"]
    if images == 16:
        row["floor_16_s"] = FLOOR_16_S
        row["meets_floor"] = row["graphs_s"] <= FLOOR_16_S
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_sampling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", default=[Path("weights/pixelcnn"), Path("weights/pixelrnn")])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive sampler (PixelRNN: ~20 s on a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for path in args.weights:
        rows.append(measure(path, device, args.images, args.repeats, args.naive))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{device}: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}\n")
    print(f"| model | {args.images} images: naive (s) | cached (s) | cached + CUDA graphs (s) | first call, recording (s) "
          "| 1 image, graphs (s) | pixel step, graphs (ms) | same pixels (graphs / naive vs cached) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r.get('naive_s', '-')} | {r['cached_s']} | {r['graphs_s']} | {r['graphs_first_s']} "
              f"| {r['graphs_1_s']} | {r['graphs_step_ms']} | {r['graphs_equal_cached']} / {r.get('naive_equal_cached', '-')} |")
    print("JSON " + json.dumps({"device": str(device), "torch": torch.__version__, "models": rows}), flush=True)


if __name__ == "__main__":
    main()
