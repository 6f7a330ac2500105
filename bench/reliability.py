"""Reliability figures: overload, hostile input and a soak against real `genserve serve` processes.

    python -m bench.reliability [--weights weights] [--requests 2000] [--concurrency 128]
                                [--soak 5000] [--warmup 500]

Runs on loopback only, every loop bounded in count and time, and prints the figures that
docs/reliability.md records:
  * overload: `--requests` single-image DCGAN/VAE samples, `--concurrency` at a time, against a
    server with a small queue: counts per status, 503s without Retry-After, client timeouts,
    the slowest answer;
  * hostile input: every case of bench/hostile.py, a lying Content-Length and an endless body;
    statuses, and whether the server stays healthy;
  * soak: `--soak` sequential requests cycling through every endpoint; resident memory after
    `--warmup` requests and at the end;
  * probes (issue 14): the hostile bodies that once stalled the event loop, each sent while a
    thread pings /healthz: status, reply size, the longest /healthz wait, the server's memory;
    slow clients (connections that stop inside their headers or body), and when they are closed;
  * bursts: `--bursts` rounds of `--burst-requests` samples (n=4), `--concurrency` at a time from
    one shared httpx.AsyncClient pool, `--burst-gap` idle seconds between rounds: requests lost
    (a transport error, no answer) and requests the server counted.
  * saturation (issue 28, bench/saturation.py): 520 idle keep-alive connections and new clients
    beside them; a DCGAN request's latency behind 8 and 16 concurrent PixelCNN requests.
The weights are copied to a temporary folder first (training may rewrite them meanwhile), and
each checkpoint is verified there with models.checkpoint.load_checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench import hostile, saturation
from bench.process import running_server, snapshot

OVERLOAD_SETTINGS = {"queue_size": 8, "request_timeout_s": 10, "max_batch": 64}
SHIRT = base64.b64encode(hostile.encoded(Image.fromarray(
    np.where(np.mgrid[:28, :28][1] % 9 < 5, 200, 0).astype(np.uint8)))).decode()


# -- overload -----------------------------------------------------------------------------------

@dataclass
class Load:
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    no_retry_after: int = 0  # 503s without a Retry-After header
    errors: Counter = field(default_factory=Counter)  # transport errors and client timeouts, by type
    slowest_s: float = 0.0
    wall_s: float = 0.0


async def overload(url: str, requests: int = 2000, concurrency: int = 128, timeout_s: float = 15,
                   deadline_s: float = 300) -> Load:
    """`requests` single-image samples (DCGAN and VAE in turn), `concurrency` clients at once."""
    load = Load(requests=requests)
    indices = iter(range(requests))  # shared: each client takes the next request

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in indices:
            model = ("dcgan", "vae")[i % 2]
            started = time.perf_counter()
            try:
                response = await client.post(f"/v1/models/{model}/samples", json={"n": 1, "seed": i})
            except httpx.HTTPError as e:
                load.errors[type(e).__name__] += 1
                continue
            load.slowest_s = max(load.slowest_s, time.perf_counter() - started)
            load.statuses[response.status_code] += 1
            if response.status_code == 503 and not response.headers.get("retry-after"):
                load.no_retry_after += 1

    # A client (one connection) per user: one shared pool of 128 costs the load generator more CPU
    # than the server spends, and its queueing would pass for server latency. They are all made
    # before any request, since making one takes milliseconds of CPU (its TLS context).
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=timeout_s))
                   for _ in range(concurrency)]
        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client_loop(client) for client in clients)), deadline_s)
    load.wall_s = time.perf_counter() - started
    return load


# -- soak ---------------------------------------------------------------------------------------

def mix(i: int) -> tuple[str, str, dict, int]:
    """Request i of the soak: (method, path, httpx keyword arguments, expected status). It cycles
    through every endpoint (and some 4xx); the PixelCNN samplers, which take seconds, come once
    every 50 requests."""
    image = {"image": SHIRT}
    fast = [
        ("GET", "/v1/models", {}, 200),
        ("GET", "/v1/models/vae", {}, 200),
        ("POST", "/v1/models/dcgan/samples", {"json": {"n": 4, "seed": i}}, 200),
        ("POST", "/v1/models/vae/samples?format=json", {"json": {"n": 2, "seed": i, "temperature": 0.8}}, 200),
        ("GET", f"/v1/models/dcgan/samples.png?n=2&seed={i}", {}, 200),
        ("POST", "/v1/models/vae/interpolate", {"json": {"start": {"seed": i}, "end": {"seeds": [1, 2, 3]},
                                                          "steps": 6}}, 200),
        ("POST", "/v1/models/dcgan/arithmetic", {"json": {"terms": [{"latent": {"seeds": [i, i + 1]}},
                                                                    {"latent": {"seed": i + 2}, "weight": -1}],
                                                          "n": 3, "noise": 0.2, "seed": i}}, 200),
        ("POST", "/v1/models/vae/latents", {"json": {"latent": {"seed": i}}}, 200),
        ("POST", "/v1/models/vae/reconstruct", {"json": image}, 200),
        ("POST", "/v1/models/vae/reconstruct", {"files": {"image": ("x.png", base64.b64decode(SHIRT))}}, 200),
        ("POST", "/v1/models/vae/likelihood", {"json": image}, 200),
        ("POST", "/v1/models/pixelcnn/likelihood", {"json": image}, 200),
        ("GET", "/healthz", {}, 200),
        ("GET", "/readyz", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("GET", "/", {}, 200),
        ("GET", "/v1/models/nope", {}, 404),
        ("POST", "/v1/models/dcgan/samples", {"json": {"n": 1000}}, 422),
        ("POST", "/v1/models/pixelcnn/interpolate", {"json": {"start": {"seed": 1}, "end": {"seed": 2}}}, 400),
        ("POST", "/v1/models/vae/reconstruct", {"json": {"image": "bm90IGFuIGltYWdl"}}, 422),
    ]
    if i % 50 == 25:
        return "POST", "/v1/models/pixelcnn/samples", {"json": {"n": 1, "seed": i}}, 200
    if i % 50 == 49:
        return "POST", "/v1/models/pixelcnn/complete", {"json": {**image, "n": 1, "seed": i}}, 200
    return fast[i % len(fast)]


@dataclass
class Soak:
    requests: int
    warmup: int
    unexpected: Counter = field(default_factory=Counter)  # (path, status) answered other than expected
    five_xx: int = 0
    rss_warm_kib: int = 0
    rss_end_kib: int = 0
    wall_s: float = 0.0

    @property
    def growth(self) -> float:
        return self.rss_end_kib / self.rss_warm_kib - 1


def soak(server, requests: int = 5000, warmup: int = 500, timeout_s: float = 60, deadline_s: float = 1800) -> Soak:
    """`requests` sequential requests of `mix`; the server's RSS after `warmup` of them and at the end."""
    result = Soak(requests, warmup)
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=timeout_s) as client:
        for i in range(requests):
            if i == warmup:
                result.rss_warm_kib = server.rss_kib()
            if time.perf_counter() - started > deadline_s:
                raise TimeoutError(f"the soak passed {deadline_s} s after {i} requests")
            method, path, kwargs, expected = mix(i)
            status = client.request(method, path, **kwargs).status_code
            result.five_xx += status >= 500
            if status != expected:
                result.unexpected[(path, status)] += 1
    result.rss_end_kib = server.rss_kib()
    result.wall_s = time.perf_counter() - started
    return result


