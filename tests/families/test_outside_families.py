"""Issue 39's proof: three families of three kinds, each one file outside models/ (this folder),
found only through GENSERVE_FAMILIES, train through `python -m models.train`, are scored by
`python -m models.evaluate` and answer, from one `genserve serve` process, every endpoint their
declarations promise; no file of models/ or app/ names them.

    wgan_gp.py          WGAN-GP: its own adversarial game (Wasserstein loss, gradient penalty 10,
                        5 critic steps, Adam (0, 0.9)); samples from a latent, projects uploads
    logistic_pixels.py  a PixelCNN whose head is a discretized logistic mixture per sub-pixel,
                        trained through the public `sub_pixel_log_probs` hook
    flow.py             an affine-coupling flow: an exact likelihood and an invertible latent
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from bench.process import running_server
from models.checkpoint import read_card
from tests.app.apptest import b64png, encode_png, grid_shape, png
from tests.families.logistic_pixels import LogisticPixelCNN, LogisticPixelCNNConfig

REPO = Path(__file__).resolve().parents[2]
CLASSIFIER = REPO / "weights" / "classifier"  # the shipped one: evaluation's judge
SPECS = {"wgan-gp": "tests.families.wgan_gp:WGANGP",
         "logistic-pixelcnn": "tests.families.logistic_pixels:LogisticPixelCNN",
         "tiny-flow": "tests.families.flow:TinyFlow"}
# A few seconds each on one thread. The WGAN-GP's 50 steps are 50 critic updates, 10 of the generator.
TRAINING = {"wgan-gp": ["--epochs", "3", "--max-steps", "50", "--limit", "640", "--batch-size", "32"],
            "logistic-pixelcnn": ["--epochs", "2", "--limit", "160", "--batch-size", "16", "--lr", "3e-3"],
            "tiny-flow": ["--epochs", "2", "--limit", "512", "--batch-size", "32", "--lr", "1e-3"]}
WGAN_STEPS, CRITIC_STEPS = 50, 5
DEADLINE_S = 600  # per command; a loaded 2-core machine takes a while to import torch
UPLOAD = encode_png(np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1)))  # a gray ramp, left to right
STREAM = {"accept": "text/event-stream"}


def environment() -> dict[str, str]:
    """The commands' environment: the repository importable (as an installed genserve is) and
    these families named by the one setting that registers them."""
    return {**os.environ, "PYTHONPATH": str(REPO), "GENSERVE_FAMILIES": ",".join(SPECS.values())}


def command(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{process.args[2:4]} did not finish within {DEADLINE_S} s:\n{process.communicate()[0]}")
    assert process.returncode == 0, f"{process.args[2:4]} failed:\n{output}"
    return output


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The three checkpoints, trained side by side, then evaluated by one command."""
    root = tmp_path_factory.mktemp("outside")
    weights = root / "weights"
    runs = [command("models.train", family, "--out", str(weights / family), "--state-dir", str(root / "runs" / family),
                    "--threads", "1", "--quiet", *TRAINING[family]) for family in SPECS]
    try:
        for run in runs:
            finished(run)
    finally:  # a failed run leaves no other behind
        for run in runs:
            run.kill()
    output = finished(command("models.evaluate", *(str(weights / family) for family in SPECS),
                              "--classifier", str(CLASSIFIER), "--samples", "32", "--limit", "200",
                              "--threads", "1", "--quiet"))
    scores = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {"weights": weights, "runs": root / "runs",
            "metrics": {Path(score.pop("checkpoint")).name: score for score in scores}}


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    log = tmp_path_factory.mktemp("outside-server") / "server.log"
    with running_server(trained["weights"], log, threads=1, families=",".join(SPECS.values())) as running:
        yield running.url


def test_each_family_trains_through_models_train(trained):
    for family in SPECS:
        card = read_card(trained["weights"] / family)
        assert card["family"] == family and card["training"]["steps"] > 0
    wgan = read_card(trained["weights"] / "wgan-gp")
    assert wgan["config"]["n_classes"] == 10 and wgan["training"]["steps"] == WGAN_STEPS  # "dataset": the classes
    for family in ("logistic-pixelcnn", "tiny-flow"):  # both minimise bits/dim: the second epoch's is lower
        first, second = read_card(trained["weights"] / family)["training"]["history"]
        assert second["bits_per_dim"] < first["bits_per_dim"], family


