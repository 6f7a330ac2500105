"""Training and evaluation that do what they say on a small folder (issue 38, point 4): a budget
ends the run, one progress bar for it, small images upscaled on request, the VAE's fitted prior
kept only where it beats N(0, I) on held-out images, metrics as CSV and TensorBoard events, and
evaluation that sizes its samples to the data and warns of a test split too small for its figures."""

import contextlib
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models.checkpoint import build_model, load_checkpoint, read_card
from models.data import DatasetError, dataset_of_card, load_dataset
from models.evaluation import evaluate, small_data
from models.families import mixture
from models.training import budget
from models.training import command as train
from models.training.metrics_log import METRICS_FILE, TENSORBOARD_DIR
from tests.models.test_data_folder import make_folder

TINY_VAE = {"latent_dim": 4, "width": 8, "hidden": 32, "prior_components": 16}
BUDGET_MINUTES = 0.01  # 0.6 s of CPU per thread: a tiny VAE takes dozens of steps in it
SMALL = {"circles/tiny.png": ((16, 16), (200, 30, 30)), "squares/short.png": ((40, 20), (30, 30, 200))}


def small_folder(root):
    """make_folder's 40 pictures, and two solid ones smaller than 28 px on their shorter side."""
    folder = make_folder(root / "images")
    for name, (size, colour) in SMALL.items():
        Image.new("RGB", size, colour).save(folder / name)
    return folder


def folder_args(folder, root, name, *extra):
    """A run on the folder at 28 px with --upscale, the preset a file whose epochs are 2 (2 steps each)."""
    preset = root / "preset.json"
    preset.write_text(json.dumps({"model": TINY_VAE, "train": {"epochs": 2, "batch_size": 16, "lr_decay": 0.9}}))
    return ["vae", "--preset", str(preset), "--dataset", "folder", "--data-dir", str(folder), "--image-size", "28",
            "--upscale", "--cache-dir", str(root / "cache"), "--out", str(root / name),
            "--state-dir", str(root / "runs" / name), "--threads", "1", *extra]