# -- probes: hostile bodies and the event loop, slow clients -------------------------------------

def probe_bodies() -> list[tuple[str, str, bytes]]:
    """(name, path, JSON body) of the bodies that each once held the event loop or the reply."""
    vector = lambda n: '{"start": {"vector": [' + ",".join(["1e5"] * n) + ']}, "end": {"seed": 1}}'
    keys = "{" + ",".join(f'"k{i}": 1' for i in range(40_000)) + "}"
    return [("400,000-entry vector of 1e5 (1.5 MB)", "/v1/models/dcgan/interpolate", vector(400_000).encode()),
            ("5,000-entry vector of 1e5", "/v1/models/dcgan/interpolate", vector(5_000).encode()),
            ("40,000 unknown keys", "/v1/models/dcgan/samples", keys.encode()),
            ("500,000 seeds", "/v1/models/dcgan/latents",
             ('{"latent": {"seeds": [' + ",".join(["1"] * 500_000) + "]}}").encode())]


@dataclass
class Probe:
    name: str
    status: int
    reply_bytes: int
    seconds: float
    worst_healthz_s: float
    rss_growth_mib: float


def probe(server, name: str, path: str, body: bytes) -> Probe:
    """Send `body` while another thread asks /healthz every 10 ms; the longest of those waits."""
    waits, stop = [], threading.Event()

    def ping() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get("/healthz")
                waits.append(time.perf_counter() - started)
                time.sleep(0.01)

    rss = server.rss_kib()
    pinger = threading.Thread(target=ping)
    pinger.start()
    time.sleep(0.2)
    started = time.perf_counter()
    response = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=120)
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    stop.set()
    pinger.join()
    return Probe(name, response.status_code, len(response.content), seconds, max(waits),
                 (server.rss_kib() - rss) / 1024)


