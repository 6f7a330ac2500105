"""Against a real uvicorn process (`genserve serve`): every endpoint over HTTP, the body limit on the
wire, a client that hangs up, and the `genserve` command line as a client of that server."""

from __future__ import annotations

import base64
import re
import socket
import sys
import threading

import httpx
import numpy as np
import pytest

from apptest import data_segments_in, encode_png, grid_shape, metric, png, until
from app.cli import main as genserve

SHIRT = encode_png(np.full((28, 28), 128, np.uint8))

ENDPOINTS = [
    ("get", "/v1/models", None, "application/json"),
    ("get", "/v1/models/vae", None, "application/json"),
    ("get", "/v1/models/dcgan/samples.png?n=4&seed=1", None, "image/png"),
    ("post", "/v1/models/dcgan/samples", {"n": 4, "seed": 1}, "image/png"),
    ("post", "/v1/models/pixelcnn/samples?format=json", {"n": 1, "seed": 1}, "application/json"),
    ("post", "/v1/models/vae/interpolate", {"start": {"seed": 1}, "end": {"seeds": [2, 3]}, "steps": 4}, "image/png"),
    ("post", "/v1/models/dcgan/arithmetic", {"terms": [{"latent": {"seed": 1}}], "n": 2}, "image/png"),
    ("post", "/v1/models/vae/latents", {"latent": {"seed": 3}}, "application/json"),
    ("post", "/v1/models/vae/reconstruct", {"image": SHIRT}, "image/png"),
    ("post", "/v1/models/pixelcnn/complete", {"image": SHIRT, "n": 1, "keep_rows": 20}, "image/png"),
    ("post", "/v1/models/pixelcnn/likelihood", {"image": SHIRT}, "application/json"),
    ("get", "/healthz", None, "application/json"),
    ("get", "/readyz", None, "application/json"),
    ("get", "/metrics", None, "text/plain"),
    ("get", "/", None, "text/html"),
]


@pytest.mark.parametrize("method, path, body, content_type", ENDPOINTS, ids=[e[1] for e in ENDPOINTS])
def test_every_endpoint_over_http(server, method, path, body, content_type):
    response = httpx.request(method, server + path, json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)


