"""Latent helpers: interpolation ends, arithmetic, and the exactly-one latent rule."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from app.latents import arithmetic, interpolate
from app.schemas import Latent


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_interpolation_includes_both_ends(method):
    a, b = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    path = interpolate(a, b, 5, method)
    assert path.shape == (5, 16)
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)


def test_slerp_keeps_the_norm_that_lerp_shrinks():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    assert torch.allclose(interpolate(a, b, 3, "slerp")[1].norm(), torch.tensor(3.0))
    assert interpolate(a, b, 3, "lerp")[1].norm() < 3.0


def test_arithmetic_is_the_weighted_sum():
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert torch.equal(arithmetic(z, [1, -1, 0.5]), torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("spec", [{}, {"seed": 1, "seeds": [1]}, {"vector": [1.0], "class": "Bag"}, {"seed": None},
                                  {"seed": 1, "other": 2}])
def test_a_latent_is_exactly_one_kind(spec):
    with pytest.raises(ValidationError):
        Latent.model_validate(spec)


@pytest.mark.parametrize("spec, kind", [({"seed": 3}, "seed"), ({"seeds": [1, 2]}, "seeds"),
                                        ({"vector": [0.5]}, "vector"), ({"class": "Bag"}, "class"),
                                        ({"image": "AAAA"}, "image")])
def test_latent_kind(spec, kind):
    assert Latent.model_validate(spec).kind == kind
