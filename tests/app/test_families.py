"""A family is one model file and one registration line: the app serves a family it has never
heard of from what the family declares, with no change anywhere in app/."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from apptest import b64png, png, serving
from models import families
from models.checkpoint import save_checkpoint
from models.families.latent import LatentModel

pytestmark = pytest.mark.anyio


@dataclass
class LinearDecoderConfig:
    image_shape: tuple[int, int, int] = (1, 28, 28)
    latent_dim: int = 4

    def __post_init__(self):
        self.image_shape = tuple(self.image_shape)


class LinearDecoder(LatentModel):
    """The smallest latent family: one linear layer from z to pixels, no encoder."""

    family = "linear-decoder"
    Config = LinearDecoderConfig
    summary = "A linear map from a 4-d latent to pixels (a test family)."
    capabilities = ("sample", "interpolate")
    objective = None  # served only

    def __init__(self, config: LinearDecoderConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.latent_dim, 28 * 28)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(z)).view(-1, *self.config.image_shape)


@pytest.fixture
def registered(monkeypatch):
    # The one registration line, done for the length of the test.
    monkeypatch.setitem(families.FAMILIES, LinearDecoder.family, LinearDecoder)


async def test_a_registered_family_is_served_by_what_it_declares(tmp_path, registered):
    torch.manual_seed(0)
    model = LinearDecoder(LinearDecoderConfig())
    save_checkpoint(model, tmp_path / "linear", {"name": "linear", "dataset": "fashion-mnist",
                                                 "classes": [str(i) for i in range(10)]})
    async with serving(tmp_path) as client:
        info = (await client.get("/v1/models/linear")).json()
        assert info["family"] == "linear-decoder" and info["summary"] == LinearDecoder.summary
        assert info["capabilities"] == ["sample", "interpolate"] and info["latent_dim"] == 4
        assert info["max_n"] == 64 and info["conditional"] is False

        samples = await client.post("/v1/models/linear/samples?format=json", json={"n": 2, "seed": 5})
        assert samples.status_code == 200, samples.text
        expected = model.decode(model.latents_for_seeds([5, 6]))  # the family's own per-seed rule
        got = torch.from_numpy(np.stack([b64png(image) for image in samples.json()["images"]])) / 255
        assert (got - expected[:, 0].detach()).abs().max() <= 1 / 255 + 1e-6

        row = await client.post("/v1/models/linear/interpolate", json={"start": {"seed": 1}, "end": {"seed": 2},
                                                                       "steps": 3})
        assert row.status_code == 200 and png(row.content).shape[1] > png(row.content).shape[0]
        # What it does not declare is refused, by the capability check, never by a family branch.
        for path, body in [("likelihood", {"image": samples.json()["images"][0]}),
                           ("reconstruct", {"image": samples.json()["images"][0]})]:
            refused = await client.post(f"/v1/models/linear/{path}", json=body)
            assert refused.status_code == 400 and "capabilities" in refused.json()["detail"]



def test_no_family_builds_a_latent_beyond_the_card_cap(registered):
    """A card may ask an undeclared field for up to 4096, and a diffusion model's latent is its
    noise image: whatever a config allows, a latent space beyond MAX_LATENT_DIM is refused when
    the module is built."""
    from models.card import MAX_LATENT_DIM
    from models.checkpoint import CheckpointError, build_model

    assert build_model("linear-decoder", {"latent_dim": 4096}, "meta").latent_dim == 4096
    assert build_model("diffusion", {"image_shape": [3, 64, 64], "n_classes": 10}, "meta").latent_dim <= MAX_LATENT_DIM
    with pytest.raises(CheckpointError, match=f"latent_dim {3 * 128 * 128} is above {MAX_LATENT_DIM}"):
        build_model("diffusion", {"image_shape": [3, 128, 128]}, "meta")