"""Graceful shutdown: SIGTERM while a slow request is in flight; the request still gets its 200
and the process exits 0 (uvicorn's graceful timeout, set by `genserve serve`)."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from bench.process import start_server
from tests.app.apptest import THREADS, metric


def test_sigterm_lets_the_request_in_flight_finish(weights_dir, tmp_path):
    server = start_server(weights_dir, tmp_path / "server.log", threads=THREADS)
    answers: list[httpx.Response] = []
    try:
        # PixelCNN draws 8 images pixel by pixel: seconds of work.
        request = threading.Thread(target=lambda: answers.append(
            httpx.post(server.url + "/v1/models/pixelcnn/samples", json={"n": 8, "seed": 1}, timeout=120)))
        request.start()
        deadline = time.monotonic() + 60
        while metric(httpx.get(server.url + "/metrics").text, "genserve_batch_images_count", model="pixelcnn") < 1:
            assert time.monotonic() < deadline, "the request never reached the worker"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)  # its forward pass has begun
        request.join(timeout=120)
        assert answers and answers[0].status_code == 200, answers
        assert answers[0].content.startswith(b"\x89PNG")
        assert server.process.wait(timeout=60) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
