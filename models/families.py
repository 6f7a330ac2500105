"""The model families genserve knows, by name: `FAMILIES`, and `register` for one more.

What a family must declare is in models/contract.py. Training, evaluation, checkpoints and the
service find a family here by the name its card gives.
"""

from __future__ import annotations

from models.classifier import Classifier
from models.contract import Family
from models.dcgan import DCGAN
from models.pixelcnn import PixelCNN
from models.pixelrnn import PixelRNN
from models.vae import VAE

FAMILIES: dict[str, type[Family]] = {}


def register(family_class: type[Family]) -> type[Family]:
    """Make a family known to training, evaluation, checkpoints and the service (by its name)."""
    if not (isinstance(family_class, type) and issubclass(family_class, Family)):
        raise TypeError(f"{family_class!r} is not a Family")
    FAMILIES[family_class.family] = family_class
    return family_class


for shipped in (PixelCNN, PixelRNN, VAE, DCGAN, Classifier):  # the families genserve ships
    register(shipped)
