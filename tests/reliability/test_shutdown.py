"""Graceful shutdown: SIGTERM while a request is in flight; the server stops accepting, the
request still gets its 200, and the process exits 0 (uvicorn's graceful timeout, set by
`genserve serve`). The request is held in its forward pass by a gate the test opens
(tests/reliability/gated_server.py), so it is in flight at the signal on any machine."""

from __future__ import annotations

import signal
import socket
import threading

import httpx

from bench.process import start_server
from tests.app.apptest import THREADS, metric, until
from tests.reliability.gated_server import GATED_SERVER


def _refuses_connections(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_stops_accepting_and_lets_the_request_in_flight_finish(weights_dir, tmp_path):
    gate = tmp_path / "open"
    server = start_server(weights_dir, tmp_path / "server.log", GATED_SERVER, threads=THREADS, test_gate_file=gate)
    answers: list[httpx.Response] = []
    try:
        request = threading.Thread(target=lambda: answers.append(
            httpx.post(server.url + "/v1/models/dcgan/samples", json={"n": 2, "seed": 1}, timeout=120)))
        request.start()
        def in_its_pass() -> bool:
            return metric(httpx.get(server.url + "/metrics").text, "genserve_batch_images_count", model="dcgan") >= 1
        until(in_its_pass, "the request to reach its forward pass")
        server.process.send_signal(signal.SIGTERM)  # its pass is held at the gate: in flight, surely
        until(lambda: _refuses_connections(server.address), "the server to stop accepting connections")
        assert server.process.poll() is None and not answers, "it waits for the request in flight"
        gate.touch()
        request.join(timeout=120)
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].content.startswith(b"\x89PNG")
        assert server.process.wait(timeout=60) == 0
    finally:
        gate.touch()
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
