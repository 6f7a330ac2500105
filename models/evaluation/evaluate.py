"""Evaluate a checkpoint on the test split and write the figures into its card.

    python -m models.evaluate weights/pixelcnn      # test NLL (bits/dim) + sample quality (PixelRNN too)
    python -m models.evaluate weights/vae           # test ELBO (nats, bits/dim) + sample quality
    python -m models.evaluate weights/dcgan         # sample quality + class latents
    python -m models.evaluate weights/classifier    # test accuracy
    python -m models.evaluate runs/baselines/dcgan  # the samples of a `models.baselines` recipe
    python -m models.evaluate weights/mine --classifier weights/mine-classifier   # trained on a folder

The data is the card's: its dataset, and for a folder its path (`--data-dir` if it has moved),
size and channels; its classifier is trained on the same folder (`models.train classifier`).

Sample quality is measured in the feature space of the small classifier in `weights/classifier`
(trained by `python -m models.train classifier`): the Frechet distance between generated samples
and the test images, the same distance between the test and the train images (the floor a
perfect generator would reach), the samples' distance to the train images (the reference a small
test split cannot be) with a check that they do not copy them, and the classes the classifier
gives the samples. What is
measured follows what the family declares: the likelihood where it has one (exact, or the bound),
completions of test images from their top half for a class-conditional model that completes
(do they keep their class?), and each class's mean latent in the card for latent models, for
`{"class": ...}` latents.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn
from tqdm import tqdm

from models.inference import prepare
from models.evaluation.metrics import class_report, feature_statistics, features_of, frechet_distance
from models.evaluation.baselines import BASELINE_FILE, RECIPES, SAMPLES_FILE, WEIGHTS_FILE
from models.evaluation.small_data import sized_sample_count, small_split_warning
from models.checkpoint import CheckpointError, load_checkpoint, update_card, verify_sha256, write_files
from models.data import DatasetError, ImageDataset, dataset_of_card, load_dataset, to_float

DEFAULT_CLASSIFIER = Path("weights/classifier")
QUICK_SAMPLES = 1000
CHECK_SAMPLES = 200  # the first samples' distance, which the shipped-weights tests recompute
TEST_FEATURES_FILE = "test_features.safetensors"
TRAIN_FEATURES_FILE = "train_features.safetensors"
SAMPLE_BATCH = 500  # seeds per batch: the first 1,000 samples need only two


def batches(images: torch.Tensor, batch_size: int, desc: str, quiet: bool):
    for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, disable=quiet, mininterval=5):
        yield to_float(images[start:start + batch_size])


@torch.no_grad()
def generate(model: nn.Module, n: int, batch_size: int, quiet: bool) -> torch.Tensor:
    """The images of seeds 0 .. n-1, as the API draws them (`sample_for_seeds`), in batches."""
    out = []
    for start in tqdm(range(0, n, batch_size), desc="sampling", disable=quiet, mininterval=5):
        out.append(model.sample_for_seeds(range(start, min(start + batch_size, n))).cpu())
    return torch.cat(out)


@torch.no_grad()
def completion_report(model: nn.Module, classifier: nn.Module, test: ImageDataset, n: int, quiet: bool,
                      batch_size: int = 100) -> dict:
    """Complete the bottom half of n test images from their top rows, the class left to the
    model (seeds 0 .. n-1, as the API draws them): how often the classifier gives a completion
    its image's class (a completion that continues what it is shown), and, where the family can
    say it, how often its own class posterior given the top rows does."""
    images, labels = to_float(test.images[:n]), test.labels[:n]
    keep_rows = images.shape[2] // 2
    known = torch.zeros(n, 1, *images.shape[2:], dtype=torch.bool)
    known[:, :, :keep_rows] = True
    device = next(model.parameters()).device
    completions, posterior_hits = [], 0
    for start in tqdm(range(0, n, batch_size), desc="completing", disable=quiet, mininterval=5):
        x, mask = images[start:start + batch_size].to(device), known[start:start + batch_size].to(device)
        noise = tuple(None if part is None else part.to(device)
                      for part in model.completion_noise_for_seeds(range(start, start + len(x))))
        completions.append(model.complete_from_noise(x, mask, noise).cpu())
        posterior = model.class_posterior(x, mask)
        if posterior is not None:
            posterior_hits += int((posterior.argmax(1).cpu() == labels[start:start + batch_size]).sum())
    _, probs = features_of(classifier, torch.cat(completions))
    report = {"completion_class_accuracy": round(float((probs.argmax(1) == labels).double().mean()), 4),
              "completion_setup": f"top {keep_rows} rows of the first {n} test images kept, class not given"}
    if posterior is not None:
        report["completion_posterior_accuracy"] = round(posterior_hits / n, 4)
    return report


def subset(data: ImageDataset, n: int) -> ImageDataset:
    """The first n images of a split (a family whose likelihood costs many passes is scored on them)."""
    return dataclasses.replace(data, images=data.images[:n], labels=data.labels[:n])


@torch.no_grad()
def likelihood(model: nn.Module, test: ImageDataset, batch_size: int, quiet: bool) -> dict:
    """Test NLL in nats per image and bits/dim, as the model declares it: exact, or a bound with
    its KL term (and any other bound the family reports beside it, from the same draws)."""
    device = next(model.parameters()).device
    dims = test.images[0].numel()
    generator = torch.Generator(device=device).manual_seed(0)
    totals: dict[str, float] = {}
    for x in batches(test.images, batch_size, "test likelihood", quiet):
        x = x.to(device)
        terms = {"bound": -model.nll(x)} if model.likelihood == "exact" else model.bound_terms(x, generator)
        for name, values in terms.items():
            totals[name] = totals.get(name, 0.0) + float(values.sum())
    per_image = {name: total / len(test) for name, total in totals.items()}
    bits = {name: round(-value / (dims * math.log(2)), 4) for name, value in per_image.items()}
    scored = {} if len(test) >= 10000 else {"likelihood_test_images": len(test)}
    if model.likelihood == "exact":
        return {"test_nll_nats": round(-per_image["bound"], 3), "test_bits_per_dim": bits["bound"], **scored}
    out = {**scored, "test_elbo_nats": round(per_image["bound"], 3), "test_bits_per_dim": bits["bound"],
           "test_kl_nats": round(per_image["kl"], 3), "bound": model.likelihood_method}
    out.update({f"{name}_test_bits_per_dim": bits[name] for name in per_image if name not in ("bound", "kl")})
    return out


@torch.no_grad()
def class_latents(model: nn.Module, classifier: nn.Module, train: ImageDataset, quiet: bool,
                  n_generated: int = 20000, confidence: float = 0.9, at_least: int = 20) -> dict:
    """Each class's mean and std latent: as the model declares them if its prior knows the
    classes; else the latents of the train images, by the encoder (its means) or the sampler's
    inversion; else from `n_generated` samples that the classifier assigns to the class with high
    confidence (the mean's direction, scaled to the prior's typical norm sqrt(latent_dim)), where a
    rare class with fewer than `at_least` such samples takes the `at_least` it ranks highest."""
    device = next(model.parameters()).device
    declared = model.declared_class_latents()
    if declared is not None:
        return {name: latent_entry(mean, std) for name, (mean, std) in zip(train.classes, declared)}
    from_images = bool({"encoder", "invert"} & set(model.capabilities))
    if from_images:
        to_latent = (lambda x: model.encode(x)[0]) if "encoder" in model.capabilities else model.invert
        mus = torch.cat([to_latent(x.to(device)).cpu() for x in batches(train.images, 500, "encoding", quiet)])
        labels = train.labels
    else:
        z = model.sample_latents(n_generated, torch.Generator().manual_seed(99))
        images = torch.cat([model.decode(z[i:i + 500].to(device)).cpu() for i in range(0, n_generated, 500)])
        _, probs = features_of(classifier, images)
        best, labels = probs.max(1)
        keep = best >= confidence
        mus, labels = z[keep], labels[keep]
    result = {}
    for index, name in enumerate(train.classes):
        members = mus[labels == index]
        if not from_images and len(members) < at_least:
            members = z[probs[:, index].topk(at_least).indices]
        if len(members) < 2:
            continue
        mean = members.mean(0)
        if not from_images:
            # The mean of many N(0, I) draws sits near the origin, where the generator was never
            # trained (its z have norm ~ sqrt(d)); keep the class's direction at the typical radius.
            mean = mean / mean.norm() * math.sqrt(mean.numel())
        result[name] = {**latent_entry(mean, members.std(0)), "count": int(len(members))}
    return result


def latent_entry(mean: torch.Tensor, std: torch.Tensor) -> dict:
    """A class latent as the card keeps it (`class_latents[name]`)."""
    return {"mean": [round(float(v), 5) for v in mean], "std": [round(float(v), 5) for v in std]}


@torch.no_grad()
def class_mean_accuracy(model: nn.Module, classifier: nn.Module, latents: dict, classes: list[str]) -> float:
    """How many class-mean latents decode to an image the classifier gives that class."""
    device = next(model.parameters()).device
    names = [c for c in classes if c in latents]
    z = torch.tensor([latents[c]["mean"] for c in names], device=device)
    _, probs = features_of(classifier, model.decode(z).cpu())
    return sum(int(p.argmax()) == classes.index(c) for p, c in zip(probs, names)) / max(1, len(names))


def sample_quality(samples: torch.Tensor, classifier: nn.Module, classifier_name: str, card: dict,
                   data_dir: str | None, limit: int | None, cache_dir: str | None = None) -> dict:
    """Frechet distance of float samples [N, C, H, W] to the test split of the card's data in the
    classifier's features (with the test-vs-train floor) and to the train split (with its halves'
    floor), whether the samples copy training images, and the classes the classifier gives them."""
    test = dataset_of_card(card, "test", data_dir, limit, cache_dir)
    train = dataset_of_card(card, "train", data_dir, limit, cache_dir)
    test_images, train_images = to_float(test.images), to_float(train.images)
    test_feats, _ = features_of(classifier, test_images)
    train_feats, _ = features_of(classifier, train_images)
    sample_feats, sample_probs = features_of(classifier, samples)
    halves = torch.randperm(train_feats.shape[0], generator=torch.Generator().manual_seed(0)).chunk(2)
    warning = small_split_warning(len(test), len(train), test_feats.shape[1])
    return {
        **({"small_test_split_warning": warning} if warning else {}),
        "frechet_distance": round(frechet_distance(sample_feats, test_feats), 3),
        "frechet_distance_test_vs_train": round(frechet_distance(test_feats, train_feats), 3),
        "frechet_samples": samples.shape[0],
        # The same on the first 1,000 samples only (a larger figure: the estimate is biased
        # upwards at small N).
        f"frechet_distance_{QUICK_SAMPLES}": round(frechet_distance(sample_feats[:QUICK_SAMPLES], test_feats), 3),
        # And on the first 200: a regression check that even a sampler of many passes affords.
        f"frechet_distance_{CHECK_SAMPLES}": round(frechet_distance(sample_feats[:CHECK_SAMPLES], test_feats), 3),
        # Against the train split as well, with that reference's own floor (one half of it against
        # the other): a test split of a few hundred images (a small folder's 5 %) cannot estimate a
        # covariance of this many dimensions, and the error of its estimate becomes most of the
        # distance. The nearest-neighbour ratio checks that a low figure is not bought by copying.
        "frechet_distance_to_train": round(frechet_distance(sample_feats, train_feats), 3),
        "frechet_distance_train_halves": round(frechet_distance(train_feats[halves[0]], train_feats[halves[1]]), 3),
        "nearest_train_ratio": round(nearest_train_ratio(samples, test_images, train_images), 3),
        "frechet_feature_space": f"{classifier_name} penultimate layer ({test_feats.shape[1]} dims)",
        **(class_report(sample_probs, test.classes) if test.classes else {}),
    }


def nearest_train_ratio(samples: torch.Tensor, test_images: torch.Tensor, train_images: torch.Tensor,
                        n: int = QUICK_SAMPLES) -> float:
    """The median pixel distance from a sample to its nearest training image, over the same for
    held-out real images (float [N, C, H, W], the first n of each): about 1 when samples are as new
    to the training set as unseen images are, well below 1 when they copy it."""
    train = train_images.flatten(1)

    def median_nearest(images: torch.Tensor) -> float:
        nearest = [torch.cdist(chunk.flatten(1), train).amin(1) for chunk in images[:n].split(250)]
        return float(torch.cat(nearest).median())

    return median_nearest(samples) / median_nearest(test_images)


def evaluate_baseline(path: Path, classifier_path: Path = DEFAULT_CLASSIFIER, limit: int | None = None,
                      device: str = "cpu", data_dir: str | None = None, quiet: bool = False) -> dict:
    """Score what a `models.baselines` run wrote, into its baseline.json: its samples, or for an
    explicit density its test likelihood (the recipe rebuilt from code, its tensors loaded)."""
    record = json.loads((path / BASELINE_FILE).read_text())
    recipe = RECIPES[record["baseline"]]
    if recipe.likelihood == "exact":
        verify_sha256(path / WEIGHTS_FILE, record["weights_sha256"], f"{BASELINE_FILE}'s")
        model = recipe().to(device)
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=device))  # names and shapes: strict
        test = load_dataset("fashion-mnist", "test", data_dir, limit=limit)
        record["metrics"] = likelihood(model.eval(), test, 100, quiet)
    else:
        samples, card = samples_of(path)
        classifier, _ = load_checkpoint(classifier_path, device)
        record["metrics"] = sample_quality(samples, classifier, classifier_path.name, card, data_dir, limit)
    (path / BASELINE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record["metrics"]


def samples_of(path: Path, n: int | None = None, device: str = "cpu", quiet: bool = False) -> tuple[torch.Tensor, dict]:
    """(float samples, card) of a checkpoint, drawn as evaluation draws them, or of a baseline run
    (its record's "data" in a card's terms; Fashion-MNIST for records written before it)."""
    if (path / BASELINE_FILE).is_file():
        if not (path / SAMPLES_FILE).is_file():
            raise ValueError(f"{path}: this baseline is an explicit density, scored by its likelihood, not by samples")
        data = json.loads((path / BASELINE_FILE).read_text()).get("data", {"dataset": "fashion-mnist"})
        return to_float(load_file(str(path / SAMPLES_FILE))["samples"]), data
    model, card = load_checkpoint(path, device)
    return draw_samples(model, n, quiet), card


def draw_samples(model: nn.Module, n: int | None, quiet: bool) -> torch.Tensor:
    """Evaluation's samples: n (default 10,000; 1,000 where sampling is sequential) from seed 0, in
    passes of 100 where the sampler runs its network many times (the diffusion U-Net: 3.4 ms an
    image at 100, 12.8 at 500, whose activations fall out of cache)."""
    many_passes = model.sequential_sampling or model.sampling_steps() is not None
    return generate(model, n or default_samples(model), batch_size=100 if many_passes else SAMPLE_BATCH, quiet=quiet)


def default_samples(model: nn.Module) -> int:
    return 1000 if model.sequential_sampling else 10000


@torch.inference_mode()
def grid_time(model: nn.Module, n: int = 16, repeats: int = 3) -> dict:
    """The wall time of one n-image grid (seeds 0 .. n-1), best of `repeats` after a warm-up, with
    the current torch threads and in inference mode, as the server's worker runs it: what a user
    of a sampler of many passes waits for, on this machine (the module in the worker's memory format)."""
    prepare(model, channels_last=True)
    model.sample_for_seeds(range(n))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.sample_for_seeds(range(n))
        best = min(best, time.perf_counter() - start)
    return {f"grid_{n}_seconds": round(best, 3), f"grid_{n}_threads": torch.get_num_threads()}


def evaluate(path: Path, classifier_path: Path = DEFAULT_CLASSIFIER, n_samples: int | None = None,
             limit: int | None = None, device: str = "cpu", quiet: bool = False, data_dir: str | None = None,
             keep_likelihood: bool = False, cache_dir: str | None = None) -> dict:
    if (path / BASELINE_FILE).is_file():
        return evaluate_baseline(path, classifier_path, limit, device, data_dir, quiet)
    model, card = load_checkpoint(path, device)
    test = dataset_of_card(card, "test", data_dir, limit, cache_dir, quiet)
    metrics: dict = {}
    if not model.capabilities:  # not a generator: the classifier
        features, probs = features_of(model, to_float(test.images).to(device))
        metrics["test_accuracy"] = round(float((probs.argmax(1) == test.labels).double().mean()), 4)
        # Both splits in its features, shipped beside it: a generator's Frechet distances can be
        # recomputed from the weights alone, where the data is not at hand (the tests, say).
        train = dataset_of_card(card, "train", data_dir, limit, cache_dir, quiet)
        statistics = {TEST_FEATURES_FILE: feature_statistics(features),
                      TRAIN_FEATURES_FILE: feature_statistics(features_of(model, to_float(train.images).to(device))[0])}
        write_files(path, {name: safetensors_bytes(s) for name, s in statistics.items()}, weights_sha256=card["sha256"])
        update_card(path, weights_sha256=card["sha256"], metrics=metrics)
        return metrics
    if "likelihood" in model.capabilities and not keep_likelihood:
        scored = test if model.likelihood_test_images is None else subset(test, model.likelihood_test_images)
        passes = model.likelihood == "exact" or model.sampling_steps() is not None  # a network pass per step
        metrics.update(likelihood(model, scored, 100 if passes else 500, quiet))
    classifier, _ = load_checkpoint(classifier_path, device)
    train = dataset_of_card(card, "train", data_dir, limit, cache_dir, quiet)
    sized_why = None
    if n_samples is None:  # a small folder's model: a few samples per training image, not 10,000
        n_samples, sized_why = sized_sample_count(default_samples(model), len(train))
    samples = draw_samples(model, n_samples, quiet)
    n = samples.shape[0]
    metrics.update(sample_quality(samples, classifier, classifier_path.name, card, data_dir, limit, cache_dir))
    if sized_why:
        metrics["frechet_samples_why"] = sized_why
    # The classifier's folder name (a sibling in weights/): the showcase draws its class pictures with it.
    fields = {"metrics": metrics, "classifier": classifier_path.name}
    if model.sequential_sampling or model.sampling_steps():  # a sampler of many passes: its wait
        metrics.update(grid_time(model))
    if "complete" in model.capabilities and model.class_conditional:
        metrics.update(completion_report(model, classifier, test, min(n, len(test), QUICK_SAMPLES), quiet))
    if model.sampling == "latent" and train.classes:  # for `{"class": ...}` latents and arithmetic
        # From generated samples: twice as many as scored (20,000 for the full 10,000).
        latents = class_latents(model, classifier, train, quiet, n_generated=2 * n)
        metrics["class_mean_decodes_to_class"] = round(class_mean_accuracy(model, classifier, latents, test.classes), 3)
        fields["class_latents"] = latents
    update_card(path, weights_sha256=card["sha256"], **fields)  # onto the card of the weights measured, or refused
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, nargs="+", help="checkpoint folders, e.g. weights/vae")
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--samples", type=int, help="generated samples for the Frechet distance")
    parser.add_argument("--limit", type=int, help="use the first N images of each split (quick checks)")
    parser.add_argument("--data-dir", help="where the card's data is, if not where it was trained from")
    parser.add_argument("--cache-dir", help="a folder dataset's decoded pixels (default runs/cache)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--keep-likelihood", action="store_true",
                        help="leave the card's test likelihood as it is (measured on another device: a "
                             "class-conditional PixelCNN's marginal costs 10 passes per image)")
    parser.add_argument("--sample-quality-only", action="store_true",
                        help="score the samples only and write nothing: a second opinion from another --classifier")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        for path in args.checkpoint:
            evaluate_one(path, args)
    except (DatasetError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


def evaluate_one(path: Path, args: argparse.Namespace) -> None:
    """One checkpoint of the command line: its figures into its card and printed, or with
    --sample-quality-only printed only."""
    if args.sample_quality_only:
        samples, card = samples_of(path, args.samples, args.device, args.quiet)
        classifier, _ = load_checkpoint(args.classifier, args.device)
        metrics = sample_quality(samples, classifier, args.classifier.name, card, args.data_dir, args.limit,
                                 args.cache_dir)
    else:
        metrics = evaluate(path, args.classifier, args.samples, args.limit, args.device, args.quiet, args.data_dir,
                           args.keep_likelihood, args.cache_dir)
    print(json.dumps({"checkpoint": str(path), **metrics}), flush=True)


if __name__ == "__main__":
    main()