def test_the_wgan_gp_trainer_plays_the_game_its_family_declares(trained):
    """The training state shows the game: both Adams with betas (0, 0.9) at lr 1e-4 (the family's
    preset), the critic updated at every step, the generator (and its average) at every fifth."""
    state = torch.load(trained["runs"] / "wgan-gp" / "state.pt", weights_only=True)["trainer"]
    for optimizer in ("opt_g", "opt_d"):
        group = state[optimizer]["param_groups"][0]
        assert tuple(group["betas"]) == (0.0, 0.9) and math.isclose(group["lr"], 1e-4), optimizer
    adam_steps = {name: {int(s["step"]) for s in state[name]["state"].values()} for name in ("opt_g", "opt_d")}
    assert adam_steps == {"opt_g": {WGAN_STEPS // CRITIC_STEPS}, "opt_d": {WGAN_STEPS}}
    assert state["critic_updates"] == WGAN_STEPS and state["ema_updates"] == WGAN_STEPS // CRITIC_STEPS


def test_models_evaluate_scores_each_family_by_what_it_declares(trained):
    metrics = trained["metrics"]
    assert set(metrics) == set(SPECS)
    for family, figures in metrics.items():
        assert math.isfinite(figures["frechet_distance"]) and figures["frechet_samples"] == 32, family
    for family in ("logistic-pixelcnn", "tiny-flow"):  # exact likelihoods: no bound, no KL term
        assert 0 < metrics[family]["test_bits_per_dim"] < 9 and "test_kl_nats" not in metrics[family]
    assert "test_bits_per_dim" not in metrics["wgan-gp"]
    assert metrics["logistic-pixelcnn"]["grid_16_seconds"] > 0  # a sequential sampler's cost, measured
    for family, dim in (("wgan-gp", 32), ("tiny-flow", 784)):  # latent models: each class's latent in the card
        card = read_card(trained["weights"] / family)
        assert len(card["class_latents"]) == 10 and len(card["class_latents"]["Sneaker"]["mean"]) == dim


def get(server: str, path: str) -> httpx.Response:
    answer = httpx.get(server + path, timeout=DEADLINE_S)
    assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
    return answer


def post(server: str, path: str, body: dict, **headers) -> httpx.Response:
    answer = httpx.post(server + path, json=body, headers=headers, timeout=DEADLINE_S)
    assert answer.status_code == 200, f"{path} {body}: {answer.status_code} {answer.text[:300]}"
    return answer


def images(answer: httpx.Response, n: int) -> list[np.ndarray]:
    """The `?format=json` answer's n images, each 28 x 28 gray."""
    decoded = [b64png(image) for image in answer.json()["images"]]
    assert len(decoded) == n and all(image.shape == (28, 28) for image in decoded)
    return decoded


def events(answer: httpx.Response) -> list[tuple[str, dict]]:
    assert answer.headers["content-type"].startswith("text/event-stream")
    blocks = [block.split("\n") for block in answer.text.strip().split("\n\n")]
    return [(lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))) for lines in blocks]


