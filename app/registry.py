"""The models the service serves: every checkpoint folder under the weights directory.

A folder that fails to load is logged and remembered (GET /readyz lists it); the others serve.
Folders of families that declare no capabilities (the evaluation classifier) are skipped. What a
model can do, and what it costs, its family declares (`models/`); nothing here names a family.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from starlette.concurrency import run_in_threadpool
from torch import nn

from models.checkpoint import CheckpointError, load_checkpoint, read_card
from models.families import FAMILIES

log = logging.getLogger("genserve.registry")


class UnknownModel(KeyError):
    pass


@dataclass
class ClassLatent:
    mean: torch.Tensor
    std: torch.Tensor


@dataclass
class ServedModel:
    """A loaded checkpoint and what the routes need to know about it. Only the worker runs `module`."""

    name: str
    module: nn.Module
    card: dict
    class_latents: dict[str, ClassLatent] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.module.family

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.module.config.image_shape)

    @property
    def background(self) -> str:
        """What its training images' transparency was composited on, and so an upload's is."""
        return self.card.get("background", "black")

    @property
    def latent_dim(self) -> int | None:
        return self.module.latent_dim

    @property
    def classes(self) -> list[str]:
        return list(self.card.get("classes") or [])

    @functools.cached_property
    def capabilities(self) -> tuple[str, ...]:
        """The family's, and "encode", the old name of "image_latent", for the API's older clients
        (deprecated: it meant an image -> latent, by an encoder or by a projection)."""
        declared = tuple(self.module.capabilities)
        return declared + ("encode",) if "image_latent" in declared else declared

    @property
    def conditional(self) -> bool:
        """Whether samples accept a class: a model trained with labels, or a card with class latents."""
        return self.module.class_conditional or bool(self.class_latents)

    def max_n(self, limits: dict) -> int:
        """The most images per request: sequential samplers (one network step per pixel) have
        their own, lower cap (`max_n_sequential`)."""
        if self.module.sequential_sampling:
            return min(limits["max_n"], limits["max_n_sequential"])
        return limits["max_n"]

    def info(self, limits: dict) -> dict:
        training = self.card.get("training") or {}
        return {
            "name": self.name,
            "family": self.family,
            "summary": self.module.summary,
            "dataset": self.card.get("dataset"),
            "image_shape": list(self.image_shape),
            "background": self.background,
            "latent_dim": self.latent_dim,
            "classes": self.classes,
            "conditional": self.conditional,
            "capabilities": list(self.capabilities),
            "max_n": self.max_n(limits),
            "parameters": self.card.get("parameters"),
            "latent_map": bool(self.card.get("latent_map")),
            "metrics": self.card.get("metrics") or {},
            "checkpoint": {
                "sha256": self.card.get("sha256"),
                "trained_at": training.get("trained_at"),
                "epochs": training.get("epochs"),
            },
        }


def _class_latents(card: dict, latent_dim: int) -> dict[str, ClassLatent]:
    """The card's per-class latent mean and std as tensors, checked against the model."""
    result = {}
    for name, entry in (card.get("class_latents") or {}).items():
        if name not in card.get("classes", []):
            raise CheckpointError(f"class_latents names {name!r}, which is not one of the card's classes")
        try:
            mean, std = (torch.tensor(entry[key], dtype=torch.float32) for key in ("mean", "std"))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"class_latents[{name!r}] needs 'mean' and 'std' lists of numbers ({e})") from e
        if mean.shape != (latent_dim,) or std.shape != (latent_dim,):
            raise CheckpointError(f"class_latents[{name!r}] is not {latent_dim} numbers long")
        if not (mean.isfinite().all() and std.isfinite().all()):
            raise CheckpointError(f"class_latents[{name!r}] holds non-finite numbers")
        result[name] = ClassLatent(mean, std)
    return result


def load_model(directory: Path, device: torch.device) -> ServedModel:
    module, card = load_checkpoint(directory, device)  # the card is validated by models.card
    served = ServedModel(directory.name, module, card)
    if served.latent_dim is not None:
        served.class_latents = _class_latents(card, served.latent_dim)
    n_classes = module.config.n_classes if module.class_conditional else 0
    if n_classes and n_classes != len(served.classes):
        raise CheckpointError(f"the model has {n_classes} classes but the card names {len(served.classes)}")
    return served


def servable(family: str) -> bool:
    """Whether the service serves checkpoints of `family`: it declares capabilities. An unknown
    family is servable here, so that loading it fails and /readyz says why."""
    family_class = FAMILIES.get(family)
    return family_class is None or bool(family_class.capabilities)


def _public_reason(error: Exception, folder: Path) -> str:
    """Why a folder failed, as /readyz (public) says it: the folder's name, never where it lives."""
    return str(error).replace(str(folder.resolve()), folder.name).replace(str(folder), folder.name)


def freeze_heap() -> None:
    """Put everything loaded so far (torch, the models, FastAPI: some 330,000 objects) out of the
    cycle collector's reach. A full collection over them took 170 ms, a stall of the event loop and
    the worker that every request in flight paid: it was the p99 of the service under load
    (docs/benchmarks.md). What is frozen is still freed by reference counting."""
    gc.collect()
    gc.freeze()


class Registry:
    """Loads once at start-up (and on an admin reload); routes only read it."""

    def __init__(self, weights_dir: Path, device: torch.device):
        self.weights_dir = Path(weights_dir)
        self.device = device
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}
        self.loaded = False
        self._loading = threading.Lock()
        self._reloading: asyncio.Future | None = None

    def load(self) -> None:
        """Load every servable checkpoint; swap the new set in at once so readers never see half;
        then freeze the heap, the new models with the rest. The heap is unfrozen first, so that the
        collector reaches the models replaced (frozen, their reference cycles would never be freed:
        each reload kept a copy)."""
        with self._loading:
            gc.unfreeze()
            self._load()
            freeze_heap()

    async def reload(self) -> None:
        """`load` in a thread, coalesced: a reload asked for while one runs waits for that one and
        starts none of its own (32 at once ran 32 loads one after another, each holding a copy of
        every model)."""
        if self._reloading is None:
            self._reloading = asyncio.ensure_future(run_in_threadpool(self.load))
            self._reloading.add_done_callback(self._reloaded)
        await asyncio.shield(self._reloading)

    def _reloaded(self, _: asyncio.Future) -> None:
        self._reloading = None

    def _load(self) -> None:
        models, failed = {}, {}
        folders = sorted(p for p in self.weights_dir.iterdir() if p.is_dir()) if self.weights_dir.is_dir() else []
        if not folders:
            failed["*"] = "no checkpoint folders in the weights directory"
            log.error("no checkpoint folders", extra={"weights_dir": str(self.weights_dir.resolve())})
        for folder in folders:
            try:
                if not servable(read_card(folder)["family"]):
                    continue  # e.g. the classifier that evaluation uses
                models[folder.name] = load_model(folder, self.device)
            # One bad folder, whatever is wrong with it, never keeps the others from serving.
            except (CheckpointError, OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
                failed[folder.name] = _public_reason(e, folder)
                log.error("checkpoint failed to load", extra={"model": folder.name, "error": str(e)})
        self.models, self.failed, self.loaded = models, failed, True
        log.info("models loaded", extra={"models": sorted(models), "failed": sorted(failed),
                                         "device": str(self.device)})

    def get(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"no model named {name!r}; known models: {known}") from None

    @property
    def ready(self) -> bool:
        return self.loaded and bool(self.models)
