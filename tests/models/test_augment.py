"""Differentiable augmentation (models.augment): each transform does what it says, reproducibly,
and lets gradients through to the generator."""

import pytest
import torch

from models.data.augment import augment, cutout, parse_policy, translation


def test_translation_shifts_whole_images_and_fills_with_zeros():
    x = torch.arange(1, 1 + 2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    y = translation(x, torch.Generator().manual_seed(3))
    for before, after in zip(x, y):
        kept = after[after != 0]
        # Every pixel kept is one of the image's own, in the same order (a shift, not a shuffle),
        # and a shift of at most 2 of 16 keeps at least (14/16)^2 of the image.
        assert torch.isin(kept, before).all() and (kept.diff() > 0).all()
        assert kept.numel() >= 14 * 14


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
    x = torch.ones(64, 3, 16, 16)
    y = cutout(x, torch.Generator().manual_seed(0))
    zeroed = (y == 0).all(dim=1)  # every channel of a cut pixel
    assert ((y == 0) | (y == 1)).all()
    assert (zeroed.sum(dim=(1, 2)) <= 8 * 8).all() and (zeroed.sum(dim=(1, 2)) > 0).all()
    assert (zeroed.sum(dim=(1, 2)) == 64).any()  # a square wholly inside the image


def test_a_seed_fixes_the_augmentation_and_gradients_reach_the_input():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    policy = parse_policy("color,translation,cutout")
    a = augment(x, policy, torch.Generator().manual_seed(7))
    b = augment(x, policy, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, augment(x, policy, torch.Generator().manual_seed(8)))
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_policies_are_refused_by_name():
    assert parse_policy("") == () and parse_policy(None) == ()
    with pytest.raises(ValueError, match="'colour'"):
        parse_policy("translation,colour")