def test_genserve_serve_answers_every_endpoint_each_family_declares(trained, server):
    served = {info["name"]: info for info in get(server, "/v1/models").json()["models"]}
    assert set(served) == set(SPECS) and get(server, "/readyz").json()["failed"] == {}
    for name, info in served.items():
        capabilities, url = set(info["capabilities"]), f"/v1/models/{name}"
        assert info["family"] == name
        if "sample" in capabilities:
            grid = png(get(server, f"{url}/samples.png?n=3&seed=1").content)
            assert grid.shape == grid_shape(3, None, 28, 28)
            images(post(server, f"{url}/samples?format=json", {"n": 2, "seed": 1}), 2)
            plain = post(server, f"{url}/samples", {"n": 2, "seed": 5}).content
            stream = events(post(server, f"{url}/samples", {"n": 2, "seed": 5}, **STREAM))
            progress = [data["row"] for kind, data in stream[:-1] if kind == "progress"]
            assert progress == (list(range(28)) if "stream" in capabilities else [])
            assert stream[-1][0] == "done" and b64png(stream[-1][1]["image"]).tolist() == png(plain).tolist()
        if "interpolate" in capabilities:
            row = post(server, f"{url}/interpolate", {"start": {"seed": 1}, "end": {"class": "Sneaker"}, "steps": 3})
            assert png(row.content).shape == grid_shape(3, 3, 28, 28)
        if "traverse" in capabilities:
            row = post(server, f"{url}/traverse", {"center": {"seed": 0}, "axes": [{"dim": 0}], "steps": 3})
            assert png(row.content).shape == grid_shape(3, 3, 28, 28)
        if "arithmetic" in capabilities:
            terms = [{"latent": {"class": "Sneaker"}}, {"latent": {"seed": 2}, "weight": 0.5}]
            # the two operands, their sum, then one variation of it
            images(post(server, f"{url}/arithmetic?format=json", {"terms": terms, "n": 2}), 4)
            vector = post(server, f"{url}/latents", {"latent": {"class": "Bag"}}).json()["vector"]
            assert len(vector) == info["latent_dim"] and all(map(math.isfinite, vector))
        if "image_latent" in capabilities:  # by the encoder (the flow) or by projection (the WGAN-GP)
            vector = post(server, f"{url}/latents", {"latent": {"image": UPLOAD}}).json()["vector"]
            assert len(vector) == info["latent_dim"] and all(map(math.isfinite, vector))
        if "reconstruct" in capabilities:
            original, _ = images(post(server, f"{url}/reconstruct?format=json", {"image": UPLOAD}), 2)
            assert original.tolist() == b64png(UPLOAD).tolist()
        if "complete" in capabilities:
            occluded, *completions = images(post(server, f"{url}/complete?format=json",
                                                 {"image": UPLOAD, "keep_rows": 14, "n": 2, "seed": 3}), 3)
            assert occluded[:14].tolist() == b64png(UPLOAD)[:14].tolist()
            for completion in completions:  # the kept rows kept exactly, the rest drawn
                assert completion[:14].tolist() == b64png(UPLOAD)[:14].tolist()
        if "likelihood" in capabilities:
            answer = post(server, f"{url}/likelihood", {"image": UPLOAD}).json()
            assert answer["exact"] is True and answer["nll_nats"] > 0
            assert math.isclose(answer["bits_per_dim"], answer["nll_nats"] / (784 * math.log(2)), rel_tol=1e-4)


LEVELS = 32  # few levels keep the naive sampler (a whole network pass per sub-pixel) quick


@pytest.fixture
def one_thread():
    """Tiny tensors: on a busy 2-core machine a second thread only waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("colours, n_classes", [(1, 0), (3, 3)], ids=["gray", "colour-conditional"])
@torch.no_grad()
def test_the_logistic_head_passes_the_shipped_samplers_checks(one_thread, colours, n_classes):
    """The stepper computes the network's `levels` log-probabilities sub-pixel by sub-pixel, the
    cached and naive samplers draw the same pixels, and training's hook scores each sub-pixel by
    exactly the log-probability the sampler draws it with."""
    torch.manual_seed(0)
    config = LogisticPixelCNNConfig(image_shape=(colours, 6, 7), channels=6, n_layers=3, n_classes=n_classes,
                                    levels=LEVELS)
    model = LogisticPixelCNN(config).double().eval()
    levels = torch.randint(LEVELS, (2, colours, 6, 7))
    x = levels.double() / (LEVELS - 1)
    cond = torch.tensor([0, 2]) if n_classes else None
    expected = model(x, cond)  # [B, C, levels, H, W]
    stepper = model.stepper(cond, 2)
    for i in range(6):  # rows 5 and 6 start below the rows the vertical stack reaches (4)
        stepper.start_row(i, x)
        for j in range(7):
            for colour in range(colours):
                torch.testing.assert_close(stepper.step(j, colour), expected[:, colour, :, i, j], rtol=0, atol=1e-10)
                stepper.emit(j, colour, levels[:, colour, i, j, None])
    scored = expected.gather(2, levels[:, :, None]).squeeze(2)
    torch.testing.assert_close(model.sub_pixel_log_probs(x, cond), scored, rtol=0, atol=1e-12)
    noise, cond = model.draw_noise(3, torch.Generator().manual_seed(11))
    fast = model.sample_from_noise(noise.double(), 0.9, cond, fast=True)
    assert torch.equal(fast, model.sample_from_noise(noise.double(), 0.9, cond, fast=False))
    assert torch.equal(fast * (LEVELS - 1), (fast * (LEVELS - 1)).round())


@torch.no_grad()
def test_the_logistic_mixture_is_a_normalised_density_over_the_levels(one_thread):
    """Over all 256^2 images of two pixels: the bins' masses sum to one."""
    model = LogisticPixelCNN(LogisticPixelCNNConfig(image_shape=(1, 1, 2), channels=4, n_layers=2)).double().eval()
    values = torch.arange(256, dtype=torch.double) / 255
    grid = torch.cartesian_prod(values, values).view(-1, 1, 1, 2)
    assert abs(float(torch.logsumexp(model.log_prob(grid), 0))) < 1e-9
