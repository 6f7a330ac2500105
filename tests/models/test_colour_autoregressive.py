"""PixelCNN and PixelRNN in colour: each pixel's R from the context, G from it and R, B from it, R
and G (the paper's colour masks), sampled in that order by both samplers. Each test runs on both
families (`colour`)."""

import math

import pytest
import torch

from models.families.pixelcnn import PixelCNN, PixelCNNConfig
from models.families.pixelrnn import PixelRNN, PixelRNNConfig


def pixelcnn(image_shape=(3, 8, 8), **overrides) -> PixelCNN:
    torch.manual_seed(0)
    config = PixelCNNConfig(image_shape=image_shape, **{"channels": 8, "n_layers": 3, "kernel_size": 5,
                                                        "head_channels": 16, **overrides})
    return PixelCNN(config).double().eval()


def pixelrnn(image_shape=(3, 8, 8), **overrides) -> PixelRNN:
    torch.manual_seed(0)
    config = PixelRNNConfig(image_shape=image_shape, **{"channels": 8, "n_layers": 3, "first_kernel": 5,
                                                        "head_channels": 16, **overrides})
    return PixelRNN(config).double().eval()


@pytest.fixture(params=[pixelcnn, pixelrnn], ids=["pixelcnn", "pixelrnn"])
def colour(request):
    return request.param


def quantised(*shape) -> torch.Tensor:
    return (torch.rand(*shape, dtype=torch.double) * 255).round() / 255


def test_each_sub_pixel_sees_exactly_the_sub_pixels_before_it(colour):
    """In raster order with R, G, B within a pixel: d logits(c, i, j) / d x is exactly zero at
    (c, i, j) and every sub-pixel after it, and nonzero at the pixel's earlier colours and at every
    colour of the pixels left of it and above it. Wide enough that no path is cut by chance: a
    pixel's own earlier colours reach a later one only through that colour's features, and a
    few channels could all sit below a ReLU's zero at once."""
    model = colour(channels=24, head_channels=48)
    c, h, w = 3, 8, 8
    x = torch.rand(1, c, h, w, dtype=torch.double, requires_grad=True)
    logits = model(x)
    for i, j in [(0, 0), (0, 5), (4, 0), (5, 6), (h - 1, w - 1)]:
        for ch in range(c):
            (grad,) = torch.autograd.grad(logits[0, ch, :, i, j].sum(), x, retain_graph=True)
            in_order = grad[0].permute(1, 2, 0).abs().flatten()  # [H, W, C]: the sampling order
            position = (i * w + j) * c + ch
            assert in_order[position:].max() == 0, f"sub-pixel {(ch, i, j)} sees itself or the future"
            for earlier in range(ch):
                assert grad[0, earlier, i, j] != 0, f"sub-pixel {(ch, i, j)} misses colour {earlier} of its pixel"
            if j > 0:
                assert grad[0, :, i, j - 1].abs().min() > 0, f"sub-pixel {(ch, i, j)} misses its left neighbour"
            if i > 0:
                assert grad[0, :, i - 1, j].abs().min() > 0, f"sub-pixel {(ch, i, j)} misses the pixel above"


def test_log_prob_is_a_normalised_discrete_density_over_colour_images(colour):
    """Exact normalisation over all 4^6 images of two 3-colour pixels at 4 levels: a sub-pixel that
    saw itself or a later one would break it."""
    model = colour(image_shape=(3, 1, 2), levels=4)
    values = torch.arange(4, dtype=torch.double) / 3
    grid = torch.cartesian_prod(*[values] * 6).view(-1, 3, 1, 2)
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(grid), 0)
    assert abs(float(total)) < 1e-9


def test_the_likelihood_counts_every_sub_pixel(colour):
    model = colour(n_classes=2)
    x, y = quantised(3, 3, 8, 8), torch.tensor([0, 1, 1])
    with torch.no_grad():
        nll = model.nll(x, y)
        loss, figures = model.loss(x, y)
    torch.testing.assert_close(loss * (3 * 8 * 8), nll.mean())
    assert math.isclose(figures["bits_per_dim"], float(nll.mean()) / (3 * 8 * 8 * math.log(2)), rel_tol=1e-9)


def test_class_marginal_is_the_mean_of_the_conditionals(colour):
    model = colour(n_classes=3)
    x = quantised(2, 3, 8, 8)
    per_class = torch.stack([model.log_prob(x, torch.full((2,), y)) for y in range(3)])
    shift = per_class.max(0).values  # log-probs of whole images underflow exp()
    torch.testing.assert_close(model.log_prob(x), shift + torch.log((per_class - shift).exp().mean(0)))


def test_low_temperature_takes_each_colours_mode_given_the_earlier_ones(colour):
    model = colour()
    noise, _ = model.draw_noise(2, torch.Generator().manual_seed(0))
    # An untrained network's logits lie within thousandths of each other: a very low temperature.
    cold = model.sample_from_noise(noise.double(), temperature=1e-6)
    assert torch.equal(cold, model(cold).argmax(2).double() / 255)


def test_completion_in_colour_keeps_what_is_known_down_to_single_colours(colour):
    """The lower half from the upper, and below it the red channel given too (a colourisation):
    known sub-pixels are kept, the rest drawn, the same by both samplers."""
    model = colour(n_classes=3)
    x = quantised(2, 3, 8, 8)
    known = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    known[:, :, :4] = True
    known[1, 0] = True
    out = model.complete(x, known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[known], x[known]) and not torch.equal(out[~known], x[~known])
    naive = model.complete(x, known, generator=torch.Generator().manual_seed(0), fast=False)
    assert torch.equal(out, naive)


def test_class_posterior_uses_the_known_sub_pixels_before_the_first_unknown_one(colour):
    """Top rows and the first pixel's R and G below them known: the posterior is Bayes' rule on
    exactly those sub-pixels; what comes after (that pixel's B, the rest) cannot move it."""
    model = colour(n_classes=3)
    x = quantised(2, 3, 8, 8)
    known = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    known[:, :, :4] = True
    known[:, :2, 4, 0] = True
    known[:, :, 6:] = True  # after a gap: left out
    counted = torch.zeros_like(known)
    counted[:, :, :4] = True
    counted[:, :2, 4, 0] = True
    targets = (x * 255).round().long().unsqueeze(2)
    with torch.no_grad():
        per_sub_pixel = [model(x, torch.full((2,), y)).log_softmax(2).gather(2, targets).squeeze(2) for y in range(3)]
    joint = torch.stack([(log_probs * counted).flatten(1).sum(1) for log_probs in per_sub_pixel], 1)
    posterior = model.class_posterior(x, known)
    torch.testing.assert_close(posterior, joint.softmax(1))
    other = x.clone()
    other[:, 2, 4, 0] = 1 - other[:, 2, 4, 0]
    other[:, :, 5:] = 1 - other[:, :, 5:]
    torch.testing.assert_close(model.class_posterior(other, known), posterior)


def test_every_colour_needs_channels_of_its_own():
    with pytest.raises(ValueError, match="channels"):
        pixelcnn(channels=2)
    with pytest.raises(ValueError, match="head_channels"):
        pixelrnn(head_channels=2)
