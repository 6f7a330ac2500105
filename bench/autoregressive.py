"""PixelCNN and PixelRNN sampling through the API, beside the arithmetic that bounds it, in one run.

    python -m bench.autoregressive [--weights weights/pixelcnn weights/pixelrnn] [--repeats 3]
                                   [--naive] [--train-steps 3] [--match-sizes]

For each checkpoint, with the torch threads the server uses (`GENSERVE_THREADS`, default: the
cores less one):
- one forward pass of the network over 16 images, and its arithmetic (multiply-adds counted on
  the convolutions' outputs), against this machine's measured float32 GFLOP/s (a 1024^3 matrix
  product): the time the pass would take at that rate is the limit of any sampler that computes
  every activation once, the sampler's `limit` below;
- through a real `genserve serve` process (started as the README starts it, on loopback): the wall
  time of `POST .../samples` for 16 images and for 1, and of the same 16 as an event stream (the
  demo's row-by-row drawing) until its `done` event, each the median of `--repeats` warm runs,
  with httpx and, for the plain and streamed 16, with a raw socket that parses nothing (a light
  client: httpx parses each of the stream's chunks on the cores the server needs);
- the time per pixel step (the 16-image answer over the pixels of one image) against its
  arithmetic at the measured rate;
- with `--naive`: the naive sampler (the whole network per pixel) on the same 16 images, in
  process, and whether both samplers drew the same pixels;
- one training step (batch 64, forward, backward and Adam) and the epoch of Fashion-MNIST it
  makes, the test bits/dim from the card, and the exact likelihood per image.
Prints one JSON line per model and a Markdown table. `--match-sizes` also times a training step of
each family at the other's parameter count (fresh weights, widths scaled until the counts meet),
which tells the architectures' cost apart from their sizes.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import torch
from torch import nn

from app.config import Settings
from bench.process import running_server, snapshot
from models.checkpoint import build_model, load_checkpoint
from models.data import load_dataset, to_float

TRAIN_BATCH = 64
EPOCH_BATCHES = 60000 // TRAIN_BATCH
GRID = 16
STREAM = {"accept": "text/event-stream"}


def seconds(fn, repeats: int = 1) -> float:
    """The best wall time of `repeats` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine_gflops(size: int = 1024, repeats: int = 5) -> float:
    """float32 GFLOP/s of a large matrix product at the current torch threads: the rate to hold
    arithmetic against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size ** 3 / seconds(lambda: a @ b, repeats) / 1e9


def multiply_adds(model: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> int:
    """Multiply-adds of one forward pass: each convolution's outputs times its inputs per output."""
    total = 0

    def count(module, _, output):
        nonlocal total
        per_output = module.in_channels // module.groups * module.weight[0, 0].numel()
        total += output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    try:
        with torch.inference_mode():
            model(x, cond)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def training_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
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


def api_seconds(client: httpx.Client, name: str, body: dict, repeats: int, stream: bool = False) -> float:
    """The median wall time of `repeats` answers after one warm-up (for a stream: until its last byte)."""
    times = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        answer = client.post(f"/v1/models/{name}/samples", json={**body, "seed": 100 + attempt},
                             headers=STREAM if stream else None)
        elapsed = time.perf_counter() - start
        answer.raise_for_status()
        if stream and "event: done" not in answer.text:
            raise RuntimeError(f"{name}: the event stream ended without its done event: {answer.text[-300:]}")
        if attempt:
            times.append(elapsed)
    return statistics.median(times)


