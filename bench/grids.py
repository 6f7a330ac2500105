"""What a user waits for: 16 images and 1 image of each served model through the API, side by side.

    python -m bench.grids [--weights weights] [--threads 1] [--repeats 5] [--models diffusion dcgan ...]

One real `genserve serve` process (started as the README starts it, on loopback, with
`GENSERVE_THREADS` torch threads) serves a snapshot of the weights; for each model, the wall time
of `POST /v1/models/NAME/samples` for 16 images and for 1 (the model's default steps), each the
median of `--repeats` warm runs after one unmeasured run, one request at a time. Run it on a quiet
machine: it measures the server, so nothing else should share its cores. Prints one JSON line per
model and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.process import running_server, snapshot


def wait(client: httpx.Client, url: str, n: int, repeats: int) -> float:
    """The median wall time of `repeats` warm samples requests of n images (seeds 0 .. n-1)."""
    client.post(url, json={"n": n, "seed": 0}).raise_for_status()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.post(url, json={"n": n, "seed": 0}).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grids", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", help="model names (default: every model served)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        weights = snapshot(args.weights, Path(scratch) / "weights")
        with running_server(weights, Path(scratch) / "server.log", threads=args.threads) as server, \
                httpx.Client(base_url=server.url, timeout=300) as client:
            served = client.get("/v1/models").json()["models"]
            for info in served:
                if args.models and info["name"] not in args.models:
                    continue
                url = f"/v1/models/{info['name']}/samples"
                row = {"model": info["name"], "family": info["family"], "threads": args.threads,
                       "steps": (info.get("sampling_steps") or [None])[0],
                       "grid_16_s": round(wait(client, url, 16, args.repeats), 3),
                       "one_image_s": round(wait(client, url, 1, args.repeats), 3)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    print("\n| model | family | default steps | 16 images (s) | 1 image (s) |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['model']} | {row['family']} | {row['steps'] or ''} | {row['grid_16_s']} | {row['one_image_s']} |")


if __name__ == "__main__":
    main()
