"""A picture of an encoder's latent space: the 2-D PCA of the encoder means of test images.

    python -m models.latent_map weights/vae weights/vae2d      # writes `latent_map` into each card

The card keeps the plane (the means' mean and two principal directions, each a unit vector in
latent space) and each image's coordinates in it with its label, so a client can draw the scatter
and decode any point of the plane as mean + x * components[0] + y * components[1].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import load_checkpoint, update_card
from models.data import dataset_of_card, to_float

DEFAULT_IMAGES = 1000
DECIMALS = 3  # the card stays small: 1,000 points are about 25 KB


@torch.no_grad()
def latent_map(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """uint8 images [N, C, H, W] and labels [N] -> {"mean", "components", "explained_variance", "points"}."""
    means = torch.cat([model.encode(to_float(images[i:i + 500]))[0] for i in range(0, len(images), 500)]).double()
    centre = means.mean(0)
    _, singular, directions = torch.linalg.svd(means - centre, full_matrices=False)
    components = directions[:2]
    # A fixed sign per direction (its largest entry positive), so that reruns draw the same picture.
    components = components * components.gather(1, components.abs().argmax(1, keepdim=True)).sign()
    coordinates = (means - centre) @ components.T
    variance = singular.pow(2)
    return {
        "images": len(images),
        "mean": [round(v, 6) for v in centre.tolist()],
        "components": [[round(v, 6) for v in row] for row in components.tolist()],
        "explained_variance": [round(v, 4) for v in (variance[:2] / variance.sum()).tolist()],
        "points": [[round(x, DECIMALS), round(y, DECIMALS), int(label)]
                   for (x, y), label in zip(coordinates.tolist(), labels.tolist())],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="the first N test images")
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for folder in args.checkpoints:
        model, card = load_checkpoint(folder)
        if "encoder" not in model.capabilities:
            raise SystemExit(f"{folder}: a {card['family']} has no encoder to map")
        test = dataset_of_card(card, "test", args.data_dir, limit=args.images)
        result = latent_map(model.eval(), test.images, test.labels)
        update_card(folder, latent_map=result)
        print(f"{folder}: {result['images']} test images, explained variance {result['explained_variance']}")


if __name__ == "__main__":
    main()
