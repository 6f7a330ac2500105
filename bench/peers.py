"""genserve beside a peer server, LitServe, on the same model and the same work per request.

    python -m bench.peers [--weights weights] [--seconds 8] [--requests 2000] [--rounds 3]
                          [--concurrency 1,8,32,64] [--clients shared_pool,per_user,raw] [--quick]

Copies the shipped DCGAN checkpoint (only weights/dcgan, verified against its card) to a temporary
folder and starts three server processes on free loopback ports that serve it:

  genserve            `genserve serve` with its defaults, answering `POST /v1/models/dcgan/samples`
                      `{"n": 1, "seed": s}` with a PNG;
  genserve_unbatched  the same with batching off (GENSERVE_MAX_BATCH=1): what batching gains;
  litserve            LitServe (`DcganAPI` below, `python -m bench.peers --serve-litserve PORT`)
                      answering `POST /predict` `{"seed": s}` with the same PNG: z from
                      `latents_for_seeds([s])` on the CPU, `decode` under inference mode with the
                      module in channels-last memory and 1 torch thread, on the device genserve
                      picks (GENSERVE_DEVICE), encoded by genserve's own
                      `app.imaging.grid_png`; batches of up to 32 requests gathered for at most 2 ms
                      (max_batch_size=32, batch_timeout=0.002). Installed as its users get it, with
                      uvicorn[standard] (uvloop, httptools).

At start-up each answers seed 0, and `same_png_for_seed_0` says whether the PNGs are the same
bytes. Then this process drives them in three client patterns, each a closed loop of C workers
that send the next request when the last is answered, seeds 0, 1, 2, ...:

  shared_pool  one `httpx.AsyncClient` whose pool of C connections the C workers share (httpcore
               scans its connections on every request: its CPU per request grows with C);
  per_user     each worker with its own httpx client of one connection;
  raw          each worker with one raw asyncio connection (`RawConnection`): the lightest load
               generator, which tells the servers' own limits from the clients'.

For each pattern and concurrency C the servers run one after the other (so all see the same
background load), each for `--seconds` or `--requests`, whichever comes first, after a warm-up
request per worker (which opens its connection); that `--rounds` times, the first server rotating.
Single runs on two shared cores scatter by 10-20 %; the summary takes medians. All traffic stays on
127.0.0.1.

Prints one line per run, then per server, pattern and concurrency its median run's line and two
ratio lines (grep-friendly), then the medians as a Markdown table:
  SERVER client=CLIENT c=C round=R|median requests/s X p50_ms X p95_ms X p99_ms X
         server_cpu_ms/request X client_cpu_ms/request X failed N
  genserve/litserve client=CLIENT c=C X (rounds MIN-MAX)   genserve's requests/s over LitServe's
  batching_on/off client=CLIENT c=C X (rounds MIN-MAX)     genserve's over genserve_unbatched's
(the median, and the range, of the rounds' ratios: each round's servers ran back to back).
Latencies are of the requests answered 200; `server_cpu_ms/request` is the CPU time (user + system,
all threads) of the server's whole process tree per answered request: for LitServe its launcher,
its multiprocessing manager (the queues), its inference worker and its uvicorn process;
`client_cpu_ms/request` is this process's, the load generator's, on the same cores. `failed`
counts every answer but 200 and 503, client errors included, as bench/serve.py does; a line of
statuses follows any configuration that had an answer but 200.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import litserve
import torch
from fastapi import Response

from app.config import Settings
from app.imaging import grid_png
from models.checkpoint import resolve_device
from bench.process import READY_TIMEOUT_S, REPO, Server, free_port, running_server, snapshot
from bench.serve import Result
from models.checkpoint import load_checkpoint

MODEL = "dcgan"
CONCURRENCY = (1, 8, 32, 64)
CLIENTS = ("shared_pool", "per_user", "raw")
# Ratio lines: (numerator, denominator) servers, as the median over rounds of each round's ratio.
RATIOS = {"genserve/litserve": ("genserve", "litserve"), "batching_on/off": ("genserve", "genserve_unbatched")}
LITSERVE_MAX_BATCH = 32
LITSERVE_BATCH_TIMEOUT_S = 0.002


# -- the LitServe server ------------------------------------------------------------------------

class DcganAPI(litserve.LitAPI):
    """One seed per request in, its PNG out: the work of genserve's n=1 samples request."""

    def __init__(self, checkpoint: Path, **options) -> None:
        super().__init__(**options)
        self.checkpoint = checkpoint

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        self.device = torch.device(device)
        self.module = load_checkpoint(self.checkpoint, self.device)[0]
        self.module.to(memory_format=torch.channels_last)  # as genserve's worker runs DCGAN

    def decode_request(self, request: dict) -> int:
        return int(request["seed"])

    def batch(self, seeds: list[int]) -> torch.Tensor:
        return self.module.latents_for_seeds(seeds)  # each seed's own generator, on the CPU

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module.decode(z.to(self.device)).cpu()

    def unbatch(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(images.split(1))

    def encode_response(self, image: torch.Tensor) -> Response:
        return Response(grid_png(image), media_type="image/png")


def serve_litserve(port: int, checkpoint: Path) -> None:
    api = DcganAPI(checkpoint, max_batch_size=LITSERVE_MAX_BATCH, batch_timeout=LITSERVE_BATCH_TIMEOUT_S)
    # On the device genserve would pick (GENSERVE_DEVICE), so that a GPU run compares like with like.
    accelerator = resolve_device(Settings().device).type
    server = litserve.LitServer(api, accelerator=accelerator, devices=1, workers_per_device=1)
    # No access log, as genserve has none; LitServe's default "info" would write a line per request.
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning", access_log=False)


@contextmanager
def running_litserve(checkpoint: Path, log: Path) -> Iterator[Server]:
    """`serve_litserve` in its own process group, ready (/health 200) within the block; stopped
    by SIGINT (LitServe's graceful shutdown), then SIGKILL to whatever of the group is left."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.peers", "--serve-litserve", str(port), "--checkpoint", str(checkpoint)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not answers_200(server.url + "/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LitServe was not ready (exit {process.poll()}):\n{log.read_text()}")
            time.sleep(0.3)
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the session's group: only LitServe's processes
        process.wait()


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# -- what is measured ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    name: str
    server: Server
    path: str
    payload: Callable[[int], dict]  # seed -> the JSON body of one single-image request


def peers_for(genserve: Server, unbatched: Server, litserve_server: Server) -> tuple[Peer, ...]:
    def samples(seed: int) -> dict:
        return {"n": 1, "seed": seed}
    return (Peer("genserve", genserve, f"/v1/models/{MODEL}/samples", samples),
            Peer("genserve_unbatched", unbatched, f"/v1/models/{MODEL}/samples", samples),
            Peer("litserve", litserve_server, "/predict", lambda seed: {"seed": seed}))


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of `root` and all its descendants, all threads (Linux /proc)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):  # a process that ended meanwhile
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        if pid in stats:
            total += int(stats[pid][11]) + int(stats[pid][12])
        pending.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def png_for_seed(peer: Peer, seed: int) -> bytes:
    response = httpx.post(peer.server.url + peer.path, json=peer.payload(seed), timeout=300)
    if response.status_code != 200 or not response.content.startswith(b"\x89PNG\r\n\x1a\n"):
        raise RuntimeError(f"{peer.name} answered {response.status_code} {response.headers.get('content-type')}: "
                           f"{response.content[:200]!r}")
    return response.content


class RawConnection:
    """The lightest client: one keep-alive connection, requests written as bytes, answers read by
    Content-Length, nothing else parsed (no pool, no header objects)."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.head = f"POST {peer.path} HTTP/1.1\r\nHost: {peer.server.url.removeprefix('http://')}\r\n" \
                    f"Content-Type: application/json\r\nContent-Length: "

    async def post(self, seed: int) -> str:
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection(*self.peer.server.address)
            reader, writer = self.streams
            body = json.dumps(self.peer.payload(seed)).encode()
            writer.write(f"{self.head}{len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            if re.search(rb"(?i)\r\nconnection: *close", head):
                await self.aclose()
            return head[9:12].decode()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            await self.aclose()
            return type(e).__name__

    async def aclose(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def drive(peer: Peer, client: str, concurrency: int, requests: int, seconds: float) -> Result:
    """`concurrency` workers in a closed loop; the clock (and the server's CPU, and this process's,
    the load generator's) starts once each has had one warm-up request answered. One TLS context
    for all the httpx clients: httpx loads the CA bundle per client otherwise, even for plain HTTP."""
    result = Result()
    tls = ssl.create_default_context()
    warmed, go = asyncio.Barrier(concurrency + 1), asyncio.Event()
    sent, deadline = 0, 0.0

    async def httpx_post(http: httpx.AsyncClient, seed: int) -> str:
        try:
            return str((await http.post(peer.path, json=peer.payload(seed))).status_code)
        except httpx.HTTPError as e:
            return type(e).__name__

    async def user(post: Callable[[int], Awaitable[str]]) -> None:
        nonlocal sent
        await post(0)
        await warmed.wait()
        await go.wait()
        while sent < requests and time.perf_counter() < deadline:
            seed, sent = sent, sent + 1
            started = time.perf_counter()
            status = await post(seed)
            if status == "200":
                result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    def pool(connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=peer.server.url, timeout=300, verify=tls,
                                 limits=httpx.Limits(max_connections=connections,
                                                     max_keepalive_connections=connections))

    async with AsyncExitStack() as stack:
        if client == "shared_pool":
            shared = await stack.enter_async_context(pool(concurrency))
            posts = [partial(httpx_post, shared)] * concurrency
        elif client == "per_user":
            posts = [partial(httpx_post, await stack.enter_async_context(pool(1))) for _ in range(concurrency)]
        else:
            connections = [RawConnection(peer) for _ in range(concurrency)]
            for connection in connections:
                stack.push_async_callback(connection.aclose)
            posts = [connection.post for connection in connections]
        users = [asyncio.create_task(user(post)) for post in posts]
        await warmed.wait()
        cpu, client_cpu = tree_cpu_seconds(peer.server.process.pid), time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        go.set()
        await asyncio.gather(*users)
        result.elapsed = time.perf_counter() - start
        result.server_cpu_s = tree_cpu_seconds(peer.server.process.pid) - cpu
        result.client_cpu_s = time.process_time() - client_cpu
    return result


# -- report -------------------------------------------------------------------------------------

def report(label: str, r: Result) -> dict[str, str]:
    """Print one configuration's line; return its figures for the table."""
    figures = {"requests/s": f"{r.requests_per_s:.1f}", "p50_ms": f"{r.percentile_ms(50):.1f}",
               "p95_ms": f"{r.percentile_ms(95):.1f}", "p99_ms": f"{r.percentile_ms(99):.1f}",
               "server_cpu_ms/request": f"{1000 * r.server_cpu_s / max(1, len(r.latencies)):.2f}",
               "client_cpu_ms/request": f"{1000 * r.client_cpu_s / max(1, len(r.latencies)):.2f}",
               "failed": str(r.failed)}
    print(label + "".join(f" {key} {value}" for key, value in figures.items()), flush=True)
    if set(r.statuses) != {"200"}:
        print(f"{label} statuses {dict(sorted(r.statuses.items()))}")
    return figures


def median(results: list[Result]) -> Result:
    """The run of median requests/s (the lower middle one of an even number)."""
    return sorted(results, key=lambda r: r.requests_per_s)[(len(results) - 1) // 2]


def print_table(rows: list[tuple[str, str, int, dict[str, str]]]) -> None:
    keys = list(rows[0][3])
    print("\n| server | client | concurrency | " + " | ".join(keys) + " |")
    print("|---" * (3 + len(keys)) + "|")
    for server, client, c, figures in rows:
        print(f"| {server} | {client} | {c} | " + " | ".join(figures[k] for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "weights", help=f"holds {MODEL}/ (copied first)")
    parser.add_argument("--concurrency", help=f"default {','.join(map(str, CONCURRENCY))} (--quick: 1,8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="most seconds one configuration sends for")
    parser.add_argument("--requests", type=int, default=2000, help="most requests of one configuration")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each configuration, servers in turn")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="client patterns, of " + ", ".join(CLIENTS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: concurrency 1 and 8, at most 2 s each")
    parser.add_argument("--serve-litserve", type=int, metavar="PORT", help="be the LitServe server on PORT")
    parser.add_argument("--checkpoint", type=Path, help="with --serve-litserve: the checkpoint folder to serve")
    args = parser.parse_args()
    if args.serve_litserve is not None:
        serve_litserve(args.serve_litserve, args.checkpoint)
        return
    if args.quick:
        args.seconds, args.rounds = min(args.seconds, 2.0), 1
    levels = tuple(int(c) for c in (args.concurrency or ("1,8" if args.quick else ",".join(map(str, CONCURRENCY))))
                   .split(","))
    clients = args.clients.split(",")
    defaults = Settings()
    print(f"machine: {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}, litserve {litserve.__version__}, "
          f"uvloop {'installed' if importlib.util.find_spec('uvloop') else 'absent'}, "
          f"httptools {'installed' if importlib.util.find_spec('httptools') else 'absent'}; "
          f"genserve: torch threads {defaults.torch_threads()}, batch_wait_ms {defaults.batch_wait_ms:g}, "
          f"max_batch {defaults.max_batch}; litserve: torch threads 1, batch_timeout_s {LITSERVE_BATCH_TIMEOUT_S:g}, "
          f"max_batch_size {LITSERVE_MAX_BATCH}", flush=True)

    with tempfile.TemporaryDirectory(prefix="genserve-peers-") as tmp, ExitStack() as stack:
        # `snapshot` copies every folder of its source: give it one that holds only the model's (a link).
        source = Path(tmp) / "source"
        source.mkdir()
        (source / MODEL).symlink_to((args.weights / MODEL).resolve(), target_is_directory=True)
        weights = snapshot(source, Path(tmp) / "weights")
        genserve = stack.enter_context(running_server(weights, Path(tmp) / "genserve.log"))
        unbatched = stack.enter_context(running_server(weights, Path(tmp) / "unbatched.log", max_batch=1))
        litserve_server = stack.enter_context(running_litserve(weights / MODEL, Path(tmp) / "litserve.log"))
        peers = peers_for(genserve, unbatched, litserve_server)
        pngs = [png_for_seed(peer, 0) for peer in peers]
        print(f"same_png_for_seed_0 {all(png == pngs[0] for png in pngs)}", flush=True)
        for peer in peers:  # loads oneDNN's kernels for the batch sizes ahead
            asyncio.run(drive(peer, "per_user", 8, 32, 30))
        rows = []
        for client in clients:
            for c in levels:
                runs = {peer.name: [] for peer in peers}
                for round_ in range(args.rounds):  # who goes first rotates from round to round
                    for peer in peers[round_ % len(peers):] + peers[:round_ % len(peers)]:
                        result = asyncio.run(drive(peer, client, c, args.requests, args.seconds))
                        report(f"{peer.name} client={client} c={c} round={round_}", result)
                        runs[peer.name].append(result)
                for name, results in runs.items():
                    rows.append((name, client, c, report(f"{name} client={client} c={c} median", median(results))))
                for label, (a, b) in RATIOS.items():
                    ratios = sorted(x.requests_per_s / max(1e-9, y.requests_per_s) for x, y in zip(runs[a], runs[b]))
                    print(f"{label} client={client} c={c} {statistics.median(ratios):.2f} "
                          f"(rounds {ratios[0]:.2f}-{ratios[-1]:.2f})", flush=True)
        print_table(rows)


if __name__ == "__main__":
    main()
