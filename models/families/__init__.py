"""The model families genserve knows, by name (`FAMILIES`), found from specs "package.module:Class".

One rule finds every family: the shipped ones (`SHIPPED`), the `genserve.families` entry points of
installed packages, and those named in `GENSERVE_FAMILIES` (comma-separated specs), which each
command reads through `discover_from_environment()` and the service through its settings. A family
defined in a file outside genserve is served, trained and evaluated with no file of genserve
edited. What a family must declare is in models/contract.py.

    pixelcnn.py pixelrnn.py vae.py dcgan.py diffusion.py classifier.py   one family a file
    latent.py autoregressive.py      the mix-ins of two ways to sample (a latent, pixel by pixel)
    masked_conv.py discretized_logistic.py mixture.py projection.py      what families build on
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from models.contract import Family

ENVIRONMENT_VARIABLE = "GENSERVE_FAMILIES"
ENTRY_POINT_GROUP = "genserve.families"
SHIPPED = (
    "models.families.pixelcnn:PixelCNN",
    "models.families.pixelrnn:PixelRNN",
    "models.families.vae:VAE",
    "models.families.dcgan:DCGAN",
    "models.families.diffusion:Diffusion",
    "models.families.classifier:Classifier",
)

FAMILIES: dict[str, type[Family]] = {}


class FamilyError(RuntimeError):
    """A family spec that names nothing importable, or something that is not a family."""


def register(family_class: type[Family]) -> type[Family]:
    """Make a family known to training, evaluation, checkpoints and the service (by its name)."""
    if not (isinstance(family_class, type) and issubclass(family_class, Family)):
        raise TypeError(f"{family_class!r} is not a models.contract.Family")
    known = FAMILIES.get(family_class.family)
    if known is not None and known is not family_class:
        raise FamilyError(f"two families are named {family_class.family!r}: "
                          f"{known.__module__}.{known.__qualname__} and "
                          f"{family_class.__module__}.{family_class.__qualname__}")
    FAMILIES[family_class.family] = family_class
    return family_class


def load_spec(spec: str) -> type[Family]:
    """"package.module:Class" -> the class, imported (never a file path: a module on sys.path)."""
    module_name, _, class_name = spec.strip().partition(":")
    if not module_name or not class_name:
        raise FamilyError(f"family spec {spec!r} is not 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FamilyError(f"family spec {spec!r}: cannot import {module_name!r} ({e})") from None
    family_class = getattr(module, class_name, None)
    if not (isinstance(family_class, type) and issubclass(family_class, Family)):
        raise FamilyError(f"family spec {spec!r}: {module_name!r} has no Family named {class_name!r}")
    return family_class


def discover(specs: str = "") -> dict[str, type[Family]]:
    """Register the shipped families, the installed packages' entry points and `specs`
    (comma-separated "package.module:Class"); idempotent. Raises FamilyError naming a bad spec."""
    installed = [f"{point.module}:{point.attr}" for point in entry_points(group=ENTRY_POINT_GROUP)]
    for spec in (*SHIPPED, *installed, *filter(None, (s.strip() for s in specs.split(",")))):
        register(load_spec(spec))
    return FAMILIES


def discover_from_environment() -> dict[str, type[Family]]:
    """`discover` with the specs of GENSERVE_FAMILIES: what the commands (models.train,
    models.evaluate, models.showcase, the Python API) call before they look a family up."""
    return discover(os.environ.get(ENVIRONMENT_VARIABLE, ""))


discover()