def slow_clients(server, count: int = 200, give_up_s: float = 60) -> tuple[int, float]:
    """`count` connections that stop inside their headers, and as many inside their body: how many
    the server closed (a reset counts: the server closed it), and the time the last one took."""
    conns = []
    for i in range(2 * count):
        conn = socket.create_connection(server.address, timeout=give_up_s)
        if i % 2:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        else:
            conn.sendall(b"POST /v1/models/dcgan/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")
        conns.append(conn)
    started, closed, last = time.monotonic(), 0, 0.0
    for conn in conns:
        try:
            while conn.recv(4096):
                pass
        except ConnectionResetError:
            pass
        except OSError:  # our own timeout: the server never closed it
            conn.close()
            continue
        closed += 1
        last = time.monotonic() - started
        conn.close()
    return closed, last


# -- bursts from one shared pool ----------------------------------------------------------------

@dataclass
class Bursts:
    rounds: int = 0
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    lost: list[int] = field(default_factory=list)  # per round: requests with no answer (transport errors)
    errors: Counter = field(default_factory=Counter)
    counted: int = 0  # requests the server's own counter saw
    wall_s: float = 0.0


def _served_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("genserve_requests_total{") and "/samples" in line)


async def bursts(url: str, rounds: int = 20, requests: int = 2000, concurrency: int = 128, gap_s: float = 5.0,
                 timeout_s: float = 120) -> Bursts:
    """Finding 5 of issue 14: `rounds` bursts of `requests` samples (n=4), `concurrency` at a time,
    from ONE httpx.AsyncClient (its default pool: 100 connections, 20 kept idle), idle `gap_s`
    between bursts: about httpx's keep-alive expiry (5 s), where a server that closes idle
    connections as quickly would race the client's reuse of them."""
    result = Bursts(rounds=rounds)
    before = _served_requests(url)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:  # httpx's default pool
        for round_ in range(rounds):
            lost = 0
            indices = iter(range(requests))

            async def client_loop() -> None:
                nonlocal lost
                for i in indices:
                    try:
                        response = await client.post("/v1/models/dcgan/samples", json={"n": 4, "seed": i})
                        result.statuses[response.status_code] += 1
                    except httpx.HTTPError as e:
                        lost += 1
                        result.errors[type(e).__name__] += 1

            await asyncio.gather(*(client_loop() for _ in range(concurrency)))
            result.sent += requests
            result.lost.append(lost)
            if round_ < rounds - 1:
                await asyncio.sleep(gap_s)
    result.wall_s = time.perf_counter() - started
    result.counted = int(_served_requests(url) - before)
    return result


# -- the hostile barrage and health -------------------------------------------------------------

