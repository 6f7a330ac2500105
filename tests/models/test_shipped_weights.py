"""The checkpoints we ship in weights/: verified, documented, measured, and they sample."""

import json
import math
from pathlib import Path

import pytest
import torch

from models.evaluation import baselines, evaluate, metrics
from models.checkpoint import load_checkpoint, sha256_file
from models.data import FASHION_MNIST_CLASSES, load_dataset, to_float

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
DOCS = Path(__file__).resolve().parents[2] / "docs"
GENERATORS = ["pixelcnn", "pixelrnn", "vae", "dcgan", "diffusion", "vae2d"]
AUTOREGRESSIVE = ["pixelcnn", "pixelrnn"]
FAMILY = {"vae2d": "vae"}  # a VAE with a 2-d latent, for the picture of its whole latent space
MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module", params=GENERATORS + ["classifier"])
def shipped(request):
    name = request.param
    model, card = load_checkpoint(WEIGHTS / name)  # verifies the sha256 and every tensor
    return name, model, card


def test_card_documents_the_training(shipped):
    name, model, card = shipped
    family = FAMILY.get(name, name)
    assert card["name"] == name and card["family"] == family
    assert card["sha256"] == sha256_file(WEIGHTS / name / "model.safetensors")
    assert card["dataset"] == "fashion-mnist" and card["classes"] == FASHION_MNIST_CLASSES
    training = card["training"]
    assert training["command"].startswith(f"python -m models.train {family}")
    assert training["train_images"] == 60000, "trained on the full train split"
    assert training["epochs"] >= 1 and training["steps"] >= 900
    assert training["wall_time_s"] > 0 and training["hardware"] and training["trained_at"]
    assert (WEIGHTS / name / "model.safetensors").stat().st_size < MAX_BYTES


def test_card_carries_the_evaluation(shipped):
    name, model, card = shipped
    metrics = card["metrics"]
    if name == "classifier":
        assert metrics["test_accuracy"] >= 0.9
        return
    assert metrics["frechet_distance"] > metrics["frechet_distance_test_vs_train"] >= 0
    # Two latent dimensions cannot hold everything: vae2d's samples miss a class (Coat, 9 of 10).
    small = name == "vae2d"
    assert metrics["classes_found"] >= (9 if small else 10)
    if "likelihood" in model.capabilities:
        assert 0 < metrics["test_bits_per_dim"] < 8
    if "arithmetic" in model.capabilities:
        assert set(card["class_latents"]) == set(FASHION_MNIST_CLASSES)
        # A diffusion model's class mean is its class code with zero noise, which DDIM draws as the
        # class's blurred average (7 of 10 classified right); its samples are drawn around it.
        assert metrics["class_mean_decodes_to_class"] >= (0.7 if small or name == "diffusion" else 0.8)
    if "encoder" in model.capabilities:  # the scatter of the demo page
        assert len(card["latent_map"]["points"]) == card["latent_map"]["images"] == 1000


@pytest.mark.parametrize("name", ["vae", "dcgan"])
def test_generators_sample_distinct_images_from_distinct_seeds(name):
    model, _ = load_checkpoint(WEIGHTS / name)
    a = model.sample_for_seeds(range(8))
    again = model.sample_for_seeds(range(8))
    other = model.sample_for_seeds(range(8, 16))
    assert a.shape == (8, 1, 28, 28) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, again) and not torch.equal(a, other)
    # Not a collapsed generator: the 8 samples differ from each other clearly.
    pairwise = torch.cdist(a.flatten(1), a.flatten(1))
    assert pairwise[~torch.eye(8, dtype=torch.bool)].min() > 1.0


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_autoregressive_samples_and_its_card_likelihood_holds_on_test_images(name):
    model, card = load_checkpoint(WEIGHTS / name)
    noise, _ = model.noise_for_seeds([0, 1])
    images = model.sample_from_noise(noise, 1.0, torch.tensor([1, 7]))
    assert images.shape == (2, 1, 28, 28) and torch.equal(images * 255, (images * 255).round())
    # Recompute bits/dim on a slice of the test split: near the card's figure for the whole split.
    x = to_float(load_dataset("fashion-mnist", "test", limit=50).images)
    with torch.no_grad():
        bits = float(model.nll(x).mean()) / (784 * math.log(2))
    assert math.isclose(bits, card["metrics"]["test_bits_per_dim"], abs_tol=0.15)


@pytest.mark.parametrize("name", AUTOREGRESSIVE)
def test_completions_take_their_class_from_the_kept_rows(name):
    """What a completion without a class is conditioned on: the class posterior given the top half
    finds the true class of most test images (a uniformly drawn class would be right 10 % of the time)."""
    model, _ = load_checkpoint(WEIGHTS / name)
    test = load_dataset("fashion-mnist", "test", limit=50)
    x = to_float(test.images)
    known = torch.zeros_like(x, dtype=torch.bool)
    known[:, :, :14] = True
    posterior = model.class_posterior(x, known)
    assert torch.allclose(posterior.sum(1), torch.ones(50))
    assert (posterior.argmax(1) == test.labels).float().mean() >= 0.5


