"""The `genserve` command line against real servers: every client command against the session's
`genserve serve` (tests/app/conftest.py), each output the API's own answer to the same request;
errors as one line; and a user's own model from training to serving, as the README tells it: the
training's last line names the command that serves it, and that command announces what it serves."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from apptest import DEADLINE_S, encode_png, grid_shape, png
from app.cli import main as genserve
from bench.process import REPO, free_port

SHIRT = encode_png(np.full((28, 28), 128, np.uint8))


@pytest.fixture
def shirt(tmp_path) -> Path:
    path = tmp_path / "shirt.png"
    path.write_bytes(base64.b64decode(SHIRT))
    return path


@pytest.fixture
def url(server, monkeypatch) -> str:
    """The session's server, as the CLI's default: GENSERVE_URL, no --url."""
    monkeypatch.setenv("GENSERVE_URL", server)
    return server


# (command line, endpoint, the request it makes, output suffix); IMAGE is the shirt. `sample`, `interpolate`
# to PNG and `arithmetic` are tests/app/test_server.py's.
IMAGE_COMMANDS = {
    "traverse-grid": (["traverse", "vae", "--center", "seed:2", "--axis", "1", "--axis", "seed:5", "--steps", "3",
                       "--spacing", "gaussian"], "traverse",
                      {"center": {"seed": 2}, "axes": [{"dim": 1}, {"toward": {"seed": 5}}], "steps": 3,
                       "spacing": "gaussian"}, ".png"),
    "traverse-gif": (["traverse", "dcgan", "--steps", "4", "--extent", "2"], "traverse",
                     {"axes": [{"dim": 0}], "steps": 4, "extent": 2.0}, ".gif"),
    "interpolate-gif": (["interpolate", "vae", "--start", "seed:1", "--end", "seeds:2,3", "--steps", "4",
                         "--method", "lerp"], "interpolate",
                        {"start": {"seed": 1}, "end": {"seeds": [2, 3]}, "steps": 4, "method": "lerp"}, ".gif"),
    "reconstruct": (["reconstruct", "vae", "IMAGE"], "reconstruct", {"image": SHIRT}, ".png"),
    "complete": (["complete", "pixelcnn", "IMAGE", "--keep-rows", "20", "-n", "2", "--seed", "4"], "complete",
                 {"image": SHIRT, "keep_rows": 20, "n": 2, "seed": 4}, ".png"),
}


@pytest.mark.parametrize("case", IMAGE_COMMANDS, ids=list(IMAGE_COMMANDS))
def test_image_commands_write_the_apis_answer(case, url, shirt, tmp_path, capsys):
    argv, endpoint, body, suffix = IMAGE_COMMANDS[case]
    out = tmp_path / f"out{suffix}"
    argv = [str(shirt) if arg == "IMAGE" else arg for arg in argv]
    assert genserve([*argv, "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    expected = httpx.post(f"{url}/v1/models/{argv[1]}/{endpoint}", json=body,
                          params={"format": suffix[1:]}, timeout=120)
    assert expected.status_code == 200, expected.text
    assert out.read_bytes() == expected.content
    assert out.read_bytes()[:4] == (b"GIF8" if suffix == ".gif" else b"\x89PNG")


def test_json_commands_print_the_apis_answer(url, shirt, capsys):
    assert genserve(["likelihood", "pixelcnn", str(shirt)]) == 0
    expected = httpx.post(f"{url}/v1/models/pixelcnn/likelihood", json={"image": SHIRT}, timeout=120).json()
    assert json.loads(capsys.readouterr().out) == expected
    assert genserve(["latents", "vae", "seeds:1,2"]) == 0
    expected = httpx.post(f"{url}/v1/models/vae/latents", json={"latent": {"seeds": [1, 2]}}).json()
    assert json.loads(capsys.readouterr().out) == expected

    assert genserve(["models", "--json"]) == 0
    models = httpx.get(f"{url}/v1/models").json()
    assert json.loads(capsys.readouterr().out) == models
    assert genserve(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        [m["name"], m["family"], "x".join(map(str, m["image_shape"]))] for m in models["models"]]
    vae = next(line for line in lines if line.startswith("vae "))
    assert "reconstruct" in vae and "interpolate" in vae


def test_errors_are_one_line_and_a_non_zero_exit(url, shirt, tmp_path, capsys):
    out = tmp_path / "never.gif"
    failures = [  # (argv, exit status, what the line says)
        (["sample", "dcgan", "-o", str(out)], 1, "sample writes PNG only"),
        (["traverse", "pixelcnn", "-o", str(out.with_suffix(".png"))], 1, "the server answered 400"),
        (["complete", "pixelcnn", str(tmp_path / "missing.png")], 2, "cannot read"),
        (["traverse", "vae", "--axis", "size:3"], 2, "unknown latent kind 'size'"),
        (["likelihood", "nope", str(shirt)], 1, "the server answered 404: no model named 'nope'"),
        (["models", "--url", "http://127.0.0.1:9"], 1, "cannot reach the genserve server"),
        (["serve", "--device", "gpu"], 2, "GENSERVE_DEVICE='gpu'"),
    ]
    for argv, status, message in failures:
        try:
            code = genserve(argv)
        except SystemExit as exit_info:  # argparse's exit, as the console script would take it
            code = exit_info.code
        err = capsys.readouterr().err
        assert code == status and message in err, (argv, code, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not out.with_suffix(".png").exists()

    # The installed command itself: one line, never a traceback.
    script = Path(sys.executable).with_name("genserve")
    result = subprocess.run([str(script), "sample", "nope", "-o", str(out.with_suffix(".png"))], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "GENSERVE_URL": url}, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "404" in result.stderr and "Traceback" not in result.stderr


# -- a user's own model, from training to serving ------------------------------------------------

def image_folder(root: Path) -> Path:
    """Two classes of 12 small colour images each, as a user's folder."""
    generator = np.random.default_rng(0)
    for name, colour in (("warm", (220, 90, 40)), ("cool", (40, 110, 220))):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(np.array(colour) + generator.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def wait_for_line(log: Path, process: subprocess.Popen, text: str) -> str:
    give_up = time.monotonic() + DEADLINE_S * 3  # torch's import on a loaded 2-core machine
    while text not in log.read_text():
        assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < give_up, f"no {text!r} from the server:\n{log.read_text()}"
        time.sleep(0.1)
    return log.read_text()


@pytest.mark.slow
def test_a_trained_model_is_served_by_the_command_its_training_names(tmp_path, capsys):
    from models.training.command import main as train

    weights = tmp_path / "weights"
    train(["vae", "--dataset", "folder", "--data-dir", str(image_folder(tmp_path / "my-images")), "--image-size", "16",
           "--max-steps", "1", "--batch-size", "8", "--out", str(weights / "mine"), "--state-dir",
           str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--threads", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"saved {weights / 'mine'}: serve it with `"), last
    command = shlex.split(re.search(r"`(genserve serve[^`]*)`", last).group(1))
    (weights / "half-copied").mkdir()  # a checkpoint folder without its files: reported, not fatal
    (weights / "half-copied" / "card.json").write_text("{}")

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name(command[0])), *command[1:], "--port", str(port)],
                                  cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        announced = wait_for_line(log, server, "stop it with Ctrl+C")
        url = f"http://127.0.0.1:{port}"
        assert f"genserve is ready at {url}, serving 1 model from {weights}" in announced
        assert re.search(r"^  mine +vae +3x16x16 +sample, ", announced, re.MULTILINE), announced
        assert re.search(r"^  failed: half-copied: .+", announced, re.MULTILINE), announced
        assert f"demo page: {url}/\n" in announced and f"API docs:  {url}/docs\n" in announced
        assert announced.index("genserve: loading the models") < announced.index("genserve is ready")
        assert httpx.get(f"{url}/readyz").json()["models"] == ["mine"]
        assert httpx.get(f"{url}/docs").status_code == 200

        assert genserve(["models", "--url", url]) == 0
        listed = capsys.readouterr().out
        assert listed.startswith("mine ") and "failed: half-copied: " in listed
        assert genserve(["sample", "--url", url, "mine", "-n", "4", "--seed", "1", "-o", str(tmp_path / "s.png")]) == 0
        assert png((tmp_path / "s.png").read_bytes()).shape[:2] == grid_shape(4, None, 16, 16)
        assert capsys.readouterr().out == f"wrote {tmp_path / 's.png'} (seed 1)\n"

        # A model added while it runs: a server on loopback takes it from this machine without a token.
        assert "`genserve reload` from this machine" in announced
        shutil.rmtree(weights / "half-copied")
        shutil.copytree(weights / "mine", weights / "mine-again")
        assert genserve(["reload", "--url", url]) == 0
        assert capsys.readouterr().out == "serving 2 models: mine, mine-again\n"
        assert httpx.get(f"{url}/v1/models/mine-again").status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    shutil.rmtree(weights)
