"""Checkpoints: `<dir>/model.safetensors` (the weights) and `<dir>/card.json` (the model card).

The card names the family and holds the config that rebuilds the module, the dataset and its
class names, how the weights were trained, their metrics, and the sha256 of the weights file.
Loading never executes code: safetensors holds only tensors, the card only JSON (validated by
models.card), the sha256 must match, and every tensor name and shape must be the module's own.

The config is also written into the weights file's metadata, so the sha256 covers it: a card whose
config was edited (say to serve 512 x 512 images) no longer matches its weights and is refused.
Tensor names, shapes and dtypes are compared with the file's header, and the module is first built
on the meta device, so nothing is allocated before the checkpoint is known to fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.card import MAX_LATENT_DIM, CardError, check_config, validate_card

from models.families import FAMILIES

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "genserve-card/1"
CONFIG_METADATA = "config"  # the safetensors metadata key that holds the config, as canonical JSON
# safetensors dtype names -> torch dtypes, for comparing the header with the module.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
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


def _config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _family_class(family: str) -> type[nn.Module]:
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family]


def build_model(family: str, config: dict, device: str | torch.device | None = None) -> nn.Module:
    """A fresh module of `family` from its config as stored in a card (bounded by models.card);
    on the meta device it allocates nothing."""
    cls = _family_class(family)
    try:
        check_config(family, cls.Config, config)
        with torch.device(device or "cpu"):
            module = cls(cls.Config(**config))
        # Whatever a family declares, the API's latent vectors are capped at MAX_LATENT_DIM.
        if module.latent_dim is not None and module.latent_dim > MAX_LATENT_DIM:
            raise CardError(f"latent_dim {module.latent_dim} is above {MAX_LATENT_DIM}")
        return module
    except (CardError, TypeError, ValueError) as e:
        raise CheckpointError(f"{family} config is invalid: {e}") from e


def save_checkpoint(model: nn.Module, directory: str | Path, card: dict) -> dict:
    """Write the weights and the card (the given fields plus family, config and sha256)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = dataclasses.asdict(model.config)
    weights = directory / WEIGHTS_FILE
    _write_atomic(weights, lambda p: save_file(tensors, str(p), metadata=_metadata(model.family, config)))
    full_card = {
        "format": CARD_FORMAT,
        **card,
        "family": model.family,
        "config": json.loads(_config_json(config)),
        "sha256": sha256_file(weights),
        "size_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    write_card(directory, full_card)
    return full_card


def _metadata(family: str, config: dict) -> dict[str, str]:
    return {"family": family, CONFIG_METADATA: _config_json(config)}


def write_card(directory: str | Path, card: dict) -> None:
    path = Path(directory) / CARD_FILE
    _write_atomic(path, lambda p: p.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n"))


def read_card(directory: str | Path) -> dict:
    path = Path(directory) / CARD_FILE
    try:
        card = json.loads(path.read_text(), parse_constant=_no_constant)
    except FileNotFoundError as e:
        raise CheckpointError(f"{directory}: no {CARD_FILE}") from e
    except (json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(card, dict) or "family" not in card or "config" not in card:
        raise CheckpointError(f"{path}: a card needs 'family' and 'config'")
    return card


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a card may hold")


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


def resolve_device(name: str) -> torch.device:
    """A device setting ("auto": CUDA when there is one, else the CPU; "cpu", "cuda", "cuda:1" ...)
    as a torch device: the one rule training, evaluation and the service share."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load and verify a checkpoint; returns (module in eval mode on `device`, card)."""
    directory = Path(directory)
    card, weights = _verified_files(directory)
    header, metadata = _header(weights)
    skeleton = build_model(card["family"], card["config"], "meta")  # checks the config's fields and bounds
    if metadata.get(CONFIG_METADATA) != _config_json(card["config"]):
        raise CheckpointError(f"{directory}: the card's config is not the one its weights were saved with "
                              f"(the weights file's metadata, covered by the sha256, holds that one)")
    _check_tensors(weights, header, skeleton, card["family"])
    model = build_model(card["family"], card["config"])
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return model.to(device).eval(), card


def _verified_files(directory: Path) -> tuple[dict, Path]:
    """(the card, validated, the weights file whose sha256 it names), or CheckpointError."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint folder")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{directory}: refusing a folder with pickle files {pickles}; use safetensors")
    card = read_card(directory)
    try:
        validate_card(card)
    except CardError as e:
        raise CheckpointError(f"{directory / CARD_FILE}: {e}") from None
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    verify_sha256(weights, card["sha256"], "the card's")
    return card, weights


def verify_sha256(path: Path, expected: str, whose: str) -> None:
    """CheckpointError unless `path`'s sha256 is `expected` (`whose`: where it was recorded)."""
    digest = sha256_file(path)
    if digest != expected:
        raise CheckpointError(f"{path}: sha256 {digest[:12]}... does not match {whose} "
                              f"{expected[:12]}...; the file was changed or corrupted")


def _header(weights: Path) -> tuple[dict[str, tuple[list[int], str]], dict[str, str]]:
    """The file's tensors as {name: (shape, dtype name)} and its metadata, from the header alone."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            header = {}
            for key in f.keys():
                tensor = f.get_slice(key)
                header[key] = (list(tensor.get_shape()), tensor.get_dtype())
            return header, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e


def _check_tensors(weights: Path, header: dict, model: nn.Module, family: str) -> None:
    """Every tensor of the header is one of the (meta-device) module's, of its shape and dtype."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: tensor names do not fit {family}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, (shape, dtype) in header.items():
        if shape != list(expected[key].shape) or DTYPES.get(dtype) != expected[key].dtype:
            raise CheckpointError(f"{weights}: tensor {key} is {tuple(shape)} {dtype}, "
                                  f"expected {tuple(expected[key].shape)} {expected[key].dtype}")


def migrate_checkpoint(directory: str | Path) -> bool:
    """Re-save a checkpoint of the first format (config in the card only) with its config in the
    weights' metadata: the same tensors, the card's other fields kept. Returns whether it changed.
    The old file is verified as before (sha256, names, shapes) first."""
    directory = Path(directory)
    card, weights = _verified_files(directory)
    _, metadata = _header(weights)
    if CONFIG_METADATA in metadata:
        return False
    model = build_model(card["family"], card["config"])
    tensors = load_file(str(weights), device="cpu")
    model.load_state_dict(tensors, strict=True)
    _write_atomic(weights, lambda p: save_file(tensors, str(p), metadata=_metadata(card["family"], card["config"])))
    write_card(directory, {**card, "sha256": sha256_file(weights), "size_bytes": weights.stat().st_size})
    load_checkpoint(directory)
    return True


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.checkpoint",
                                     description="Checkpoint upkeep: `migrate DIR...` moves checkpoints of the first "
                                                 "format to the current one (config in the weights' metadata).")
    parser.add_argument("command", choices=["migrate"])
    parser.add_argument("directories", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for directory in args.directories:
        print(f"{directory}: {'migrated' if migrate_checkpoint(directory) else 'already current'}")


if __name__ == "__main__":
    main()
