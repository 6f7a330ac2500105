"""Checkpoints: `<dir>/model.safetensors` (the weights) and `<dir>/card.json` (the model card).

The card names the family and holds the config that rebuilds the module, the dataset and its
class names, how the weights were trained, their metrics, and the sha256 of the weights file.
Loading never executes code: safetensors holds only tensors, the card only JSON, the sha256 must
match, and every tensor name and shape must be the module's own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.classifier import Classifier
from models.dcgan import DCGAN
from models.pixelcnn import PixelCNN
from models.vae import VAE

FAMILIES: dict[str, type[nn.Module]] = {m.family: m for m in (PixelCNN, VAE, DCGAN, Classifier)}
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "genserve-card/1"
# Files that could carry pickled code. A checkpoint folder holding one is refused outright.
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, tampered with, or does not fit its family."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def build_model(family: str, config: dict) -> nn.Module:
    """A fresh module of `family` from its config as stored in a card."""
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    cls = FAMILIES[family]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(config) - fields
    if unknown:
        raise CheckpointError(f"{family} config has unknown fields {sorted(unknown)}")
    try:
        return cls(cls.Config(**config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{family} config is invalid: {e}") from e


def save_checkpoint(model: nn.Module, directory: str | Path, card: dict) -> dict:
    """Write the weights and the card (the given fields plus family, config and sha256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    _write_atomic(weights, lambda p: save_file(tensors, str(p), metadata={"family": model.family}))
    full_card = {
        "format": CARD_FORMAT,
        **card,
        "family": model.family,
        "config": dataclasses.asdict(model.config),
        "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_card(directory, full_card)
    return full_card


def write_card(directory: str | Path, card: dict) -> None:
    path = Path(directory) / CARD_FILE
    _write_atomic(path, lambda p: p.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n"))


def read_card(directory: str | Path) -> dict:
    path = Path(directory) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory}: no {CARD_FILE}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(card, dict) or "family" not in card or "config" not in card:
        raise CheckpointError(f"{path}: a card needs 'family' and 'config'")
    return card


def update_card(directory: str | Path, **fields) -> dict:
    """Merge fields into an existing card (evaluation writes its metrics this way)."""
    card = read_card(directory)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    write_card(directory, card)
    return card


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load and verify a checkpoint; returns (module in eval mode on `device`, card)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint folder")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{directory}: refusing a folder with pickle files {pickles}; use safetensors")
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    digest = sha256_file(weights)
    if digest != card.get("sha256"):
        raise CheckpointError(f"{weights}: sha256 {digest[:12]}... does not match the card's "
                              f"{str(card.get('sha256'))[:12]}...; the file was changed or corrupted")
    model = build_model(card["family"], card["config"])
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: tensor names do not fit {card['family']}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [k for k, t in tensors.items() if t.shape != expected[k].shape or t.dtype != expected[k].dtype]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{weights}: tensor {k} is {tuple(tensors[k].shape)} {tensors[k].dtype}, "
                              f"expected {tuple(expected[k].shape)} {expected[k].dtype}")
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), card
