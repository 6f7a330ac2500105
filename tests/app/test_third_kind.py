"""A family of a third kind, neither a GAN-like decoder nor an autoregressive model: a tiny
affine-coupling flow (Dinh et al. 2017), with an exact likelihood and an invertible latent. Defined
in this file and registered with one line, it trains through `models.train`, is scored by
`models.evaluate` and is served by the unchanged app (samples, interpolation, likelihood, image
latents, reconstruction): the proof that the contract (models/contract.py) is all a family needs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from apptest import b64png, encode_png, png, serving
from models.evaluation import evaluate
from models import families
from models.training import command as train
from models.checkpoint import load_checkpoint
from models.data import load_dataset, to_float
from models.grid import to_uint8
from models.families.latent import LatentModel

ALPHA = 0.05  # the logit transform's margin: y = logit(ALPHA + (1 - 2 ALPHA) v)


@dataclass
class TinyFlowConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 784  # a flow's latent is the image's size
    couplings: int = field(default=4, metadata={"bounds": (2, 16)})
    hidden: int = field(default=32, metadata={"bounds": (1, 512)})

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)
        if self.latent_dim != math.prod(self.image_shape):
            raise ValueError("a flow's latent_dim is C * H * W")


class TinyFlow(LatentModel):
    """Gray levels -> the midpoints of their bins in (0, 1) -> logit space -> affine couplings on
    alternating halves of the pixels -> z ~ N(0, I). Invertible, so z is the image's latent."""

    family = "tiny-flow"
    Config = TinyFlowConfig
    summary = "A tiny affine-coupling flow: an exact likelihood and an invertible latent (a test family)."
    capabilities = ("sample", "interpolate", "arithmetic", "likelihood", "encoder", "image_latent", "reconstruct")
    likelihood = "exact"
    likelihood_method = "exact change of variables at the gray levels' bin midpoints"
    channels_last = False

    def __init__(self, config: TinyFlowConfig):
        super().__init__()
        self.config = config
        d = config.latent_dim
        half = (torch.arange(d) % 2).float()
        self.register_buffer("masks", torch.stack([half if i % 2 else 1 - half for i in range(config.couplings)]))
        self.nets = nn.ModuleList(nn.Sequential(nn.Linear(d, config.hidden), nn.Tanh(), nn.Linear(config.hidden, 2 * d))
                                  for _ in range(config.couplings))
        for net in self.nets:  # each coupling starts as the identity
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)

    def _coupling(self, i: int, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.nets[i](y * self.masks[i]).chunk(2, dim=1)
        return torch.tanh(scale) * (1 - self.masks[i]), shift * (1 - self.masks[i])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] on the 8-bit grid -> (z [B, d], log p(x) [B] in nats)."""
        v = (x.flatten(1) * 255 + 0.5) / 256
        u = ALPHA + (1 - 2 * ALPHA) * v
        y = torch.log(u) - torch.log1p(-u)
        log_det = (math.log(1 - 2 * ALPHA) - torch.log(u) - torch.log1p(-u)).sum(1) - y.shape[1] * math.log(256)
        for i in range(self.config.couplings):
            scale, shift = self._coupling(i, y)
            y = y * torch.exp(scale) + shift
            log_det = log_det + scale.sum(1)
        log_prior = -0.5 * (y.pow(2) + math.log(2 * math.pi)).sum(1)
        return y, log_prior + log_det

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        y = z
        for i in reversed(range(self.config.couplings)):
            scale, shift = self._coupling(i, y)  # the masked half is unchanged, so this is exact
            y = (y - shift) * torch.exp(-scale)
        v = (torch.sigmoid(y) - ALPHA) / (1 - 2 * ALPHA)
        return ((v * 256 - 0.5) / 255).clamp(0, 1).view(-1, *self.config.image_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = self._forward(x)
        return z, torch.full_like(z, -math.inf)  # a point mass: no spread

    def nll(self, x: torch.Tensor, cond: torch.Tensor | None = None,
            generator: torch.Generator | None = None) -> torch.Tensor:
        return -self._forward(x)[1]

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        bits = self.nll(x).mean() / (x[0].numel() * math.log(2))
        return bits, {"bits_per_dim": bits.item()}


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(families.FAMILIES, TinyFlow.family, TinyFlow)  # the one registration line


def _b64(image: torch.Tensor) -> str:
    """One gray image [1, 1, H, W] as a base64 PNG of its own size."""
    return encode_png(to_uint8(image)[0, :, :, 0])


@pytest.mark.anyio
async def test_a_flow_trains_is_scored_and_is_served_with_no_edit_outside_this_file(registered, weights_dir,
                                                                                    tmp_path):
    out = tmp_path / "weights" / "flow"
    train.main(["tiny-flow", "--epochs", "2", "--limit", "512", "--batch-size", "32", "--lr", "1e-3",
                "--out", str(out), "--state-dir", str(tmp_path / "state"), "--threads", "1", "--quiet"])
    model, card = load_checkpoint(out)
    history = card["training"]["history"]
    assert isinstance(model, TinyFlow) and card["training"]["steps"] == 32
    assert history[1]["bits_per_dim"] < history[0]["bits_per_dim"]  # it learns

    metrics = evaluate.evaluate(out, weights_dir / "classifier", n_samples=100, limit=300, quiet=True)
    assert 0 < metrics["test_bits_per_dim"] < 9 and "test_nll_nats" in metrics  # exact: no ELBO terms
    assert metrics["frechet_distance"] > 0 and 0 <= metrics["class_mean_decodes_to_class"] <= 1
    model, card = load_checkpoint(out)  # the card now holds the class latents from the encoder
    assert len(card["class_latents"]["Sneaker"]["mean"]) == 784

    image = to_float(load_dataset("fashion-mnist", "test", limit=1).images)
    async with serving(tmp_path / "weights") as client:
        info = (await client.get("/v1/models/flow")).json()
        assert info["family"] == "tiny-flow" and info["latent_dim"] == 784
        assert set(info["capabilities"]) == {*TinyFlow.capabilities, "encode"}  # and the old name

        samples = await client.post("/v1/models/flow/samples?format=json", json={"n": 3, "seed": 4})
        got = torch.from_numpy(np.stack([b64png(i) for i in samples.json()["images"]])).float() / 255
        with torch.no_grad():
            expected = model.sample_for_seeds([4, 5, 6])[:, 0]
        assert (got - expected).abs().max() <= 1 / 255 + 1e-6

        row = await client.post("/v1/models/flow/interpolate", json={"start": {"seed": 1}, "end": {"seed": 2},
                                                                     "steps": 4})
        assert row.status_code == 200 and png(row.content).shape == (32, 122)

        answer = (await client.post("/v1/models/flow/likelihood", json={"image": _b64(image)})).json()
        with torch.no_grad():
            assert answer["exact"] is True and math.isclose(answer["nll_nats"], float(model.nll(image)), rel_tol=1e-5)

        latent = (await client.post("/v1/models/flow/latents", json={"latent": {"image": _b64(image)}})).json()
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(latent["vector"]), model.encode(image)[0][0], atol=1e-4, rtol=0)

        pair = await client.post("/v1/models/flow/reconstruct?format=json", json={"image": _b64(image)})
        original, reconstruction = (b64png(i) for i in pair.json()["images"])
        assert np.abs(original.astype(int) - reconstruction.astype(int)).max() <= 1  # invertible
