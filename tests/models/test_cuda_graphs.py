"""The cached samplers' rows as CUDA graphs record them (`models.families.row_sampler`).

Here on the CPU: the form a graph records (one stepper and one `RowPass` kept from batch to batch,
every sub-pixel of a row computed and the kept ones put back) draws the eager loop's pixels; the
CPU never records; a row that cannot be recorded leaves the sampling to the eager loop. On a CUDA
device (bench/gpu_check.sh runs this file there; skipped elsewhere): the recorded rows draw the
eager loop's pixels on the same device, and the naive sampler's in float64.
"""

import logging
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.families.pixelcnn import PixelCNN, PixelCNNConfig
from models.families.pixelrnn import PixelRNN, PixelRNNConfig
from models.families.row_sampler import RowGraphs, borrowed_row_graph, capture, row_pass, sample_rows

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pixelcnn(image_shape, n_classes=3) -> PixelCNN:
    torch.manual_seed(0)
    return PixelCNN(PixelCNNConfig(image_shape=image_shape, channels=12, n_layers=3, kernel_size=5,
                                   head_channels=24, n_classes=n_classes)).eval()


def pixelrnn(image_shape, n_classes=3) -> PixelRNN:
    torch.manual_seed(0)
    return PixelRNN(PixelRNNConfig(image_shape=image_shape, channels=12, n_layers=3, first_kernel=5,
                                   head_channels=24, n_classes=n_classes)).eval()


families = pytest.mark.parametrize("family", [pixelcnn, pixelrnn], ids=["pixelcnn", "pixelrnn"])
shapes = pytest.mark.parametrize("image_shape", [(1, 9, 8), (3, 6, 7)], ids=["gray", "colour"])


