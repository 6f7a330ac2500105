"""Pictures of the shipped models for the docs: sample grids, interpolations, class arithmetic,
VAE reconstructions and PixelCNN completions.

    python -m models.showcase --out docs/samples

Every picture comes from fixed seeds, so rerunning this on the same weights redraws the same files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint
from models.data import load_dataset, to_float
from models.evaluate import DEFAULT_CLASSIFIER, features_of
from models.grid import save_grid
from models.latent import slerp

COMPLETION_ROWS = 14
ARITHMETIC = [("Ankle boot", "Sneaker", "Sandal"), ("Pullover", "T-shirt/top", "Dress")]


def one_per_class(card: dict) -> torch.Tensor:
    """The first test image of each class, in class order."""
    test = load_dataset(card["dataset"], "test")
    firsts = [int((test.labels == label).nonzero()[0]) for label in range(len(test.classes))]
    return to_float(test.images[firsts])


def seed_latent(model, seed: int) -> torch.Tensor:
    return model.sample_latents(1, torch.Generator().manual_seed(seed))[0]


@torch.no_grad()
def showcase(weights: Path, out: Path, classifier_path: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    classifier, _ = load_checkpoint(classifier_path)
    for name in ("pixelcnn", "vae", "dcgan"):
        if not (weights / name).is_dir():
            continue
        model, card = load_checkpoint(weights / name)
        examples = one_per_class(card)
        if name == "pixelcnn":
            cond = torch.arange(40) // 4 % 10
            images = model.sample(40, torch.Generator().manual_seed(0), cond=cond)
            save_grid(images, out / "pixelcnn_samples.png", nrow=8)
            # Completions: a test image per class, its top half, then completions whose class the
            # model infers from that half.
            known = torch.zeros_like(examples, dtype=torch.bool)
            known[:, :, :COMPLETION_ROWS] = True
            rows = [examples, examples * known] + [model.complete(examples, known, torch.Generator().manual_seed(seed))
                                                   for seed in range(3)]
            save_grid(torch.cat(rows), out / "pixelcnn_completions.png", nrow=len(examples))
            continue
        save_grid(model.sample(64, torch.Generator().manual_seed(0)), out / f"{name}_samples.png", nrow=8)
        if name == "vae":  # reconstructions: test images above, decoded encoder means below
            save_grid(torch.cat([examples, model.decode(model.encode(examples)[0])]),
                      out / "vae_reconstructions.png", nrow=len(examples))
        # Interpolation strips: seed pairs, slerp.
        rows = [model.decode(slerp(seed_latent(model, a), seed_latent(model, b), torch.linspace(0, 1, 10)))
                for a, b in [(1, 2), (3, 4), (5, 6)]]
        save_grid(torch.cat(rows), out / f"{name}_interpolation.png", nrow=10)
        # Class means decoded, in class order, with what the classifier says they are.
        latents = card.get("class_latents", {})
        if not latents:
            continue
        classes = [c for c in card["classes"] if c in latents]
        means = {c: torch.tensor(latents[c]["mean"]) for c in classes}
        decoded = model.decode(torch.stack([means[c] for c in classes]))
        save_grid(decoded, out / f"{name}_class_means.png", nrow=len(classes))
        _, probs = features_of(classifier, decoded)
        report[name] = {"class_means_classified_as": {c: card["classes"][int(p.argmax())] for c, p in zip(classes, probs)}}
        # Class arithmetic: A - B + C from the class means; the operands, then the result.
        rows = []
        for a, b, c in ARITHMETIC:
            result = means[a] - means[b] + means[c]
            rows.append(model.decode(torch.stack([means[a], means[b], means[c], result])))
        save_grid(torch.cat(rows), out / f"{name}_arithmetic.png", nrow=4)
    (out / "showcase.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.showcase", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--classifier", type=Path, default=DEFAULT_CLASSIFIER)
    parser.add_argument("--out", type=Path, default=Path("docs/samples"))
    args = parser.parse_args(argv)
    print(json.dumps(showcase(args.weights, args.out, args.classifier), indent=2))


if __name__ == "__main__":
    main()
