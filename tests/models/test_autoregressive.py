"""The autoregressive families, PixelCNN and PixelRNN: each test runs on both (`small`).
Colour (the R -> G -> B masks) has more tests in test_colour_autoregressive.py."""

import pytest
import torch

from models.families.pixelcnn import PixelCNN, PixelCNNConfig
from models.families.pixelrnn import PixelRNN, PixelRNNConfig


def pixelcnn(n_classes=0, image_shape=(1, 12, 12)) -> PixelCNN:
    torch.manual_seed(0)
    config = PixelCNNConfig(image_shape=image_shape, channels=8, n_layers=3, kernel_size=5,
                            head_channels=16, n_classes=n_classes)
    return PixelCNN(config).double().eval()


def pixelrnn(n_classes=0, image_shape=(1, 12, 12)) -> PixelRNN:
    torch.manual_seed(0)
    config = PixelRNNConfig(image_shape=image_shape, channels=8, n_layers=3, first_kernel=5,
                            head_channels=16, n_classes=n_classes)
    return PixelRNN(config).double().eval()


@pytest.fixture(params=[pixelcnn, pixelrnn], ids=["pixelcnn", "pixelrnn"])
def small(request):
    return request.param


def test_outputs_are_causal_in_raster_order(small):
    """d logits(i) / d x(j) is exactly zero for every j at or after i, and nonzero for some j before."""
    model = small()
    h, w = 12, 12
    x = torch.rand(1, 1, h, w, dtype=torch.double, requires_grad=True)
    logits = model(x)
    for i, j in [(0, 0), (0, 5), (4, 0), (5, 6), (h - 1, w - 1)]:
        (grad,) = torch.autograd.grad(logits[0, :, :, i, j].sum(), x, retain_graph=True)
        per_pixel = grad[0, 0].abs().flatten()
        position = i * w + j
        assert per_pixel[position:].max() == 0, f"pixel {(i, j)} sees itself or the future"
        if position > 0:
            assert per_pixel[:position].max() > 0, f"pixel {(i, j)} sees nothing of the past"


def test_the_gated_pixelcnn_has_no_blind_spot_within_its_receptive_field():
    """Pixels up and to the right of (i, j) are seen (the original PixelCNN's blind spot). The Row
    LSTM has one by design, a triangle (below)."""
    model = pixelcnn()
    x = torch.rand(1, 1, 12, 12, dtype=torch.double, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0, 0, :, 6, 4].sum(), x)
    assert grad[0, 0, 5, 4 + 3].abs() > 0 and grad[0, 0, 4, 4 + 4].abs() > 0


def test_log_prob_is_a_normalised_discrete_density(small):
    model = small(image_shape=(1, 1, 2))
    model.config.levels = 256
    # Exact normalisation over all 256^2 images of two pixels.
    values = torch.arange(256, dtype=torch.double) / 255
    grid = torch.cartesian_prod(values, values).view(-1, 1, 1, 2)
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(grid), 0)
    assert abs(float(total)) < 1e-9


def test_class_marginal_is_the_mean_of_the_conditionals(small):
    model = small(n_classes=3)
    x = (torch.rand(2, 1, 12, 12, dtype=torch.double) * 255).round() / 255
    per_class = torch.stack([model.log_prob(x, torch.full((2,), y)) for y in range(3)])
    shift = per_class.max(0).values  # log-probs of whole images underflow exp()
    expected = shift + torch.log((per_class - shift).exp().mean(0))
    torch.testing.assert_close(model.log_prob(x), expected)
    assert model.nll(x).min() > 0


def test_samples_lie_on_the_8bit_grid_and_the_seed_fixes_them(small):
    model = small()
    a = model.sample_for_seeds([5, 6, 7])
    b = model.sample_for_seeds([5, 6, 7])
    c = model.sample_for_seeds([8, 9, 10])
    assert a.shape == (3, 1, 12, 12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a * 255, (a * 255).round()) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("n_classes", [0, 4])
@pytest.mark.parametrize("image_shape", [(1, 12, 12), (3, 8, 8)], ids=["gray", "colour"])
def test_fast_sampler_draws_the_same_pixels_as_the_naive_one(small, n_classes, image_shape):
    """In colour too: R, G, B in turn, sub-pixel by sub-pixel, the naive sampler's pixels."""
    model = small(n_classes=n_classes, image_shape=image_shape)
    noise, cond = model.draw_noise(3, torch.Generator().manual_seed(11))
    fast = model.sample_from_noise(noise.double(), 0.9, cond, fast=True)
    naive = model.sample_from_noise(noise.double(), 0.9, cond, fast=False)
    assert fast.shape == (3, *image_shape) and torch.equal(fast * 255, (fast * 255).round())
    assert torch.equal(fast, naive)
    alone = model.sample_from_noise(noise[1:2].double(), 0.9, None if cond is None else cond[1:2])
    assert torch.equal(alone, fast[1:2]), "a sample does not depend on its batch"


@pytest.mark.parametrize("image_shape", [(1, 12, 12), (3, 8, 10)])
def test_each_finished_row_is_shown_final_and_a_false_answer_stops_the_sampling(small, image_shape):
    """What the event stream of samples sees: row r final and the rows below still blank."""
    model = small(n_classes=3, image_shape=image_shape)
    noise, cond = model.draw_noise(3, torch.Generator().manual_seed(5))
    whole = model.sample_from_noise(noise.double(), 0.8, cond)
    shown = []

    def on_row(row, images):
        shown.append(row)
        assert torch.equal(images[:, :, : row + 1], whole[:, :, : row + 1])
        assert not images[:, :, row + 1:].any(), "the rows below stay as given"
        return row < 2

    stopped = model.sample_from_noise(noise.double(), 0.8, cond, on_progress=on_row)
    assert shown == [0, 1, 2]
    assert torch.equal(stopped[:, :, :3], whole[:, :, :3]) and not stopped[:, :, 3:].any()


