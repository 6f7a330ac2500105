"""Projection (models.latent's projection steps) and the latent map (models.latent_map), on small models."""

import math

import pytest
import torch
from torch import nn

from models.families.projection import projection_latents, projection_state, projection_steps
from models.evaluation.latent_map import latent_map
from models.families.vae import VAE, VAEConfig


def project(decode, images: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    """A whole projection in one go: `steps` steps from `start`."""
    return projection_latents(projection_steps(decode, images, projection_state(start), 0, steps))


def decoder(latent_dim: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(latent_dim, 64), nn.Tanh(), nn.Linear(64, 4 * 4), nn.Sigmoid(),
                         nn.Unflatten(1, (1, 4, 4))).double()


def test_projection_finds_a_latent_that_decodes_to_the_image():
    decode = decoder()
    truth = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        images = decode(truth)
    start = torch.zeros(3, 6, dtype=torch.float64)
    z = project(decode, images, start, steps=300)
    with torch.no_grad():
        before = (decode(start) - images).pow(2).mean()
        after = (decode(z) - images).pow(2).mean()
    assert after < 0.1 * before


def test_projection_is_deterministic_in_slices_and_per_image():
    decode = decoder()
    images = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    start = torch.zeros(2, 6, dtype=torch.float64)
    whole = project(decode, images, start, steps=20)
    assert torch.equal(whole, project(decode, images, start, steps=20))
    state = projection_state(start)
    for first in range(0, 20, 5):  # as the service runs it: slices of steps with the state carried over
        state = projection_steps(decode, images, state, first, 5)
    assert torch.equal(projection_latents(state), whole)
    alone = project(decode, images[1:], start[1:], steps=20)
    assert torch.allclose(alone, whole[1:], atol=1e-12), "an image's latent does not depend on the others"


def test_projection_works_inside_inference_mode():
    decode = decoder()
    images = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    with torch.inference_mode():
        z = project(decode, images, torch.zeros(1, 6, dtype=torch.float64), steps=3)
    assert z.shape == (1, 6) and not z.requires_grad


def test_latent_map_is_the_pca_plane_of_the_encoder_means():
    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, width=4, hidden=16)).eval()
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    result = latent_map(model, images, labels)
    assert result["images"] == 50 and len(result["points"]) == 50
    components = torch.tensor(result["components"])
    assert torch.allclose(components @ components.T, torch.eye(2), atol=1e-4)
    assert [p[2] for p in result["points"]] == labels.tolist()
    with torch.no_grad():
        means = model.encode(images.float() / 255)[0]
    x, y = ((means[0].double() - torch.tensor(result["mean"]).double()) @ components.double().T).tolist()
    assert abs(x - result["points"][0][0]) < 2e-3 and abs(y - result["points"][0][1]) < 2e-3
    assert result == latent_map(model, images, labels), "the same picture every time"
    assert sum(result["explained_variance"]) <= 1.0001


def test_a_mixture_prior_fits_fewer_codes_than_it_has_components():
    """A small folder may hold fewer training images than the prior has components: EM starts
    some components on the same code, and the fit is still a proper density over the codes."""
    from models.families.mixture import GaussianMixture

    codes = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    prior = GaussianMixture(dim=3, components=10)
    mean_log_p = prior.fit(codes, iterations=20, quiet=True)
    assert math.isfinite(mean_log_p)
    assert prior.log_weights.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(prior.log_prob(codes)).all()