def healthy(url: str) -> bool:
    """/healthz and /readyz answer 200, and so does a normal request."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return (client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
                and client.post("/v1/models/dcgan/samples", json={"n": 1}).status_code == 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--soak", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--burst-requests", type=int, default=2000)
    parser.add_argument("--burst-gap", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        weights = snapshot(args.weights, Path(tmp) / "weights")
        print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
              f"Python {platform.python_version()}; weights: {args.weights}; server threads: {args.threads}")

        with running_server(weights, Path(tmp) / "overload.log", threads=args.threads, **OVERLOAD_SETTINGS) as server:
            load = asyncio.run(overload(server.url, args.requests, args.concurrency,
                                        timeout_s=OVERLOAD_SETTINGS["request_timeout_s"] + 5))
            print(f"overload: {load.requests} requests, concurrency {args.concurrency}, settings {OVERLOAD_SETTINGS}: "
                  f"statuses {dict(sorted(load.statuses.items()))}, 503 without Retry-After {load.no_retry_after}, "
                  f"client errors {dict(load.errors)}, slowest {load.slowest_s:.2f} s, wall {load.wall_s:.1f} s, "
                  f"healthy after: {healthy(server.url)}")

        with running_server(weights, Path(tmp) / "probes.log", threads=args.threads) as server:
            for name, path, body in probe_bodies():
                p = probe(server, name, path, body)
                print(f"probe {p.name}: {p.status}, {p.reply_bytes} bytes in {p.seconds:.2f} s; longest /healthz "
                      f"meanwhile {p.worst_healthz_s * 1000:.0f} ms; RSS {p.rss_growth_mib:+.1f} MiB")
        with running_server(weights, Path(tmp) / "slow.log", threads=args.threads, header_timeout_s=10,
                            body_timeout_s=10) as server:
            closed, last = slow_clients(server)
            print(f"slow clients: 2 x 200 connections stopped inside their headers or their body, timeouts 10 s: "
                  f"{closed} closed by the server, the last after {last:.1f} s; healthy after: {healthy(server.url)}")

        with running_server(weights, Path(tmp) / "bursts.log", threads=args.threads) as server:
            b = asyncio.run(bursts(server.url, args.bursts, args.burst_requests, args.concurrency, args.burst_gap))
            print(f"bursts: {b.rounds} x {args.burst_requests} samples (n=4), concurrency {args.concurrency} from one "
                  f"shared pool, {args.burst_gap:g} s apart: statuses {dict(sorted(b.statuses.items()))}, lost per "
                  f"burst {b.lost} ({sum(b.lost)} in all, {dict(b.errors)}), counted by the server {b.counted} of "
                  f"{b.sent}; {b.wall_s:.0f} s")

        with running_server(weights, Path(tmp) / "saturation.log", threads=args.threads) as server:
            print("saturation, lockout:", saturation.lockout(server))
            for slow in (8, 16):
                print("saturation, starvation:", saturation.starvation(server, slow))

        with running_server(weights, Path(tmp) / "soak.log", threads=args.threads) as server:
            outcomes = hostile.barrage(server.url)
            lying = hostile.lying_length(server.address)
            endless, sent = hostile.endless_body(server.address)
            kinds = Counter(o.case.kind for o in outcomes)
            wrong = [(o.case.name, o.status) for o in outcomes if not o.ok]
            print(f"hostile input: {len(outcomes) + 2} requests of {len(kinds)} kinds "
                  f"({', '.join(f'{k} {n}' for k, n in kinds.items())}, and 2 oversized bodies on a raw socket); "
                  f"statuses {dict(sorted(Counter(o.status for o in outcomes).items()))}; lying Content-Length "
                  f"{lying}; endless body {endless} after {sent / 2**20:.1f} MiB; unexpected {wrong}; "
                  f"healthy after: {healthy(server.url)}")

            result = soak(server, args.soak, args.warmup)
            print(f"soak: {result.requests} sequential requests in {result.wall_s:.0f} s, 5xx {result.five_xx}, "
                  f"unexpected {dict(result.unexpected)}; RSS after {result.warmup}: {result.rss_warm_kib / 1024:.1f} "
                  f"MiB, at the end: {result.rss_end_kib / 1024:.1f} MiB, growth {result.growth:+.1%}")


if __name__ == "__main__":
    main()
