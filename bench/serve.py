"""Service throughput and latency: the real server under concurrent load, batching on and off.

    python -m bench.serve [--weights weights] [--seconds 8] [--requests 5000] [--threads N] [--quick]

Copies the checkpoints to a temporary folder (each verified against its card: training may
rewrite weights/ meanwhile), starts two `genserve serve` processes on free loopback ports, one
with the default batching and one without (GENSERVE_MAX_BATCH=1, GENSERVE_BATCH_WAIT_MS=0), and
drives them with httpx at each concurrency for single images (n=1) and grids (n=64), alternating
the two servers configuration by configuration so that both see the same background load. Each
configuration sends until `--requests` have gone or `--seconds` have passed, then waits for what
is in flight. Right before each configuration, the raw model loop: `decode` on one batch in a
tight loop in this process, with the same torch threads and memory format as the worker. All
traffic stays on 127.0.0.1.

Prints one figure per line (grep-friendly), then the same as a Markdown table:
  MODEL n=N c=C raw batch=B images/s X
  MODEL n=N c=C batching=on|off requests/s|images/s|p50_ms|p95_ms|p99_ms|mean_batch|... X
  MODEL n=N c=C batching_ratio X      requests/s with batching over without
  MODEL n=1 c=C batching_ceiling X    raw images/s at batch C over batch 1: what batching gains
                                      the model alone
`service/raw` is the service's images/s over the raw loop's at batch N; `server_cpu_ms/request` is
the server process's CPU time (all threads) per answered request, `client_cpu_ms/request` the
bench process's (the httpx load generator shares the cores); `failed` counts every answer
but 200 and 503 (a full queue's back-pressure, which is allowed), client errors included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from app.config import Settings
from app.worker import prepare
from bench.process import REPO, Server, running_server, snapshot
from models.checkpoint import load_checkpoint

MODELS = ("dcgan", "vae")
SIZES = (1, 64)
CONCURRENCY = (1, 8, 32, 64)


# -- the raw model loop, and the server's own figures -------------------------------------------

def raw_images_per_s(module: nn.Module, batch: int, seconds: float) -> float:
    """The model's own limit: `decode` on one batch in a tight loop, as the worker calls it."""
    z = module.sample_latents(batch, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for _ in range(3):  # warm-up: allocator and oneDNN primitive caches
            module.decode(z)
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or calls < 3:
            module.decode(z)
            calls += 1
    return calls * batch / elapsed


def cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_totals(server: Server, name: str) -> tuple[float, float]:
    """(images, forward passes) the server has run for `name` so far, from /metrics."""
    totals = {"genserve_batch_images_sum": 0.0, "genserve_batch_images_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == name:
                totals[sample.name] += sample.value
    return totals["genserve_batch_images_sum"], totals["genserve_batch_images_count"]


# -- load ---------------------------------------------------------------------------------------

@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, of the requests answered 200
    statuses: dict[str, int] = field(default_factory=dict)  # every answer by status (or exception name)
    elapsed: float = 0.0
    mean_batch: float = 0.0  # images per forward pass, from the server's /metrics
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this process's, i.e. the load generator's, on the same cores

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.elapsed

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status not in ("200", "503"))

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


async def drive(url: str, name: str, n: int, concurrency: int, requests: int, seconds: float) -> Result:
    """`concurrency` clients in a closed loop, each sending the next request when its last is answered.

    Each client has its own httpx connection: one shared pool scans all its connections on every
    request, which costs the client more CPU than the server spends at concurrency 64. One TLS
    context serves them all (httpx loads the CA bundle per client otherwise, even for plain HTTP).
    """
    result = Result()
    sent = 0
    tls = ssl.create_default_context()
    deadline = time.perf_counter() + seconds

    async def user() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, timeout=300, verify=tls) as client:
            while sent < requests and time.perf_counter() < deadline:
                seed, sent = sent, sent + 1
                started = time.perf_counter()
                try:
                    response = await client.post(f"/v1/models/{name}/samples", json={"n": n, "seed": seed})
                    status = str(response.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                if status == "200":
                    result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    return result


def measure(server: Server, name: str, n: int, concurrency: int, requests: int, seconds: float) -> Result:
    images, passes = batch_totals(server, name)
    cpu, client_cpu = cpu_seconds(server), time.process_time()
    result = asyncio.run(drive(server.url, name, n, concurrency, requests, seconds))
    result.server_cpu_s = cpu_seconds(server) - cpu
    result.client_cpu_s = time.process_time() - client_cpu
    images_after, passes_after = batch_totals(server, name)
    result.mean_batch = (images_after - images) / max(1.0, passes_after - passes)
    return result


# -- report -------------------------------------------------------------------------------------

def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "weights", help="checkpoint folders (copied first)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="images per request")
    parser.add_argument("--concurrency", help=f"default {','.join(map(str, CONCURRENCY))} (--quick: 1,8,32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="most seconds one configuration sends for")
    parser.add_argument("--requests", type=int, default=5000, help="most requests of one configuration")
    parser.add_argument("--raw-seconds", type=float, default=2.0, help="seconds of each raw model loop")
    parser.add_argument("--threads", type=int, default=defaults.torch_threads(),
                        help="torch threads of the servers and the raw loop (default: the service's default)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.raw_seconds = 1.0, 0.5
    names = tuple(args.models.split(","))
    sizes = tuple(int(s) for s in args.sizes.split(","))
    levels = tuple(int(c) for c in (args.concurrency or ("1,8,32" if args.quick else ",".join(map(str, CONCURRENCY))))
                   .split(","))
    torch.set_num_threads(args.threads)
    print(f"machine: {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}, torch threads {args.threads}; "
          f"batching on: batch_wait_ms {defaults.batch_wait_ms:g}, max_batch {defaults.max_batch}, "
          f"queue_size {defaults.queue_size}; off: max_batch 1, batch_wait_ms 0", flush=True)

    with tempfile.TemporaryDirectory(prefix="genserve-bench-") as tmp, ExitStack() as stack:
        weights = snapshot(args.weights, Path(tmp) / "weights")
        # Prepared as the worker prepares them (memory format), so the raw loop runs the same kernels.
        modules = {name: prepare(load_checkpoint(weights / name)[0], channels_last=defaults.channels_last)
                   for name in names}
        servers = {
            "on": stack.enter_context(running_server(weights, Path(tmp) / "on.log", threads=args.threads)),
            "off": stack.enter_context(running_server(weights, Path(tmp) / "off.log", threads=args.threads,
                                                      max_batch=1, batch_wait_ms=0)),
        }
        for server in servers.values():  # loads oneDNN kernels and converts the modules' layout
            for name in names:
                for n in sizes:
                    measure(server, name, n, 4, 8, 30)
        rows = []
        for name in names:
            for n in sizes:
                for c in levels:
                    # The raw loop right before its configuration: the background load drifts.
                    batch = min(c, defaults.max_batch) if n == 1 else n
                    raw = {b: raw_images_per_s(modules[name], b, args.raw_seconds) for b in {n, batch}}
                    for b, rate in sorted(raw.items()):
                        print(f"{name} n={n} c={c} raw batch={b} images/s {rate:.1f}")
                    results = {mode: measure(server, name, n, c, args.requests, args.seconds)
                               for mode, server in servers.items()}
                    for mode, r in results.items():
                        rows.append((name, n, c, mode, report(f"{name} n={n} c={c} batching={mode}", r, n, raw[n])))
                    ratio = results["on"].requests_per_s / max(1e-9, results["off"].requests_per_s)
                    print(f"{name} n={n} c={c} batching_ratio {ratio:.2f}")
                    if n == 1:
                        print(f"{name} n={n} c={c} batching_ceiling {raw[batch] / raw[1]:.2f}", flush=True)
        print_table(rows)


def report(label: str, r: Result, n: int, raw_rate: float) -> dict[str, str]:
    """Print one configuration's figures, one a line; return them for the table."""
    answered = max(1, len(r.latencies))
    figures = {"requests/s": f"{r.requests_per_s:.1f}", "images/s": f"{r.requests_per_s * n:.1f}",
               "p50_ms": f"{r.percentile_ms(50):.1f}", "p95_ms": f"{r.percentile_ms(95):.1f}",
               "p99_ms": f"{r.percentile_ms(99):.1f}", "mean_batch": f"{r.mean_batch:.1f}",
               "server_cpu_ms/request": f"{1000 * r.server_cpu_s / answered:.2f}",
               "client_cpu_ms/request": f"{1000 * r.client_cpu_s / answered:.2f}",
               "service/raw": f"{r.requests_per_s * n / raw_rate:.2f}", "failed": str(r.failed)}
    for key, value in figures.items():
        print(f"{label} {key} {value}")
    print(f"{label} statuses {dict(sorted(r.statuses.items()))}")
    return figures


def print_table(rows: list) -> None:
    keys = list(rows[0][4])
    print("\n| model | n | concurrency | batching | " + " | ".join(keys) + " |")
    print("|---" * (4 + len(keys)) + "|")
    for name, n, c, mode, figures in rows:
        print(f"| {name} | {n} | {c} | {mode} | " + " | ".join(figures[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
