"""Tiny real training runs on a slice of Fashion-MNIST, through the training module's CLI entry."""

import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from models.evaluation import baselines, evaluate, metrics
from models.training import command as train
from models.training.trainers import GANTrainer
from models.checkpoint import CheckpointError, load_checkpoint, read_card
from models.data import load_dataset, to_float

TINY = {
    "pixelcnn": ["--set", "channels=16", "n_layers=3", "kernel_size=5", "head_channels=32", "n_classes=10"],
    "vae": ["--set", "latent_dim=8", "width=8", "hidden=64"],
    "dcgan": ["--set", "latent_dim=16", "generator_width=16", "discriminator_width=16"],
    "classifier": ["--set", "width=8", "feature_dim=32"],
}


def run(family, tmp_path, *extra):
    out, state = tmp_path / family, tmp_path / "runs" / family
    train.main([family, "--limit", "512", "--batch-size", "32", "--out", str(out), "--state-dir", str(state),
                "--quiet", "--threads", "1", "--save-minutes", "100", *TINY[family], *extra])
    return out


@pytest.mark.parametrize("family, precision", [("pixelcnn", "float32"), ("vae", "float32"), ("classifier", "float32"),
                                               ("pixelcnn", "bfloat16")])
def test_training_lowers_the_loss(family, precision, tmp_path):
    out = run(family, tmp_path, "--epochs", "3", "--lr", "3e-3", "--precision", precision)
    card = read_card(out)
    assert card["training"]["precision"] == precision
    # bfloat16 is the forward passes' arithmetic only: what is saved is float32
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values() if t.is_floating_point()} == {torch.float32}
    history = card["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < 0.97 * history[0]["loss"], history
    model, card = load_checkpoint(out)
    assert card["training"]["steps"] == 3 * 16 and card["training"]["train_images"] == 512
    assert (out / "samples.png").exists() or family == "classifier"


@pytest.mark.parametrize("game", [[], ["--gan-loss", "hinge", "--precision", "bfloat16", "--set", "latent_dim=16",
                                       "generator_width=16", "discriminator_width=16", "discriminator_norm=spectral"]])
def test_dcgan_training_moves_samples_towards_the_data(tmp_path, game):
    data = to_float(load_dataset("fashion-mnist", "train", limit=512).images)
    untrained = run("dcgan", tmp_path, "--max-steps", "1", *game)
    before, _ = load_checkpoint(untrained)
    gap_before = (before.sample_for_seeds(range(256)).mean(0) - data.mean(0)).abs().mean()
    trained = run("dcgan", tmp_path, "--epochs", "4", "--resume", "--ema", "0.9", *game)
    after, card = load_checkpoint(trained)
    gap_after = (after.sample_for_seeds(range(256)).mean(0) - data.mean(0)).abs().mean()
    assert gap_after < 0.6 * gap_before, (float(gap_before), float(gap_after))
    assert card["training"]["epochs"] == 4


def test_a_class_conditional_dcgan_counts_its_classes_and_declares_their_latents(tmp_path):
    out = run("dcgan", tmp_path, "n_classes=dataset", "class_dim=4", "--max-steps", "3")  # two more --set items
    model, card = load_checkpoint(out)
    labels = load_dataset("fashion-mnist", "train", limit=512).labels
    assert model.class_prior.tolist() == pytest.approx((torch.bincount(labels, minlength=10) / 512).tolist())
    classifier = run("classifier", tmp_path, "--max-steps", "2")
    evaluate.main([str(out), "--classifier", str(classifier), "--limit", "200", "--samples", "40", "--quiet",
                   "--threads", "1"])
    latents = read_card(out)["class_latents"]
    assert list(latents) == card["classes"]
    for name, code in zip(card["classes"], model.class_codes()):
        assert latents[name]["mean"] == pytest.approx([0.0] * 12 + code.tolist(), abs=1e-5)
        assert latents[name]["std"] == [1.0] * 12 + [0.0] * 4


def assert_same(a, b, where: str = "state") -> None:
    """Two training states (nested dicts and lists of tensors and numbers) hold equal values."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("family, steps", [("vae", ["--limit", "256", "--set", *TINY["vae"][1:], "prior_components=0"]),
                                           ("dcgan", ["--limit", "128"])])
def test_resume_continues_where_it_stopped(family, steps, tmp_path, monkeypatch):
    """Stopped after an epoch and resumed for a second, a run ends as the same run uninterrupted:
    the same weights, optimiser and averaged weights, counters and noise (a resume that loaded
    nothing would start the second epoch from fresh weights and a fresh optimiser). No mixture
    prior: one is fitted at the end of each run, so the one stopped would differ by design. The
    GAN's export re-estimates batchnorm on 2 batches, not 50: seconds a save, and not what is tested."""
    monkeypatch.setattr(GANTrainer, "export", functools.partialmethod(GANTrainer.export, batches=2))
    whole = run(family, tmp_path / "whole", "--epochs", "2", *steps)
    run(family, tmp_path / "stopped", "--epochs", "1", *steps)
    resumed = run(family, tmp_path / "stopped", "--epochs", "2", "--resume", *steps)
    (whole_model, whole_card), (model, card) = load_checkpoint(whole), load_checkpoint(resumed)
    assert_same(whole_model.state_dict(), model.state_dict(), "weights")
    assert card["training"]["steps"] == whole_card["training"]["steps"] > card["training"]["steps"] / 2
    assert [h["epoch"] for h in card["training"]["history"]] == [1, 2]
    assert card["training"]["history"] == whole_card["training"]["history"]
    assert "--resume" in card["training"]["command"]
    states = [torch.load(path / "runs" / family / "state.pt", weights_only=True) for path in (tmp_path / "whole",
                                                                                           tmp_path / "stopped")]
    assert_same(states[0]["trainer"], states[1]["trainer"], "trainer")  # the model, optimiser(s), EMA
    assert_same(states[0]["noise"], states[1]["noise"], "noise")
    for key in ("epoch", "batch", "step", "history"):
        assert states[0]["progress"][key] == states[1]["progress"][key], key


def test_frechet_distance_matches_the_closed_form():
    torch.manual_seed(0)
    a = torch.randn(20000, 4, dtype=torch.double)
    b = torch.randn(20000, 4, dtype=torch.double) * 2 + 1
    # Isotropic Gaussians: |mu|^2 + 4 * (1 + 4 - 2 * 2) = 4 + 4 = 8.
    assert abs(metrics.frechet_distance(a, b) - 8.0) < 0.3
    assert abs(metrics.frechet_distance(a, a)) < 1e-6


def test_nearest_train_ratio_tells_copies_from_new_images():
    torch.manual_seed(0)
    train, test = torch.rand(500, 1, 8, 8), torch.rand(100, 1, 8, 8)
    copies = train[:100] + 0.01 * torch.randn(100, 1, 8, 8)
    assert evaluate.nearest_train_ratio(copies, test, train) < 0.1
    assert evaluate.nearest_train_ratio(torch.rand(100, 1, 8, 8), test, train) == pytest.approx(1, abs=0.15)


def test_evaluate_writes_metrics_and_class_latents(tmp_path, capsys):
    classifier = run("classifier", tmp_path, "--epochs", "1")
    vae = run("vae", tmp_path, "--epochs", "1")
    pixelcnn = run("pixelcnn", tmp_path, "--max-steps", "2")
    evaluate.main([str(vae), str(pixelcnn), str(classifier), "--classifier", str(classifier),
                   "--limit", "200", "--samples", "40", "--quiet", "--threads", "1"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"checkpoint"' in line]
    assert [p["checkpoint"] for p in printed] == [str(vae), str(pixelcnn), str(classifier)]
    vae_card, pixelcnn_card = read_card(vae), read_card(pixelcnn)
    assert 0 < vae_card["metrics"]["test_bits_per_dim"] < 9
    assert pixelcnn_card["metrics"]["test_bits_per_dim"] > 0
    for card in (vae_card, pixelcnn_card):
        m = card["metrics"]
        assert m["frechet_distance"] > m["frechet_distance_test_vs_train"] >= 0
        assert m["frechet_distance_to_train"] > m["frechet_distance_train_halves"] >= 0 and m["nearest_train_ratio"] > 0
        assert 0 <= m["class_entropy_nats"] <= m["class_entropy_max_nats"]
    completion = pixelcnn_card["metrics"]
    assert 0 <= completion["completion_class_accuracy"] <= 1 and 0 <= completion["completion_posterior_accuracy"] <= 1
    latents = vae_card["class_latents"]
    assert set(latents) <= set(vae_card["classes"]) and len(latents) >= 5
    assert all(len(v["mean"]) == 8 for v in latents.values())
    assert 0 <= read_card(classifier)["metrics"]["test_accuracy"] <= 1
    # Both splits' feature statistics ship beside the classifier, for distances without the data.
    test_stats, train_stats = (load_file(str(classifier / f)) for f in (evaluate.TEST_FEATURES_FILE,
                                                                       evaluate.TRAIN_FEATURES_FILE))
    assert test_stats["covariance"].shape == train_stats["covariance"].shape
    assert not torch.equal(test_stats["mean"], train_stats["mean"])


def test_init_from_a_checkpoint_carries_its_weights_and_record_over(tmp_path):
    first = run("vae", tmp_path, "--epochs", "1")
    out, state = tmp_path / "continued", tmp_path / "runs" / "continued"
    train.main(["vae", "--limit", "512", "--batch-size", "32", "--out", str(out), "--state-dir", str(state),
                "--quiet", "--threads", "1", "--init-from", str(first), "--epochs", "2"])
    card = read_card(out)
    assert card["config"]["latent_dim"] == 8, "the source checkpoint's config, not the preset's"
    assert card["training"]["steps"] == 32 and [h["epoch"] for h in card["training"]["history"]] == [1, 2]


def test_init_from_refuses_a_config_that_changes_trained_weights(tmp_path):
    first = run("vae", tmp_path, "--epochs", "1")
    with pytest.raises(SystemExit, match=r"^error: the new config changes the shape of trained weights: "
                                         r"size mismatch for [^\n]*$"):  # one line, not torch's traceback
        train.main(["vae", "--limit", "512", "--batch-size", "32", "--out", str(tmp_path / "x"), "--quiet",
                    "--state-dir", str(tmp_path / "runs" / "x"), "--init-from", str(first), "--epochs", "2",
                    "--set", "latent_dim=3"])


@pytest.mark.parametrize("budget, steps", [(["--max-steps", "3"], 3), (["--minutes", "1e-9"], 1)])
def test_a_run_ended_by_its_budget_still_fits_the_mixture_prior(tmp_path, budget, steps):
    """--max-steps or --minutes ends the run before its epochs: the prior is fitted and chosen all
    the same, not shipped as initialised (here, so little trained, N(0, I) is kept: the mixtures
    fitted to its codes do worse on held-out images). (A step costs more CPU time than 1e-9
    minutes: one step.)"""
    out = run("vae", tmp_path, "--epochs", "5", *budget, "--set", "prior_components=3")
    model, card = load_checkpoint(out)
    assert card["training"]["steps"] == steps and "budget_time_s" in card["training"]
    record = card["training"]["after_training"]
    scores = record["held_out_mean_log_prior"]
    assert set(scores) == {"N(0, I)", "mixture of 1", "mixture of 3"} and record["held_out_images"] == 51
    assert record["prior"] == max(scores, key=scores.get) == "N(0, I)"
    assert model.prior is None and card["config"]["prior_components"] == 0


def test_a_mixture_prior_is_fitted_to_a_trained_vae_after_training(tmp_path):
    """--set adds the prior to a trained VAE; with its epochs done, the loop only fits the mixtures
    to the codes (EM), keeps the one that does best on held-out images (here a single Gaussian,
    which beats N(0, I) there), and every trained weight comes out untouched."""
    first = run("vae", tmp_path, "--epochs", "1", "--set", "prior_components=0")  # the preset has one
    out, state = tmp_path / "mixture", tmp_path / "runs" / "mixture"
    train.main(["vae", "--limit", "512", "--batch-size", "32", "--out", str(out), "--state-dir", str(state),
                "--quiet", "--threads", "1", "--init-from", str(first), "--epochs", "1",
                "--set", "prior_components=3"])
    before, _ = load_checkpoint(first)
    after, card = load_checkpoint(out)
    record = card["training"]["after_training"]
    assert record["prior"] == "mixture of 1" and record["configured_components"] == 3
    assert card["config"]["prior_components"] == 1 and card["training"]["epochs"] == 1
    for name, tensor in before.state_dict().items():
        assert torch.equal(tensor, after.state_dict()[name]), name
    # EM's fixed point: the mixture's mean is the mean of the codes it was fitted to, one posterior
    # draw per training image not held out (seed 0), and its weights sum to one.
    images = load_dataset("fashion-mnist", "train", limit=512).images
    with torch.no_grad():
        codes, held_out = after.prior_codes(images)
        assert len(codes) == 461 and len(held_out) == 51 * 8
        weights = after.prior.log_weights.exp()
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert torch.allclose((weights[:, None] * after.prior.means).sum(0), codes.mean(0), atol=1e-4)
    # Prior draws are the mixture's, seeded per seed; temperature 0 gives the components' means.
    draws = after.latents_for_seeds(range(5))
    assert torch.equal(draws[2:3], after.latents_for_seeds([2]))
    at_zero = after.latents_for_seeds(range(20), temperature=0.0)
    assert all(any(torch.allclose(z, m) for m in after.prior.means) for z in at_zero)


def test_baseline_recipes_write_samples_that_evaluate_scores(tmp_path):
    classifier = run("classifier", tmp_path, "--epochs", "1")
    for recipe in ("dcgan", "vae"):
        out = tmp_path / "baselines" / recipe
        record = baselines.train_baseline(recipe, minutes=0.02, out=out, n_samples=100, limit=256, quiet=True)
        assert record["steps"] >= 1 and record["budget_minutes"] == 0.02
        samples = load_file(str(out / baselines.SAMPLES_FILE))["samples"]
        assert samples.shape == (100, 1, 28, 28) and samples.dtype == torch.uint8
        metrics = evaluate.evaluate(out, classifier, limit=200)
        assert metrics["frechet_distance"] > metrics["frechet_distance_test_vs_train"] >= 0
        assert json.loads((out / baselines.BASELINE_FILE).read_text())["metrics"] == metrics


def test_the_pixelcnn_baseline_is_scored_by_its_test_likelihood(tmp_path):
    """An explicit density writes its tensors, not samples; evaluation rebuilds the recipe from
    code, checks the file's sha256, and scores its exact test bits/dim."""
    out = tmp_path / "baselines" / "pixelcnn"
    record = baselines.train_baseline("pixelcnn", minutes=0.02, out=out, limit=256, quiet=True)
    assert record["steps"] >= 1 and record["samples"] == 0 and not (out / baselines.SAMPLES_FILE).exists()
    metrics = evaluate.evaluate(out, limit=200, quiet=True)
    assert math.isfinite(metrics["test_bits_per_dim"]) and metrics["test_bits_per_dim"] > 0
    assert metrics["test_nll_nats"] == pytest.approx(metrics["test_bits_per_dim"] * 784 * math.log(2), rel=1e-3)
    assert json.loads((out / baselines.BASELINE_FILE).read_text())["metrics"] == metrics
    with pytest.raises(ValueError, match="likelihood"):
        evaluate.samples_of(out)
    weights = out / baselines.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="sha256"):
        evaluate.evaluate(out, limit=200, quiet=True)


def test_the_masked_convolution_sees_only_earlier_pixels():
    """Changing one pixel changes the baseline's logits at later pixels only (mask A then B)."""
    model = baselines.BaselinePixelCNN().eval()
    x = torch.rand(1, 1, 28, 28)
    changed = x.clone()
    changed[0, 0, 10, 12] = 1 - changed[0, 0, 10, 12]
    with torch.no_grad():
        moved = (model.net(x) - model.net(changed)).abs().sum(1)[0] > 0
    position = torch.arange(28 * 28).view(28, 28)
    assert not moved[position <= 10 * 28 + 12].any() and moved.any()