class CountedBar(budget.tqdm):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        CountedBar.made.append(self)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A tiny VAE trained on the small folder for BUDGET_MINUTES, not quiet (its bars counted):
    (its folder, the lines it printed on stdout, the bars it made, the data root)."""
    root = tmp_path_factory.mktemp("small")
    folder = small_folder(root)
    printed = io.StringIO()
    CountedBar.made = []
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(budget, "tqdm", CountedBar)
        train.main(folder_args(folder, root, "vae", "--minutes", str(BUDGET_MINUTES)))
    lines = [json.loads(line) for line in printed.getvalue().splitlines() if line.startswith("{")]
    return root / "vae", lines, list(CountedBar.made), root


def test_a_budget_ends_the_run_not_the_presets_epochs_and_says_what_it_counts(budget_run):
    out, lines, bars, _ = budget_run
    training = read_card(out)["training"]
    assert training["epochs"] > 2 and training["steps"] > 4, "stopped by the preset's 2 epochs"
    assert training["budget_time_s"] >= BUDGET_MINUTES * 60
    [start] = [line for line in lines if line["event"] == "budget"]
    assert start["epochs"] is None and start["minutes"] == BUDGET_MINUTES and start["steps_per_epoch"] == 2
    assert "CPU time of the training loop per thread (1 thread)" in start["minutes_count"]
    assert "preset's 2 epochs" in start["epochs_note"]
    # One bar for the run, ended at 100 % (not one per epoch); the epochs' JSON lines all there.
    assert len(bars) == 1 and bars[0].n == pytest.approx(budget.BAR_TOTAL)
    assert [line["epoch"] for line in lines if line["event"] == "epoch"] == list(range(1, math.floor(training["epochs"]) + 1))


def test_epochs_given_with_a_budget_still_cap_the_run(tmp_path):
    folder = small_folder(tmp_path)
    train.main(folder_args(folder, tmp_path, "capped", "--minutes", "10", "--epochs", "2", "--quiet"))
    assert read_card(tmp_path / "capped")["training"]["steps"] == 4


def test_the_fitted_prior_is_the_held_out_best_and_the_card_says_which(budget_run):
    out, lines, _, _ = budget_run
    model, card = load_checkpoint(out)
    record = card["training"]["after_training"]
    scores = record["held_out_mean_log_prior"]
    assert record["configured_components"] == 16 and record["held_out_images"] == 10
    assert set(scores) == {"N(0, I)", "mixture of 1", "mixture of 4", "mixture of 16"}
    assert scores[record["prior"]] == max(scores.values())
    kept = card["config"]["prior_components"]
    assert record["prior"] == ("N(0, I)" if kept == 0 else f"mixture of {kept}")
    assert (model.prior is None) if kept == 0 else len(model.prior.means) == kept
    assert [line for line in lines if line["event"] == "fitted after training"][0]["prior"] == record["prior"]


def test_choose_prior_keeps_n01_unless_a_mixture_beats_it_on_held_out_codes():
    torch.manual_seed(0)
    standard, _ = mixture.choose_prior(torch.randn(30, 8), torch.randn(400, 8), most=16, quiet=True)
    assert standard is None, "a mixture fitted to 30 codes of N(0, I) in 8-d cannot beat it on others"
    centres = torch.tensor([[3.0] * 8, [-3.0] * 8])

    def clustered(n):
        return centres[torch.arange(n) % 2] + 0.3 * torch.randn(n, 8)

    kept, scores = mixture.choose_prior(clustered(400), clustered(200), most=16, quiet=True)
    assert kept is not None and len(kept.means) >= 2
    assert scores[f"mixture of {len(kept.means)}"] == max(scores.values()) > scores["N(0, I)"] + 10


def test_a_vae_on_too_few_images_keeps_n01_and_says_why():
    model = build_model("vae", {**TINY_VAE, "image_shape": [1, 28, 28]})
    record = model.fit_after_training(torch.zeros(12, 1, 28, 28, dtype=torch.uint8), torch.zeros(12), quiet=True)
    assert record["prior"] == "N(0, I)" and "too few" in record["why"]
    assert model.prior is None and model.config.prior_components == 0


def test_small_images_are_refused_naming_the_flag_or_upscaled_with_it(tmp_path, capsys):
    folder = small_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"2 of the 42 images .* smaller than 28 px .*pass --upscale to enlarge"):
        load_dataset("folder", "train", folder, image_size=28, cache_dir=tmp_path / "cache")
    splits = [load_dataset("folder", split, folder, image_size=28, cache_dir=tmp_path / "cache", upscale=True)
              for split in ("train", "test")]
    [logged] = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"images upscaled"' in line]
    assert logged["count"] == 2 and "circles/tiny.png, 16x16" in logged["message"]
    for name, (_, colour) in SMALL.items():
        [(split, index)] = [(s, s.files.index(name)) for s in splits if name in s.files]
        assert split.images[index].shape == (3, 28, 28)
        assert (split.images[index].permute(1, 2, 0) == torch.tensor(colour, dtype=torch.uint8)).all()
    # A card that records the flag reloads the same data (evaluation's way in).
    card = {"dataset": "folder", "data_dir": str(folder), "image_shape": [3, 28, 28], "upscale": True}
    assert dataset_of_card(card, "test", cache_dir=tmp_path / "cache").files == splits[1].files


def test_metrics_go_to_csv_and_tensorboard_and_a_resume_continues_them(tmp_path):
    out, state = tmp_path / "vae", tmp_path / "runs" / "vae"

    def run(*extra):
        train.main(["vae", "--limit", "128", "--batch-size", "32", "--out", str(out), "--state-dir", str(state),
                    "--quiet", "--threads", "1", "--save-minutes", "100", "--set", "latent_dim=4", "width=8",
                    "hidden=32", "prior_components=0", *extra])

    run("--epochs", "2")
    with open(state / METRICS_FILE, "a") as f:  # logged after the last save, by a run killed since
        f.write("99,9.0,1,1,0.001,1,1,1\n")
    run("--epochs", "3", "--resume")
    with open(state / METRICS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [4, 8, 12] and [float(row["epoch"]) for row in rows] == [1, 2, 3]
    assert {"wall_time_s", "budget_time_s", "lr", "loss", "bits_per_dim", "kl"} <= set(rows[0])
    history = read_card(out)["training"]["history"]
    assert [float(row["loss"]) for row in rows] == pytest.approx([h["loss"] for h in history], abs=1e-4)
    [run_folder] = (state / TENSORBOARD_DIR).iterdir()
    assert run_folder.name == read_card(out)["training"]["run"]
    events = EventAccumulator(str(run_folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [4, 8, 12]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)
    samples = events.Images("samples")
    assert [e.step for e in samples] == [8, 12], "the sample grid of each save"
    grid = Image.open(io.BytesIO(samples[-1].encoded_image_string)).convert("RGB")
    assert np.array_equal(np.asarray(grid), np.asarray(Image.open(out / "samples.png").convert("RGB")))


def test_evaluation_sizes_its_samples_to_the_data_and_warns_of_a_small_test_split(budget_run, capsys):
    out, _, _, root = budget_run
    classifier = root / "classifier"
    train.main(["classifier", "--dataset", "folder", "--data-dir", str(root / "images"), "--image-size", "28",
                "--upscale", "--cache-dir", str(root / "cache"), "--out", str(classifier), "--state-dir",
                str(root / "runs" / "classifier"), "--batch-size", "16", "--max-steps", "2", "--quiet", "--threads", "1",
                "--set", "width=8", "feature_dim=16"])
    capsys.readouterr()
    evaluate.main([str(out), "--classifier", str(classifier), "--cache-dir", str(root / "cache"), "--quiet",
                   "--threads", "1"])
    card = read_card(out)
    metrics, train_images = card["metrics"], card["training"]["train_images"]
    test_images = len(dataset_of_card(card, "test", cache_dir=root / "cache"))
    assert metrics["frechet_samples"] == small_data.SAMPLES_PER_TRAIN_IMAGE * train_images < 10000
    assert "4 per training image" in metrics["frechet_samples_why"]
    assert metrics["small_test_split_warning"].startswith(f"{test_images} test images, fewer than the 17")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert {"samples sized to the data", "warning"} <= {e["event"] for e in events}
    [warning] = [e for e in events if e["event"] == "warning"]
    assert warning["threshold"] == 17 and warning["test_images"] == test_images


def test_the_small_split_threshold_is_one_more_image_than_feature_dimensions():
    assert small_data.small_split_warning(16, 500, 16) is not None
    assert small_data.small_split_warning(17, 500, 16) is None
    assert small_data.sized_sample_count(10000, 5000) == (10000, None)


def test_a_budgeted_run_spreads_the_presets_exponential_decay_over_its_budget():
    """Hundreds of small epochs must not decay the rate to nothing: where the budget ends the run,
    the rate at its end is the one the preset's epochs would have ended at."""
    args = train.parse_args(["vae", "--minutes", "2", "--lr", "0.01", "--lr-decay", "0.5"])
    assert args.epochs is None and args.preset_epochs == 20
    progress = {"epoch": 300, "batch": 0, "step": 600, "wall_time_s": 90.0, "budget_time_s": 60.0}
    assert train.learning_rate(args, progress, batches_per_epoch=2) == pytest.approx(0.01 * 0.5 ** 10)
    capped = train.parse_args(["vae", "--minutes", "2", "--epochs", "3", "--lr", "0.01", "--lr-decay", "0.5"])
    assert capped.epochs == 3
    assert train.learning_rate(capped, {**progress, "epoch": 2}, batches_per_epoch=2) == pytest.approx(0.01 * 0.5 ** 2)
