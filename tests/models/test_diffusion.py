"""The diffusion family with its shipped weights: DDIM's latent, its inversion, RePaint completion
and the likelihood bound, each from what a user can see (a request's steps: tests/app)."""

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.data import load_dataset, to_float

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


@pytest.fixture(scope="module")
def diffusion():
    model, _ = load_checkpoint(WEIGHTS / "diffusion")
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return to_float(load_dataset("fashion-mnist", "test", limit=4).images)


@torch.inference_mode()
def test_an_image_inverted_to_its_noise_decodes_back_to_itself(diffusion, images):
    """DDIM inversion gives the noise the sampler maps to the image (not a copy of any seed's)."""
    latents = diffusion.invert(images)
    assert latents.shape == (4, diffusion.latent_dim)
    reconstructed = diffusion.decode(latents)
    assert (reconstructed - images).pow(2).mean() < 0.01
    # The noise is noise-like: about unit variance, nothing like the image itself.
    noise = latents[:, : diffusion.config.noise_dim]
    assert 0.5 < noise.std() < 1.5


@torch.inference_mode()
def test_a_completion_keeps_the_known_pixels_and_fills_the_rest_per_seed(diffusion, images):
    known = torch.zeros(4, 1, 28, 28, dtype=torch.bool)
    known[:, :, :14] = True
    noise = diffusion.completion_noise_for_seeds(range(4))
    completed = diffusion.complete_from_noise(images, known, noise)
    assert torch.equal(completed[:, :, :14], images[:, :, :14])
    assert not torch.allclose(completed[:, :, 14:], images[:, :, 14:], atol=0.05)
    # Each seed its own generator: one completion alone is the same completion.
    alone = diffusion.complete_from_noise(images[2:3], known[2:3], diffusion.completion_noise_for_seeds([2]))
    assert (alone - completed[2:3]).abs().max() < 1e-3
    again = diffusion.complete_from_noise(images, known, diffusion.completion_noise_for_seeds(range(1, 5)))
    assert not torch.equal(again, completed)


@torch.inference_mode()
def test_the_bound_prefers_clothes_to_noise(diffusion, images):
    """The bound in bits/dim is finite and far lower for test images than for uniform noise."""
    generator = torch.Generator().manual_seed(0)
    clothes = diffusion.nll(images, None, generator) / (784 * torch.log(torch.tensor(2.0)))
    noise = diffusion.nll(torch.rand(4, 1, 28, 28, generator=generator), None, generator) / (784 * 0.6931)
    assert torch.isfinite(clothes).all() and (clothes > 0).all()
    assert clothes.max() + 2 < noise.min()
