"""Saturation probes (issue 28) against real `genserve serve` processes, and the figures
docs/reliability.md records:

    python -m bench.saturation [--weights weights] [--idle 520] [--slow 8 16] [--reloads 32]

  * lockout: `--idle` keep-alive connections, each having sent one request and read its answer,
    held open and refreshed (a request on each) as pooled clients do, with the statuses they got
    ("closed": the server had closed it to make room); then `/healthz`, `/v1/models` and
    `/readyz` on new connections: their statuses and times;
  * starvation: `--slow` concurrent PixelCNN `{"n": 16}` requests of distinct temperatures (never
    merged), while a DCGAN `{"n": 1}` request is sent again and again on its own connection: the
    DCGAN's worst and median latency and its statuses, and the PixelCNN images/s beside the same
    requests with nothing else running;
  * reloads: `--reloads` simultaneous admin reloads: their wall time beside one reload's, and the
    server's memory before and after.
Clients are http.client and raw sockets in threads: light enough to leave the server the cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.process import running_server, snapshot

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


def _answer(conn: socket.socket) -> bytes:
    """One response with a Content-Length body off a kept-alive socket (b"" if it was closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    return head


def _timed_get(address: tuple[str, int], path: str) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
    finally:
        conn.close()
    return status, time.perf_counter() - started


def lockout(server, idle: int = 520) -> dict:
    """Idle keep-alive connections past the cap, then new clients: are they served, and how fast."""
    held, first = [], Counter()
    for _ in range(idle):
        conn = socket.create_connection(server.address, timeout=30)
        conn.sendall(HEALTHZ)
        first[_status(_answer(conn))] += 1
        held.append(conn)
    refreshed = Counter()
    for conn in held:  # a request on each, as pools do inside the keep-alive
        refreshed[_send_again(conn)] += 1
    probes = {path: _timed_get(server.address, path) for path in ("/healthz", "/v1/models", "/readyz")}
    for conn in held:
        conn.close()
    return {"idle": idle, "first_answers": dict(first), "refreshed": dict(refreshed),
            "probes": {path: {"status": s, "ms": round(t * 1000, 1)} for path, (s, t) in probes.items()}}


def _status(head: bytes) -> str:
    """The status of a response head, or "closed" for a connection the server had closed."""
    return head.split(b" ", 2)[1].decode() if head else "closed"


def _send_again(conn: socket.socket) -> str:
    try:
        conn.sendall(HEALTHZ)
        return _status(_answer(conn))
    except OSError:
        return "closed"


def _post(address: tuple[str, int], path: str, body: dict, timeout_s: float = 120) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(*address, timeout=timeout_s)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        status = response.status
    finally:
        conn.close()
    return status, time.perf_counter() - started


def _pixelcnn_wave(address, slow: int) -> float:
    """`slow` concurrent PixelCNN requests of distinct temperatures; their wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(slow) as pool:
        statuses = list(pool.map(lambda i: _post(address, "/v1/models/pixelcnn/samples",
                                                 {"n": 16, "seed": i, "temperature": 0.8 + i / 1000})[0],
                                 range(slow)))
    assert statuses == [200] * slow, statuses
    return time.perf_counter() - started


def starvation(server, slow: int) -> dict:
    alone_s = _pixelcnn_wave(server.address, slow)
    latencies, statuses, done = [], [], threading.Event()

    def probe() -> None:
        while not done.is_set():
            status, seconds = _post(server.address, "/v1/models/dcgan/samples", {"n": 1})
            statuses.append(status)
            latencies.append(seconds)

    prober = threading.Thread(target=probe)
    prober.start()
    shared_s = _pixelcnn_wave(server.address, slow)
    done.set()
    prober.join(120)
    return {"slow_requests": slow, "dcgan_requests": len(latencies),
            "dcgan_worst_s": round(max(latencies), 3), "dcgan_median_s": round(statistics.median(latencies), 3),
            "dcgan_statuses": sorted(set(statuses)),
            "pixelcnn_images_per_s_alone": round(16 * slow / alone_s, 1),
            "pixelcnn_images_per_s_shared": round(16 * slow / shared_s, 1)}


def reloads(server, count: int, token: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}

    def reload(_) -> int:
        conn = http.client.HTTPConnection(*server.address, timeout=300)
        try:
            conn.request("POST", "/v1/admin/reload", headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    rss_before = server.rss_kib()
    started = time.perf_counter()
    one = reload(0)
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(reload, range(count)))
    many_s = time.perf_counter() - started
    return {"one_status": one, "one_s": round(one_s, 2), "concurrent": count, "statuses": sorted(set(statuses)),
            "concurrent_s": round(many_s, 2), "rss_before_mib": round(rss_before / 1024),
            "rss_after_mib": round(server.rss_kib() / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--idle", type=int, default=520)
    parser.add_argument("--slow", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--reloads", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = snapshot(args.weights, Path(tmp) / "weights")
        print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; server threads: {args.threads}")
        token = "bench-token"
        with running_server(weights, Path(tmp) / "server.log", threads=args.threads, admin_token=token) as server:
            print("lockout:", json.dumps(lockout(server, args.idle)), flush=True)
            for slow in args.slow:
                print("starvation:", json.dumps(starvation(server, slow)), flush=True)
            print("reloads:", json.dumps(reloads(server, args.reloads, token)), flush=True)


if __name__ == "__main__":
    main()