def raw_seconds(address: tuple[str, int], name: str, body: dict, repeats: int, stream: bool = False) -> float:
    """`api_seconds` with a raw socket: one request per connection, the answer read into one
    buffer as it comes and parsed by nobody, so that the client takes almost no CPU from the
    two cores the server needs (httpx parses each of a stream's 28 chunks as it arrives)."""
    times = []
    for attempt in range(repeats + 1):
        payload = json.dumps({**body, "seed": 100 + attempt}).encode()
        head = (f"POST /v1/models/{name}/samples HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                + ("Accept: text/event-stream\r\n" if stream else "") + "\r\n").encode()
        answer = bytearray()
        start = time.perf_counter()
        with socket.create_connection(address) as sock:
            sock.sendall(head + payload)
            while chunk := sock.recv(1 << 20):
                answer += chunk
        elapsed = time.perf_counter() - start
        if not answer.startswith(b"HTTP/1.1 200") or (stream and b"event: done" not in answer):
            raise RuntimeError(f"{name}: unexpected answer {bytes(answer[:200])!r}")
        if attempt:
            times.append(elapsed)
    return statistics.median(times)


def measure(path: Path, client: httpx.Client, gflops: float, args: argparse.Namespace) -> dict:
    model, card = load_checkpoint(path)
    name = path.name
    _, height, width = model.config.image_shape
    test = load_dataset(card["dataset"], "test", limit=100)
    x16, cond16 = to_float(test.images[:GRID]), test.labels[:GRID] if model.class_conditional else None
    with torch.inference_mode():
        model(x16, cond16)
        forward_s = seconds(lambda: model(x16, cond16), args.repeats)
    macs = multiply_adds(model, x16[:1], None if cond16 is None else cond16[:1])
    limit_s = 2 * macs * GRID / (gflops * 1e9)
    row = {"model": name, "family": model.family, "parameters": sum(p.numel() for p in model.parameters()),
           "test_bits_per_dim": card["metrics"].get("test_bits_per_dim"),
           "forward_16_s": round(forward_s, 3), "mflop_per_image": round(2 * macs / 1e6, 1),
           "limit_16_s": round(limit_s, 3)}
    row["api_16_s"] = round(api_seconds(client, name, {"n": GRID}, args.repeats), 3)
    row["api_1_s"] = round(api_seconds(client, name, {"n": 1}, args.repeats), 3)
    row["stream_16_s"] = round(api_seconds(client, name, {"n": GRID}, args.repeats, stream=True), 3)
    row["api_16_forward_passes"] = round(row["api_16_s"] / forward_s, 2)
    row["stream_over_plain"] = round(row["stream_16_s"] / row["api_16_s"], 3)
    address = (client.base_url.host, client.base_url.port)
    row["raw_16_s"] = round(raw_seconds(address, name, {"n": GRID}, args.repeats), 3)
    row["raw_stream_16_s"] = round(raw_seconds(address, name, {"n": GRID}, args.repeats, stream=True), 3)
    row["raw_stream_over_plain"] = round(row["raw_stream_16_s"] / row["raw_16_s"], 3)
    row["step_ms"] = round(row["api_16_s"] / (height * width) * 1000, 3)
    row["step_limit_ms"] = round(limit_s / (height * width) * 1000, 4)
    row["step_over_limit"] = round(row["step_ms"] / row["step_limit_ms"], 1)
    if args.naive:
        noise, cond = model.noise_for_seeds(range(GRID))
        samples = {}
        with torch.inference_mode():
            for fast in (True, False):
                def draw(fast=fast):
                    samples[fast] = model.sample_from_noise(noise, 1.0, cond, fast=fast)
                row[f"in_process_16_{'cached' if fast else 'naive'}_s"] = round(seconds(draw), 2)
        row["identical_pixels"] = bool(torch.equal(samples[True], samples[False]))
    if args.train_steps:
        x, y = to_float(load_dataset(card["dataset"], "test", limit=TRAIN_BATCH).images), test.labels[:TRAIN_BATCH]
        step_s = training_step_seconds(model, x, y, args.train_steps)
        row["train_epoch_min"] = round(step_s * EPOCH_BATCHES / 60, 1)
        images = to_float(test.images)
        with torch.inference_mode():
            row["likelihood_ms_per_image"] = round(seconds(lambda: model.nll(images)) / len(images) * 1000, 2)
    return row


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resized(model: nn.Module, target: int) -> nn.Module:
    """A fresh module of `model`'s family whose `channels` are scaled so that its parameter count
    comes closest to `target`."""
    config = {**vars(model.config), "image_shape": list(model.config.image_shape)}
    sizes = {c: parameters(build_model(model.family, {**config, "channels": c}, "meta")) for c in range(4, 257, 2)}
    channels = min(sizes, key=lambda c: abs(sizes[c] - target))
    return build_model(model.family, {**config, "channels": channels})


def print_table(rows: list[dict], threads: int, gflops: float) -> None:
    print(f"\n{threads} torch thread(s), {gflops:.1f} GFLOP/s measured (float32 matrix product)\n")
    print("| model | parameters | test bits/dim | forward, 16 images (s) | limit, 16 images (s) | API, 16 images (s) "
          "| API, 1 image (s) | event stream, 16 (s) | raw socket: plain / stream, 16 (s) | pixel step (ms) "
          "| step over its arithmetic |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['parameters']:,} | {r['test_bits_per_dim']} | {r['forward_16_s']} | {r['limit_16_s']} "
              f"| {r['api_16_s']} ({r['api_16_forward_passes']} passes) | {r['api_1_s']} "
              f"| {r['stream_16_s']} ({r['stream_over_plain']}x) | {r['raw_16_s']} / {r['raw_stream_16_s']} "
              f"({r['raw_stream_over_plain']}x) | {r['step_ms']} | {r['step_over_limit']}x |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoregressive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, nargs="+", default=[Path("weights/pixelcnn"), Path("weights/pixelrnn")])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also time the naive sampler (minutes)")
    parser.add_argument("--train-steps", type=int, default=3, help="0: no training step or likelihood timing")
    parser.add_argument("--match-sizes", action="store_true",
                        help="also time a training step of each family at the other's parameter count")
    args = parser.parse_args(argv)
    threads = Settings().torch_threads()
    torch.set_num_threads(threads)
    gflops = machine_gflops()
    print(f"{threads} torch thread(s) as the server, torch {torch.__version__}, {gflops:.1f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = snapshot(args.weights[0].parent, Path(tmp) / "weights")
        with running_server(weights, Path(tmp) / "server.log") as server, \
                httpx.Client(base_url=server.url, timeout=600) as client:
            for path in args.weights:
                rows.append(measure(path, client, gflops, args))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows, threads, gflops)
    if args.match_sizes:
        models = [load_checkpoint(path)[0] for path in args.weights]
        test = load_dataset("fashion-mnist", "test", limit=TRAIN_BATCH)
        x, y = to_float(test.images), test.labels
        print("\n| family | channels | parameters | training (min/epoch) |\n| --- | --- | --- | --- |")
        for target in models:
            for model in models:
                sized = model if model is target else resized(model, parameters(target))
                minutes = training_step_seconds(sized, x, y, args.train_steps) * EPOCH_BATCHES / 60
                print(f"| {sized.family} | {sized.config.channels} | {parameters(sized):,} | {minutes:.1f} |", flush=True)


if __name__ == "__main__":
    main()
