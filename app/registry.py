"""The models the service serves: every checkpoint folder under the weights directory.

A folder that fails to load is logged and remembered (GET /readyz lists it); the others serve, and
a model that served before keeps serving its last good version until a new one loads.
Folders of families that declare no capabilities (the evaluation classifier) are skipped. What a
model can do, and what it costs, its family declares (`models/`); nothing here names a family.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from starlette.concurrency import run_in_threadpool

from models.checkpoint import CheckpointError, load_checkpoint, read_card
from models.families import FAMILIES
from models.inference import Model, card_class_latents

log = logging.getLogger("genserve.registry")


class UnknownModel(KeyError):
    pass


@dataclass
class ServedModel(Model):
    """A loaded checkpoint and what the routes need to know about it. Only the worker runs `module`."""

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
            "sampling": self.module.sampling,
            "sampling_steps": list(self.module.sampling_steps() or ()) or None,
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


def load_model(directory: Path, device: torch.device) -> ServedModel:
    module, card = load_checkpoint(directory, device)  # the card is validated by models.card
    return ServedModel(directory.name, module, card, card_class_latents(module, card))


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
        self._running: asyncio.Task | None = None  # the reload whose load runs
        self._queued: asyncio.Task | None = None  # the one reload that waits for it

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
        """`load` in a thread, after the load under way if there is one: a reload asked for while
        one runs waits for the next one, which starts after it and reads the folders afresh (so
        its answer reflects every change made before it was asked for). Those asked for meanwhile
        share that next one: at most one load is queued (32 at once ran 32 loads one after another,
        each holding a copy of every model)."""
        if self._queued is None:
            self._queued = asyncio.ensure_future(self._load_after(self._running))
        await asyncio.shield(self._queued)

    async def _load_after(self, running: asyncio.Task | None) -> None:
        if running is not None:
            await asyncio.wait([running])  # whatever its outcome
        self._running, self._queued = asyncio.current_task(), None  # from now on a new reload queues anew
        try:
            await run_in_threadpool(self.load)
        finally:
            if self._running is asyncio.current_task():
                self._running = None

    def _load(self) -> None:
        models, failed = {}, {}
        # Hidden folders are versions a save is writing or removing (models.checkpoint_files).
        folders = sorted(p for p in self.weights_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if self.weights_dir.is_dir() else []
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
                serving = self.models.get(folder.name)
                if serving is not None:  # a new version that fails never takes the last good one out of service
                    models[folder.name] = serving
                    failed[folder.name] += (f"; still serving its previous version "
                                            f"(sha256 {serving.card['sha256'][:12]}...)")
                log.error("checkpoint failed to load", extra={"model": folder.name, "error": str(e),
                                                              "serving_previous": serving is not None})
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
