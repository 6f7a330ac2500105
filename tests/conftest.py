"""Fixtures shared by the service tests (tests/app, tests/reliability): the weights to serve.

Weights, in order: $GENSERVE_TEST_WEIGHTS_DIR; else a verified snapshot of the repo's weights/
when it holds all three models (training may rewrite them meanwhile, so the tests copy them);
else tiny checkpoints built once by the training module, with class latents put into their cards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.process import snapshot
from models.checkpoint import read_card, update_card

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("pixelcnn", "vae", "dcgan")
TINY = {"pixelcnn": ["--set", "channels=16", "n_layers=3", "head_channels=32"], "vae": [], "dcgan": []}


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


def _has_all_models(folder: Path) -> bool:
    return all((folder / f / "card.json").is_file() and (folder / f / "model.safetensors").is_file()
               for f in FAMILIES)


def _tiny_checkpoints(root: Path) -> Path:
    weights = root / "weights"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [subprocess.Popen([sys.executable, "-m", "models.train", family, "--limit", "640", "--max-steps", "2",
                              "--out", str(weights / family), "--state-dir", str(root / "runs" / family),
                              "--quiet", "--threads", "1", *TINY[family]],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for family in FAMILIES]
    for run in runs:
        output, _ = run.communicate(timeout=600)
        assert run.returncode == 0, output.decode()
    for family in ("vae", "dcgan"):  # what evaluation would add: each class's latent mean and spread
        card = read_card(weights / family)
        dim = card["config"]["latent_dim"]
        generator = torch.Generator().manual_seed(0)
        update_card(weights / family, class_latents={
            name: {"mean": (torch.randn(dim, generator=generator) * 0.5).tolist(), "std": [0.8] * dim}
            for name in card["classes"]})
    return weights


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    if os.environ.get("GENSERVE_TEST_WEIGHTS_DIR"):
        return Path(os.environ["GENSERVE_TEST_WEIGHTS_DIR"])
    root = tmp_path_factory.mktemp("genserve")
    if _has_all_models(REPO / "weights"):
        return snapshot(REPO / "weights", root / "weights")
    return _tiny_checkpoints(root)


