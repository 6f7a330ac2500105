"""Evaluation on little data (a small folder of your own): how many samples to draw by default, and
a warning where a split is too small for the figures measured on it. Each says so in one JSON line
on stderr and in a field of the card's metrics."""

from __future__ import annotations

import json
import sys

# Samples per training image at most, by default: the distances' error comes from the real
# images' statistics then, and more samples would cost minutes without making them any surer.
SAMPLES_PER_TRAIN_IMAGE = 4


def say(event: dict) -> None:
    print(json.dumps(event), file=sys.stderr, flush=True)


def sized_sample_count(default: int, train_images: int) -> tuple[int, str | None]:
    """The number of samples evaluation draws when not told: `default`, or for a small training
    split SAMPLES_PER_TRAIN_IMAGE per image, with why (None when the default stands)."""
    sized = min(default, SAMPLES_PER_TRAIN_IMAGE * train_images)
    if sized == default:
        return default, None
    why = (f"{sized} samples, not {default}: {SAMPLES_PER_TRAIN_IMAGE} per training image ({train_images}); the "
           f"real images' statistics bound the distances' precision, so more cost time and add nothing "
           f"(--samples N to choose)")
    say({"event": "samples sized to the data", "samples": sized, "default": default, "train_images": train_images,
         "message": why})
    return sized, why


def small_split_warning(test_images: int, train_images: int, dims: int) -> str | None:
    """A warning when the test split has no more images than the feature space has dimensions
    (`dims`): its feature covariance is then singular (rank at most test_images - 1), and the Frechet
    distance to it, and its floor, measure the split's own sampling error more than the model.
    None when there are enough."""
    if test_images > dims:
        return None
    reference = (f"read frechet_distance_to_train ({train_images} training images) instead" if train_images > dims
                 else f"the training split ({train_images} images) is too small as well: add images")
    warning = (f"{test_images} test images, fewer than the {dims + 1} that a covariance of {dims} feature dimensions "
               f"needs to be non-singular: the distances to the test split, and the test likelihood averaged over "
               f"so few, are unreliable; {reference}")
    say({"event": "warning", "warning": "small test split", "test_images": test_images, "threshold": dims + 1,
         "feature_dims": dims, "message": warning})
    return warning
