"""Checkpoints: `<dir>/model.safetensors` (the weights) and `<dir>/card.json` (the model card).

The card names the family and holds the config that rebuilds the module, the dataset and its
class names, how the weights were trained, their metrics, and the sha256 of the weights file.
Loading never executes code: safetensors holds only tensors, the card only JSON (validated by
models.card), the sha256 must match, and every tensor name and shape must be the module's own.

The config is also written into the weights file's metadata, so the sha256 covers it: a card whose
config was edited (say to serve 512 x 512 images) no longer matches its weights and is refused.
Tensor names, shapes and dtypes are compared with the file's header, and the module is first built
on the meta device, so nothing is allocated before the checkpoint is known to fit.

Writing a folder whole or not at all, and reading it as one version, is models.checkpoint_files'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save as safetensors_bytes
from torch import nn

from models.card import MAX_LATENT_DIM, CardError, check_config, validate_card
# The card's and the folder's own functions are part of this module's interface too.
from models.checkpoint_files import (  # noqa: F401
    CARD_FILE, WEIGHTS_FILE, CheckpointError, card_bytes, fd_path, identity, open_regular, opened, publish, read_card,
    read_card_at, sha256_file, update_card, write_card, write_files)
from models.families import FAMILIES, FamilyError, discover_from_environment

CARD_FORMAT = "genserve-card/1"
CONFIG_METADATA = "config"  # the safetensors metadata key that holds the config, as canonical JSON
# safetensors dtype names -> torch dtypes, for comparing the header with the module.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
# Files that could carry pickled code. A checkpoint folder holding one is refused outright.
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}
READ_ATTEMPTS = 3  # a reader whose folder was swapped while it read reads the new version


def _config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def _family_class(family: str) -> type[nn.Module]:
    if family not in FAMILIES:
        try:  # a family of the user's, named by GENSERVE_FAMILIES and not looked up yet
            discover_from_environment()
        except FamilyError as e:
            raise CheckpointError(str(e)) from None
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {sorted(FAMILIES)} (a family of your "
                              f"own is named by GENSERVE_FAMILIES=package.module:Class)")
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


# -- writing ----------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, directory: str | Path, card: dict,
                    extra_files: dict[str, bytes] | None = None) -> dict:
    """Write the weights and the card (the given fields plus family, config and sha256), and
    `extra_files` (name -> bytes, a sample grid say), as the folder's new version, whole."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = dataclasses.asdict(model.config)
    weights = safetensors_bytes(tensors, metadata=_metadata(model.family, config))
    full_card = {
        "format": CARD_FORMAT,
        **card,
        "family": model.family,
        "config": json.loads(_config_json(config)),
        "sha256": hashlib.sha256(weights).hexdigest(),
        "size_bytes": len(weights),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    publish(directory, {WEIGHTS_FILE: weights, CARD_FILE: card_bytes(full_card), **(extra_files or {})})
    return full_card


def _metadata(family: str, config: dict) -> dict[str, str]:
    return {"family": family, CONFIG_METADATA: _config_json(config)}


def resolve_device(name: str) -> torch.device:
    """A device setting ("auto": CUDA when there is one, else the CPU; "cpu", "cuda", "cuda:1" ...)
    as a torch device: the one rule training, evaluation and the service share."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load and verify a checkpoint; returns (module in eval mode on `device`, card)."""
    directory = Path(directory)
    for attempt in range(1, READ_ATTEMPTS + 1):
        with opened(directory) as (dir_fd, version):
            try:
                return _load(directory, dir_fd, device)
            except (CheckpointError, OSError):
                if attempt < READ_ATTEMPTS and identity(directory) != version:
                    continue  # a save swapped a new version in while this one was read
                raise
    raise AssertionError("unreachable")


def _load(directory: Path, dir_fd: int, device: str | torch.device) -> tuple[nn.Module, dict]:
    card, weights_fd = _verified_files(directory, dir_fd)
    try:
        weights, shown = fd_path(weights_fd), directory / WEIGHTS_FILE
        header, metadata = _header(weights, shown)
        skeleton = build_model(card["family"], card["config"], "meta")  # checks the config's fields and bounds
        if metadata.get(CONFIG_METADATA) != _config_json(card["config"]):
            raise CheckpointError(f"{directory}: the card's config is not the one its weights were saved with "
                                  f"(the weights file's metadata, covered by the sha256, holds that one)")
        _check_tensors(shown, header, skeleton, card["family"])
        model = build_model(card["family"], card["config"])
        model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    finally:
        os.close(weights_fd)
    return model.to(device).eval(), card


def _verified_files(directory: Path, dir_fd: int) -> tuple[dict, int]:
    """(the card, validated, a descriptor of the weights file whose sha256 it names), or CheckpointError."""
    pickles = sorted(name for name in os.listdir(dir_fd) if Path(name).suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{directory}: refusing a folder with pickle files {pickles}; use safetensors")
    card = read_card_at(dir_fd, directory)
    try:
        validate_card(card)
    except CardError as e:
        raise CheckpointError(f"{directory / CARD_FILE}: {e}") from None
    weights_fd = open_regular(dir_fd, WEIGHTS_FILE, directory)
    try:
        _check_digest(sha256_file(fd_path(weights_fd)), card["sha256"], directory / WEIGHTS_FILE, "the card's")
    except BaseException:
        os.close(weights_fd)
        raise
    return card, weights_fd


def verify_sha256(path: Path, expected: str, whose: str) -> None:
    """CheckpointError unless `path`'s sha256 is `expected` (`whose`: where it was recorded)."""
    _check_digest(sha256_file(path), expected, path, whose)


def _check_digest(digest: str, expected: str, shown: Path, whose: str) -> None:
    if digest != expected:
        raise CheckpointError(f"{shown}: sha256 {digest[:12]}... does not match {whose} "
                              f"{expected[:12]}...; the file was changed or corrupted")


def _header(weights: str, shown: Path) -> tuple[dict[str, tuple[list[int], str]], dict[str, str]]:
    """The file's tensors as {name: (shape, dtype name)} and its metadata, from the header alone."""
    try:
        with safe_open(weights, framework="pt") as f:
            header = {}
            for key in f.keys():
                tensor = f.get_slice(key)
                header[key] = (list(tensor.get_shape()), tensor.get_dtype())
            return header, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{shown}: not a readable safetensors file ({e})") from e


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
    weights' metadata: the same tensors, the card's other fields and the folder's other files kept.
    Returns whether it changed. The old file is verified as before (sha256, names, shapes) first."""
    directory = Path(directory)
    with opened(directory) as (dir_fd, _):
        card, weights_fd = _verified_files(directory, dir_fd)
        try:
            weights = fd_path(weights_fd)
            _, metadata = _header(weights, directory / WEIGHTS_FILE)
            if CONFIG_METADATA in metadata:
                return False
            model = build_model(card["family"], card["config"])
            tensors = load_file(weights, device="cpu")
        finally:
            os.close(weights_fd)
    model.load_state_dict(tensors, strict=True)
    data = safetensors_bytes(tensors, metadata=_metadata(card["family"], card["config"]))
    card = {**card, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    publish(directory, {WEIGHTS_FILE: data, CARD_FILE: card_bytes(card)}, keep_others=True)
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
