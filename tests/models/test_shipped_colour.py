"""The colour models we ship (Noto emoji, 32x32 RGB): documented, and measured again from the
weights alone. The emoji themselves are not needed: the emoji classifier ships the test and train
splits' feature statistics, so the Frechet distances are recomputed without the data."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.evaluation import baselines, evaluate, metrics
from models.checkpoint import load_checkpoint

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
DOCS = Path(__file__).resolve().parents[2] / "docs"
CLASSIFIER = "emoji-classifier"
# served name -> family
COLOUR = {"emoji-vae": "vae", "emoji-dcgan": "dcgan"}
# docs/quality.md's claim, issue 26's floor: at most half the baseline recipe's distance, to the
# test split (190 images) and to the train split (3,591: the reference whose covariance can be
# estimated in these 128 dimensions).
CLAIMED_RATIO = 0.5
# docs/quality.md's figure: the share of class-mean latents that decode to their class. The VAE's
# mostly decode to people, the category of 60 % of the images (its class latents are encoder
# means, averages over very different pictures). The DCGAN is class-conditional: its class latents
# are its class embeddings, and 8 of its 9 decode to their class.
CLASS_MEANS_DECODING = {"emoji-vae": 0.2, "emoji-dcgan": 0.85}


@pytest.fixture(scope="module")
def classifier():
    model, card = load_checkpoint(WEIGHTS / CLASSIFIER)
    return model, card


@pytest.mark.parametrize("name", [*COLOUR, CLASSIFIER])
def test_card_names_the_data_its_licence_and_how_to_fetch_it(name):
    model, card = load_checkpoint(WEIGHTS / name)  # verifies the sha256 and every tensor
    assert card["dataset"] == "folder" and card["data_dir"] == "~/.cache/genserve/emoji"
    assert "Apache License 2.0" in card["data_source"] and "python -m models.emoji" in card["data_source"]
    assert card["image_shape"] == [3, 32, 32] and card["background"] == "white"
    assert len(card["classes"]) == 9 and card["training"]["train_images"] > 3000
    assert (WEIGHTS / name / "model.safetensors").stat().st_size < 20 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_sample_quality_recomputed_from_the_weights_matches_the_card(name, classifier):
    model, card = load_checkpoint(WEIGHTS / name)
    assert card["family"] == COLOUR[name] and card["classifier"] == CLASSIFIER
    test_statistics = load_file(str(WEIGHTS / CLASSIFIER / evaluate.TEST_FEATURES_FILE))
    samples = evaluate.draw_samples(model, evaluate.QUICK_SAMPLES, quiet=True)
    assert samples.shape[1:] == (3, 32, 32)
    features, probs = metrics.features_of(classifier[0], samples)
    recomputed = metrics.frechet_from_statistics(metrics.feature_statistics(features), test_statistics)
    assert math.isclose(recomputed, card["metrics"][f"frechet_distance_{evaluate.QUICK_SAMPLES}"], rel_tol=0.02)
    # To the train split, 1,000 samples already meet the claim that the card makes for 10,000.
    train_statistics = load_file(str(WEIGHTS / CLASSIFIER / evaluate.TRAIN_FEATURES_FILE))
    to_train = metrics.frechet_from_statistics(metrics.feature_statistics(features), train_statistics)
    baseline = json.loads((DOCS / "baselines" / f"{name}.json").read_text())
    assert to_train <= CLAIMED_RATIO * baseline["metrics"]["frechet_distance_to_train"]
    assert len(set(probs.argmax(1).tolist())) == len(card["classes"]), "a class is missing from 1,000 samples"


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_shipped_colour_models_beat_their_baseline_recipe(name):
    baseline = json.loads((DOCS / "baselines" / f"{name}.json").read_text())
    assert baseline["recipe"] == baselines.RECIPES[baseline["baseline"]].recipe
    assert baseline["data"]["image_shape"] == [3, 32, 32]
    _, card = load_checkpoint(WEIGHTS / name)
    assert baseline["metrics"]["frechet_distance_test_vs_train"] == card["metrics"]["frechet_distance_test_vs_train"]
    assert baseline["metrics"]["frechet_distance_train_halves"] == card["metrics"]["frechet_distance_train_halves"]
    for reference in ("frechet_distance", "frechet_distance_to_train"):
        assert card["metrics"][reference] <= CLAIMED_RATIO * baseline["metrics"][reference], reference
    # Not bought by copying: the samples lie no nearer the training images than held-out images do.
    assert card["metrics"]["nearest_train_ratio"] > 1
    assert card["metrics"]["classes_found"] == len(card["classes"])


@pytest.mark.parametrize("name", sorted(COLOUR))
@torch.no_grad()
def test_class_means_decode_to_their_class(name, classifier):
    """What `{"class": ...}` latents and A - B + C arithmetic stand on, recomputed."""
    model, card = load_checkpoint(WEIGHTS / name)
    classes = card["classes"]
    assert set(card["class_latents"]) == set(classes), "every class can be asked for by name"
    means = torch.stack([torch.tensor(card["class_latents"][c]["mean"]) for c in classes])
    _, probs = metrics.features_of(classifier[0], model.decode(means))
    share = (probs.argmax(1) == torch.arange(len(classes))).double().mean().item()
    assert share == pytest.approx(card["metrics"]["class_mean_decodes_to_class"], abs=1e-3)
    assert share >= CLASS_MEANS_DECODING[name]