def test_a_sample_does_not_depend_on_its_batch(small):
    model = small()
    noise, _ = model.draw_noise(4, torch.Generator().manual_seed(2))
    together = model.sample_from_noise(noise.double())
    alone = model.sample_from_noise(noise[2:3].double())
    assert torch.equal(together[2:3], alone)


def test_complete_keeps_the_known_pixels_and_samples_the_rest(small):
    model = small()
    x = (torch.rand(2, 1, 12, 12, dtype=torch.double) * 255).round() / 255
    known = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    known[:, :, :6] = True
    out = model.complete(x, known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :6], x[:, :, :6])
    assert not torch.equal(out[:, :, 6:], x[:, :, 6:])
    naive = model.complete(x, known, generator=torch.Generator().manual_seed(0), fast=False)
    assert torch.equal(out, naive)


def test_class_posterior_is_bayes_rule_on_the_known_rows(small):
    model = small(n_classes=3)
    x = (torch.rand(2, 1, 12, 12, dtype=torch.double) * 255).round() / 255
    everything = torch.ones(2, 1, 12, 12, dtype=torch.bool)
    joint = torch.stack([model.log_prob(x, torch.full((2,), y)) for y in range(3)], 1)
    assert torch.allclose(model.class_posterior(x, everything), joint.softmax(1))
    # Top rows known: the rows below cannot move it (they come later in raster order), nor can
    # known pixels after a gap.
    top = torch.zeros_like(everything)
    top[:, :, :5] = True
    posterior = model.class_posterior(x, top)
    assert torch.allclose(posterior.sum(1), torch.ones(2, dtype=torch.double))
    other = x.clone()
    other[:, :, 5:] = 1 - other[:, :, 5:]
    gap = top.clone()
    gap[:, :, 8:] = True
    assert torch.allclose(model.class_posterior(other, top), posterior)
    assert torch.allclose(model.class_posterior(other, gap), posterior)
    uniform = torch.full((2, 3), 1 / 3, dtype=torch.double)
    assert torch.allclose(model.class_posterior(x, torch.zeros_like(top)), uniform)


def test_a_completion_without_class_takes_it_from_the_known_pixels(small):
    model = small(n_classes=3)
    x = (torch.rand(64, 1, 12, 12, dtype=torch.double) * 255).round() / 255
    known = torch.zeros(64, 1, 12, 12, dtype=torch.bool)
    known[:, :, :6] = True
    posterior = model.class_posterior(x, known)
    # Inverse CDF: u just below the first class's mass picks it, just above picks the next one.
    u = posterior[:, 0]
    assert torch.equal(model.class_from_uniform(x, known, u - 1e-9), torch.zeros(64, dtype=torch.long))
    assert (model.class_from_uniform(x, known, u + 1e-9) >= 1).all()
    # complete() draws u first from the generator, then the noise: the same seed, the same image.
    out = model.complete(x[:2], known[:2], generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    cond = model.class_from_uniform(x[:2], known[:2], torch.rand(2, generator=generator))
    noise, _ = model.draw_noise(2, generator, cond)
    assert torch.equal(out, model.sample_from_noise(noise, cond=cond, x=x[:2], known_mask=known[:2]))


def test_low_temperature_concentrates_on_the_mode(small):
    model = small()
    noise, _ = model.draw_noise(2, torch.Generator().manual_seed(0))
    cold = model.sample_from_noise(noise.double(), temperature=1e-3)
    logits = model(cold)
    mode = logits.argmax(2).double() / 255
    assert torch.equal(cold, mode)


def test_config_is_validated():
    with pytest.raises(ValueError):
        PixelCNN(PixelCNNConfig(kernel_size=4))
    with pytest.raises(ValueError):
        PixelRNNConfig(first_kernel=4)


def test_the_row_lstm_sees_a_triangle_above_each_pixel():
    """The state-to-state convolution widens the context by a column per row upwards, so pixels
    far up to the right are seen, beyond the first layer's kernel; just outside the triangle, not."""
    model = pixelrnn()
    x = torch.rand(1, 1, 12, 12, dtype=torch.double, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[0, 0, :, 8, 2].sum(), x)
    assert grad[0, 0, 2, 8].abs() > 0  # six rows up, six columns right: beyond the 5x5 first kernel
    assert grad[0, 0, 6, 7] == 0  # two rows up, five right: outside the triangle and the kernel


@pytest.mark.parametrize("n_classes", [0, 3])
@pytest.mark.parametrize("colours", [1, 3], ids=["gray", "colour"])
@torch.no_grad()
def test_the_stepper_computes_the_networks_logits_pixel_by_pixel(small, n_classes, colours):
    """The incremental network, stepped through a given image (in colour: R, G, B in turn), gives
    at each sub-pixel the logits of the whole network run on that image: it computes the same
    function, not an approximation."""
    model = small(n_classes=n_classes, image_shape=(colours, 6, 7))
    x = (torch.rand(2, colours, 6, 7, dtype=torch.double) * 255).round() / 255
    cond = torch.tensor([0, 2]) if n_classes else None
    expected = model(x, cond)  # [B, C, levels, H, W]
    levels = (x * 255).round().long()
    stepper = model.stepper(cond, 2)
    for i in range(6):
        stepper.start_row(i, x)
        for j in range(7):
            for colour in range(colours):
                torch.testing.assert_close(stepper.step(j, colour), expected[:, colour, :, i, j], rtol=0, atol=1e-10)
                stepper.emit(j, colour, levels[:, colour, i, j, None])