def test_streamed_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(30):
            yield b" " * 100_000

    response = httpx.post(server + "/v1/models/vae/samples", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413
    assert httpx.get(server + "/healthz").status_code == 200


def test_declared_length_over_the_limit_is_413_before_the_body(server):
    """Send only the headers of a 3 MiB body: the server answers 413 without waiting for it."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /v1/models/vae/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 3145728\r\n\r\n{")
        assert conn.recv(200).startswith(b"HTTP/1.1 413")


@pytest.mark.skipif(sys.platform != "linux", reason="counts segments with Linux's TCP_INFO")
def test_each_response_reaches_the_client_as_one_segment(server):
    """Status line, headers and body in one write (app.server.CoalescingTransport), request after
    request on a kept-alive connection."""
    body = b'{"n": 1, "seed": 3}'
    request = (b"POST /v1/models/dcgan/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        for _ in range(3):
            before = data_segments_in(conn)
            conn.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            head, _, data = head.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            while len(data) < length:
                data += conn.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 ") and data.startswith(b"\x89PNG")
            assert data_segments_in(conn) - before == 1


def test_a_client_that_hangs_up_leaves_no_work_behind(patient_server):
    def passes() -> float:
        return metric(httpx.get(patient_server + "/metrics").text, "genserve_batch_images_count")

    before = httpx.get(patient_server + "/metrics").text
    ahead = threading.Thread(target=httpx.post, args=(patient_server + "/v1/models/dcgan/samples",),
                             kwargs={"json": {"n": 1}, "timeout": 30})
    ahead.start()
    until(lambda: passes() > metric(before, "genserve_batch_images_count"), "the first pass to begin")
    # Queued behind it, this request's client gives up long before its turn.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(patient_server + "/v1/models/dcgan/samples", json={"n": 2, "seed": 1}, timeout=0.2)
    ahead.join()

    def skipped() -> float:
        return metric(httpx.get(patient_server + "/metrics").text, "genserve_skipped_jobs_total")
    until(lambda: skipped() > metric(before, "genserve_skipped_jobs_total"), "the abandoned job to be dropped")
    after = httpx.get(patient_server + "/metrics").text
    for name, reason in [("genserve_skipped_jobs_total", {}), ("genserve_rejected_total", {"reason": "disconnected"})]:
        assert metric(after, name, **reason) == metric(before, name, **reason) + 1
    assert metric(after, "genserve_batch_images_count") == metric(before, "genserve_batch_images_count") + 1


def test_a_full_queue_is_503_over_http(patient_server):
    def post(results: list) -> None:
        results.append(httpx.post(patient_server + "/v1/models/vae/samples", json={"n": 1}, timeout=30))

    results: list[httpx.Response] = []
    threads = [threading.Thread(target=post, args=(results,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(503) >= 2 and set(statuses) <= {200, 503}, statuses
    assert all(r.headers["retry-after"] for r in results if r.status_code == 503)


def test_cli_sample_writes_the_grid(server, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert genserve(["sample", "--url", server, "dcgan", "-n", "6", "--seed", "3", "--nrow", "3", "-o", str(out)]) == 0
    assert png(out.read_bytes()).shape == grid_shape(6, 3, 28, 28)
    assert "seed 3" in capsys.readouterr().out
    same = httpx.post(server + "/v1/models/dcgan/samples", json={"n": 6, "seed": 3, "nrow": 3})
    assert same.content == out.read_bytes()


def test_cli_interpolate_and_arithmetic(server, tmp_path):
    path = tmp_path / "path.png"
    assert genserve(["interpolate", "--url", server, "dcgan", "--start", "seed:1", "--end", "seeds:2,3",
                     "--steps", "5", "-o", str(path)]) == 0
    assert png(path.read_bytes()).shape == grid_shape(5, 5, 28, 28)
    total = tmp_path / "sum.png"
    assert genserve(["arithmetic", "--url", server, "dcgan", "seeds:1,2,3", "-", "seeds:4,5,6", "+", "0.5*seed:7",
                     "-n", "3", "--noise", "0.2", "--seed", "1", "-o", str(total)]) == 0
    assert png(total.read_bytes()).shape == grid_shape(6, 4, 28, 28)


def test_cli_reports_4xx_clearly(server, tmp_path, capsys):
    out = tmp_path / "never.png"
    assert genserve(["sample", "--url", server, "dcgan", "-n", "1000", "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert "422" in error and "n: at most 64" in error and not out.exists()
    assert genserve(["sample", "--url", server, "nope", "-o", str(out)]) == 1
    assert "404" in capsys.readouterr().err
    assert genserve(["interpolate", "--url", server, "pixelcnn", "--start", "seed:1", "--end", "seed:2",
                     "-o", str(out)]) == 1
    assert "400" in capsys.readouterr().err


def test_cli_reports_an_unreachable_server(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    assert genserve(["sample", "--url", f"http://127.0.0.1:{port}", "dcgan", "-o", str(tmp_path / "x.png")]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_cli_rejects_bad_latents_and_terms(capsys):
    for argv in (["interpolate", "dcgan", "--start", "seed", "--end", "seed:2"],
                 ["arithmetic", "dcgan", "seed:1", "seed:2"],
                 ["arithmetic", "dcgan", "seed:1", "-"]):
        with pytest.raises(SystemExit) as exit_info:
            genserve(argv)
        assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_forwards_train_and_evaluate_to_the_models_package(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        genserve([command, "--help"])
    assert exit_info.value.code == 0
    assert f"models.{command}" in capsys.readouterr().out


def test_image_latent_file_is_read_by_the_cli(tmp_path):
    from app.cli import parse_latent

    image = tmp_path / "shirt.png"
    image.write_bytes(base64.b64decode(SHIRT))
    assert parse_latent(f"image:{image}") == {"image": SHIRT}
    assert parse_latent("class:Ankle boot") == {"class": "Ankle boot"}
