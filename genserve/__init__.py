"""genserve's Python API: a trained generator in this process, pixel for pixel the service's.

    import genserve
    g = genserve.load("weights/dcgan")          # a checkpoint folder; device="cuda" optional
    images = g.sample(n=16, seed=3)              # 16 PIL images: the cells of POST .../samples
    g.interpolate({"seed": 1}, {"seed": 2}, steps=8)
    g.sample(n=10_000, seed=0, batch_size=256, as_tensor=True)  # beyond the service's caps

Every endpoint of the HTTP API is a method of the same name and arguments (genserve.generator).
Importing this package loads nothing heavy: torch and the model families come with `load`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genserve.generator import Generator

__all__ = ["Generator", "load"]


def load(folder, device=None, **options) -> Generator:
    """The checkpoint in `folder`, ready to generate: see genserve.generator.load."""
    from genserve.generator import load as load_generator
    return load_generator(folder, device, **options)


def __getattr__(name: str):
    if name == "Generator":
        from genserve.generator import Generator
        return Generator
    raise AttributeError(f"module 'genserve' has no attribute {name!r}")