def given(n: int, image_shape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images on the 8-bit grid, and what a completion keeps of them: nothing of the first image,
    the top rows of the second, scattered sub-pixels of all, and row 3 of every image (a row
    nobody draws, which the PixelCNN's loop skips)."""
    images = (torch.rand(n, *image_shape, generator=generator) * 255).round() / 255
    known = torch.rand(n, *image_shape, generator=generator) < 0.3
    known[0] = False
    known[1, :, :2] = True
    known[:, :, 3] = True
    return images, known


def draws(model, n: int, masked: bool, generator: torch.Generator, device="cpu") -> dict:
    """The inputs of one `sample_from_noise` call: noise, classes, and for a completion the images
    and what is known of them."""
    shape = model.config.image_shape
    noise, cond = model.draw_noise(n, generator)
    images, known = given(n, shape, generator) if masked else (torch.zeros(n, *shape), torch.zeros(n, *shape, dtype=torch.bool))
    return {"noise": noise.to(device), "cond": cond.to(device), "x": images.to(device), "known_mask": known.to(device)}


@families
@shapes
@torch.no_grad()
def test_a_row_in_the_form_a_graph_records_draws_the_eager_loops_pixels(family, image_shape):
    """One stepper and one `RowPass` serve batch after batch (`bind` takes each batch's classes),
    every row run whole and the kept sub-pixels put back, as a CUDA graph replays it: the pixels
    of the eager loop, which builds a stepper per batch and skips what no image draws."""
    model = family(image_shape)
    generator = torch.Generator().manual_seed(0)
    stepper = model.stepper(torch.zeros(4, dtype=torch.long), 4)
    row = row_pass(model, stepper, 4)
    for temperature, masked in ((1.0, False), (0.8, True), (1.0, True)):
        inputs = draws(model, 4, masked, generator)
        eager = model.sample_from_noise(inputs["noise"], temperature, inputs["cond"], x=inputs["x"],
                                        known_mask=inputs["known_mask"])
        stepper.bind(inputs["cond"])
        recorded_form = sample_rows(stepper, row, inputs["x"].clone(), inputs["noise"], inputs["known_mask"],
                                    temperature, None, lambda t=temperature: row.run_whole(t))
        assert torch.equal(recorded_form, eager)
        assert torch.equal(recorded_form[inputs["known_mask"]], inputs["x"][inputs["known_mask"]])


@torch.no_grad()
def test_the_cpu_samples_with_the_eager_loop_and_records_nothing():
    model = pixelrnn((1, 6, 6))
    with borrowed_row_graph(model, 2, 1.0, None) as recorded:
        assert recorded is None
    inputs = draws(model, 2, False, torch.Generator().manual_seed(1))
    model.sample_from_noise(inputs["noise"], 1.0, inputs["cond"])
    assert "_row_graphs" not in vars(model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="where CUDA is, the row is recorded for real")
@torch.no_grad()
def test_a_row_that_cannot_be_recorded_leaves_the_sampling_to_the_eager_loop(caplog):
    """Here torch cannot record (no CUDA): the recording gives up with a warning, and the model's
    graphs are marked broken, so that every later batch samples eagerly instead of retrying."""
    model = pixelcnn((1, 6, 6))
    cond = torch.tensor([0, 2])
    with caplog.at_level(logging.WARNING, logger="models.families.row_sampler"):
        assert capture(model, 2, 1.0, cond) is None
        graphs = RowGraphs()
        assert graphs.get(model, 2, 1.0, cond) is None
    assert graphs.broken and not graphs.graphs
    assert "sampling without CUDA graphs" in caplog.text


# -- on a CUDA device ---------------------------------------------------------------------------

def eagerly(model, *args, **kwargs) -> torch.Tensor:
    model.cuda_graphs = False
    try:
        return model.sample_from_noise(*args, **kwargs)
    finally:
        model.cuda_graphs = True


@cuda
@families
@shapes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@torch.no_grad()
def test_recorded_rows_draw_the_eager_loops_pixels_on_cuda(family, image_shape, dtype):
    """Samples and completions, one image (run as two) and four, two temperatures, a recorded row
    used again for other classes, in inference mode as the worker samples and out of it; in
    float64 the naive sampler's pixels too (no TF32 there)."""
    model = family(image_shape).to("cuda", dtype)
    generator = torch.Generator().manual_seed(3)
    for n, temperature, masked, inference in ((4, 1.0, False, True), (1, 0.8, False, True), (4, 1.0, True, True),
                                              (4, 1.0, False, True), (4, 1.0, False, False)):
        inputs = draws(model, n, masked, generator, "cuda")
        with torch.inference_mode(inference):
            recorded = model.sample_from_noise(inputs["noise"], temperature, inputs["cond"], x=inputs["x"],
                                               known_mask=inputs["known_mask"])
            eager = eagerly(model, inputs["noise"], temperature, inputs["cond"], x=inputs["x"],
                            known_mask=inputs["known_mask"])
        assert torch.equal(recorded, eager), (n, temperature, masked, inference)
        if dtype == torch.float64:
            naive = model.sample_from_noise(inputs["noise"], temperature, inputs["cond"], x=inputs["x"],
                                            known_mask=inputs["known_mask"], fast=False)
            assert torch.equal(recorded, naive), (n, temperature, masked, inference)
    graphs = vars(model)["_row_graphs"]
    assert not graphs.broken
    assert set(graphs.graphs) == {(4, 1.0, True), (2, 0.8, True), (4, 1.0, False)}


@cuda
@torch.no_grad()
def test_new_weights_are_recorded_anew():
    model = pixelcnn((1, 6, 6), n_classes=0).cuda()
    noise, _ = model.draw_noise(3, torch.Generator().manual_seed(4))
    before = model.sample_from_noise(noise)
    model.head[3].bias.add_(torch.randn_like(model.head[3].bias) * 3)
    after = model.sample_from_noise(noise)
    assert not torch.equal(after, before)
    assert torch.equal(after, eagerly(model, noise))


@cuda
@pytest.mark.parametrize("name", ["pixelcnn", "pixelrnn"])
@torch.no_grad()
def test_the_shipped_models_draw_the_same_16_images_with_graphs_on_cuda(name):
    model, _ = load_checkpoint(WEIGHTS / name, torch.device("cuda"))
    noise, cond = model.noise_for_seeds(range(16))
    with torch.inference_mode():
        assert torch.equal(model.sample_from_noise(noise, 1.0, cond), eagerly(model, noise, 1.0, cond))