@pytest.fixture(scope="module")
def judge() -> tuple:
    """The classifier evaluation scored with, and its test features' statistics, made once."""
    classifier, _ = load_checkpoint(WEIGHTS / "classifier")
    test_features, _ = metrics.features_of(classifier, to_float(load_dataset("fashion-mnist", "test").images))
    return classifier, metrics.feature_statistics(test_features)


@pytest.mark.parametrize("name", ["vae", "dcgan", "pixelcnn", "pixelrnn", "diffusion"])
def test_sample_quality_recomputed_from_the_weights_matches_the_card(name, judge):
    """Weights that silently degrade fail here: the Frechet distance of the first 200 samples,
    recomputed exactly as evaluation drew them (seed by seed, as the API draws), against the
    figure evaluation wrote."""
    model, card = load_checkpoint(WEIGHTS / name)
    classifier, test_statistics = judge
    samples = evaluate.draw_samples(model, evaluate.CHECK_SAMPLES, quiet=True)
    sample_features, _ = metrics.features_of(classifier, samples)
    recomputed = metrics.frechet_from_statistics(metrics.feature_statistics(sample_features), test_statistics)
    assert math.isclose(recomputed, card["metrics"][f"frechet_distance_{evaluate.CHECK_SAMPLES}"], rel_tol=0.02)


# docs/quality.md's claims: the shipped model's Frechet distance at most this share of the recipe
# a user would otherwise run (models.baselines, scored by models.evaluate in the same feature space).
# The DCGAN's is against pytorch/examples' cpp/dcgan as written (0.21 measured; issue 25's aim 0.3).
CLAIMED_RATIO = {"dcgan": 0.3, "vae": 0.5}


@pytest.mark.parametrize("name", sorted(CLAIMED_RATIO))
def test_shipped_generators_beat_the_standard_recipe_as_claimed(name):
    baseline = json.loads((DOCS / "baselines" / f"{name}.json").read_text())
    assert baseline["recipe"] == baselines.RECIPES[baseline["baseline"]].recipe  # the recipe in the code
    _, card = load_checkpoint(WEIGHTS / name)
    assert baseline["metrics"]["frechet_distance_test_vs_train"] == card["metrics"]["frechet_distance_test_vs_train"]
    assert card["metrics"]["frechet_distance"] <= CLAIMED_RATIO[name] * baseline["metrics"]["frechet_distance"]
    assert card["metrics"]["classes_found"] == 10
    assert card["metrics"]["class_entropy_nats"] >= 2.25


@pytest.mark.parametrize("name", ["pixelcnn", "pixelrnn"])
def test_shipped_explicit_densities_beat_the_standard_pixelcnn(name):
    """docs/quality.md's claim for the explicit densities: lower exact test bits/dim than
    jzbontar/pixelcnn-pytorch (models.baselines, scored by models.evaluate on the same test split)."""
    baseline = json.loads((DOCS / "baselines" / "pixelcnn.json").read_text())
    _, card = load_checkpoint(WEIGHTS / name)
    assert baseline["recipe"] == baselines.BaselinePixelCNN.recipe and baseline["samples"] == 0
    assert card["metrics"]["test_bits_per_dim"] < baseline["metrics"]["test_bits_per_dim"]


def test_the_vae_prior_does_not_loosen_its_bound():
    """The mixture prior is for the samples; the test ELBO under it may not be worse than under
    N(0, I) by more than 0.05 bits/dim (fitted to the aggregate posterior, it is tighter)."""
    _, card = load_checkpoint(WEIGHTS / "vae")
    metrics = card["metrics"]
    assert card["config"]["prior_components"] > 0
    assert metrics["test_bits_per_dim"] <= metrics["standard_prior_test_bits_per_dim"] + 0.05


def test_the_explicit_densities_meet_their_likelihood_floors():
    """Issue 24's floors: the PixelCNN at most 2.85 bits/dim exact on the test split, the PixelRNN
    3.0, both with samples of all 10 classes, the PixelCNN's class entropy at least 2.2 nats."""
    _, rnn = load_checkpoint(WEIGHTS / "pixelrnn")
    _, cnn = load_checkpoint(WEIGHTS / "pixelcnn")
    assert cnn["metrics"]["test_bits_per_dim"] <= 2.85 and rnn["metrics"]["test_bits_per_dim"] <= 3.0
    assert cnn["metrics"]["classes_found"] == rnn["metrics"]["classes_found"] == 10
    assert cnn["metrics"]["class_entropy_nats"] >= 2.2
