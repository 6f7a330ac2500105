"""Pictures of the shipped models for the docs, each by what its family can do: sample grids,
completions, reconstructions, interpolations, class means and class arithmetic.

    python -m models.showcase --out docs/samples

Every picture comes from fixed seeds, so rerunning this on the same weights redraws the same files;
sample grids are the images of seeds 0, 1, ... as `POST .../samples` with `seed: 0` draws them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint, read_card
from models.families import FAMILIES, discover_from_environment
from models.data import dataset_of_card, to_float
from models.evaluation.evaluate import DEFAULT_CLASSIFIER
from models.evaluation.metrics import features_of
from models.grid import save_grid
from models.families.latent import slerp

PROGRESS_SNAPSHOTS = 8
# Class arithmetic A - B + C that reads as a sentence, per dataset; other data: consecutive classes.
ARITHMETIC = {"fashion-mnist": [("Ankle boot", "Sneaker", "Sandal"), ("Pullover", "T-shirt/top", "Dress")]}


def one_per_class(card: dict) -> torch.Tensor:
    """The first test image of each class, in class order."""
    test = dataset_of_card(card, "test")
    firsts = [int((test.labels == label).nonzero()[0]) for label in range(len(test.classes))]
    return to_float(test.images[firsts])


@torch.no_grad()
def showcase(weights: Path, out: Path, classifier_path: Path | None = None) -> dict:
    """Draw every servable model's pictures, by what its family can do."""
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    discover_from_environment()  # families of the user's own, named by GENSERVE_FAMILIES
    # (Hidden folders are saves under way or left by a killed writer, never checkpoints.)
    for folder in sorted(p for p in weights.iterdir() if not p.name.startswith(".") and (p / "card.json").is_file()):
        family = FAMILIES.get(read_card(folder)["family"])
        if family is None or not family.capabilities:  # not a generator (the classifier)
            continue
        model, card = load_checkpoint(folder)
        name, caps = folder.name, model.capabilities
        examples = one_per_class(card)
        n = 40 if model.sequential_sampling else 64
        save_grid(model.sample_for_seeds(range(n)), out / f"{name}_samples.png", nrow=8)
        if "complete" in caps:
            # Completions: a test image per class, its top half, then three completions (seeds 0, 1,
            # 2, as the API draws them), whose class the model infers from that half.
            known = torch.zeros(len(examples), 1, *examples.shape[2:], dtype=torch.bool)
            known[:, :, : examples.shape[2] // 2] = True
            rows = [examples, examples * known] + [
                model.complete_from_noise(examples, known, model.completion_noise_for_seeds([seed] * len(examples)))
                for seed in range(3)]
            save_grid(torch.cat(rows), out / f"{name}_completions.png", nrow=len(examples))
        if "reconstruct" in caps and {"encoder", "invert"} & set(caps):  # test images, their decoded latents below
            latents = model.encode(examples)[0] if "encoder" in caps else model.invert(examples)
            save_grid(torch.cat([examples, model.decode(latents)]), out / f"{name}_reconstructions.png",
                      nrow=len(examples))
        if "stream" in caps:  # how a sample comes to be: snapshots of its sampler's progress, seeds 0 to 3
            save_grid(progress_strip(model, range(4)), out / f"{name}_progress.png", nrow=PROGRESS_SNAPSHOTS)
        if "interpolate" in caps:  # strips between seed pairs' latents, slerp
            rows = [model.decode(slerp(*model.latents_for_seeds([a, b]), torch.linspace(0, 1, 10)))
                    for a, b in [(1, 2), (3, 4), (5, 6)]]
            save_grid(torch.cat(rows), out / f"{name}_interpolation.png", nrow=10)
        latents = card.get("class_latents", {})
        if "arithmetic" in caps and latents:
            # Judged by the classifier that made the class latents (evaluate records its folder).
            # (--classifier, where given, instead).
            judge = classifier_path or (weights / card["classifier"] if "classifier" in card else DEFAULT_CLASSIFIER)
            classifier, _ = load_checkpoint(judge)
            report[name] = class_pictures(model, card, latents, classifier, out / name)
    (out / "showcase.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def progress_strip(model, seeds) -> torch.Tensor:
    """A row per seed of `PROGRESS_SNAPSHOTS` images evenly through its sampler's progress reports
    (rows drawn so far, or a denoiser's prediction of the image), the finished sample last."""
    count = model.progress_count()
    wanted = {round(i * (count - 1) / (PROGRESS_SNAPSHOTS - 1)) for i in range(PROGRESS_SNAPSHOTS - 1)}
    taken: list[torch.Tensor] = []

    def on_progress(step: int, images: torch.Tensor) -> None:
        if step in wanted:
            taken.append(images.clone())

    if model.sampling == "latent":
        final = model.decode(model.latents_for_seeds(seeds), on_progress=on_progress)
    else:
        noise, cond = model.noise_for_seeds(seeds)
        final = model.sample_from_noise(noise, 1.0, cond, on_progress=on_progress)
    return torch.stack([*taken, final], dim=1).flatten(0, 1)


def class_pictures(model, card: dict, latents: dict, classifier, stem: Path) -> dict:
    """Class means decoded, in class order, with what the classifier says they are; then class
    arithmetic A - B + C on the means: the operands, then the result."""
    classes = [c for c in card["classes"] if c in latents]
    means = {c: torch.tensor(latents[c]["mean"]) for c in classes}
    decoded = model.decode(torch.stack([means[c] for c in classes]))
    save_grid(decoded, stem.with_name(f"{stem.name}_class_means.png"), nrow=len(classes))
    _, probs = features_of(classifier, decoded)
    triples = ARITHMETIC.get(card.get("dataset"), [tuple(classes[i:i + 3]) for i in (0, 3) if i + 3 <= len(classes)])
    rows = [model.decode(torch.stack([means[a], means[b], means[c], means[a] - means[b] + means[c]]))
            for a, b, c in triples if {a, b, c} <= set(means)]
    if rows:
        save_grid(torch.cat(rows), stem.with_name(f"{stem.name}_arithmetic.png"), nrow=4)
    return {"class_means_classified_as": {c: card["classes"][int(p.argmax())] for c, p in zip(classes, probs)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.showcase", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--classifier", type=Path,
                        help="the classifier that judges class pictures (default: the one each card names)")
    parser.add_argument("--out", type=Path, default=Path("docs/samples"))
    args = parser.parse_args(argv)
    print(json.dumps(showcase(args.weights, args.out, args.classifier), indent=2))


if __name__ == "__main__":
    main()
