"""The model card, validated: what a checkpoint's `card.json` must hold before anything is built.

A card is JSON anyone can edit, so every field that code reads is typed here (a `"dataset": 5`
is refused at load, not met later as a 500), floats are finite, and the config that rebuilds
the module is bounded to sane sizes: the module is allocated from it, so a card asking for
512 x 512 images or 10^6 channels must never get that far.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The shipped families' upper bounds on latent_dim and n_classes; the API caps latent vectors at
# MAX_LATENT_DIM too. A diffusion model's latent is its noise image (and a class code): 64 x 64 in
# colour is 12,288 numbers.
MAX_LATENT_DIM = 12_544
MAX_CLASSES = 1000
# A family declares each numeric config field's bounds in the field's metadata,
# `field(default=4, metadata={"bounds": (1, 32)})`. A field that declares none still gets a cap,
# so that no card can size a module beyond it.
UNDECLARED_BOUNDS = (0, 4096)
MAX_CHOICE = 64  # characters of a string-valued config field
MAX_SEQUENCE = 8  # numbers in a list-valued config field
IMAGE_CHANNELS = (1, 3)
IMAGE_SIDE = (4, 128)  # pixels; the shipped models are 28 x 28

Name = Annotated[str, Field(min_length=1, max_length=200)]


class CardError(ValueError):
    """A card that does not hold what a checkpoint's card must."""


def _finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere in a JSON value (they cannot be answered as JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds a non-finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _finite(item, where)


class ClassLatentEntry(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    mean: list[float] = Field(max_length=MAX_LATENT_DIM)
    std: list[float] = Field(max_length=MAX_LATENT_DIM)


class Training(BaseModel):
    """How the weights were made; only `trained_at` and `epochs` are served, the rest is kept as is."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    trained_at: str | None = None
    epochs: float | None = Field(None, ge=0)


class Card(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    family: Name
    config: dict[str, Any]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: str | None = None
    name: Name | None = None
    dataset: Name | None = None
    classes: list[Name] = Field(default_factory=list, max_length=MAX_CLASSES)
    image_shape: list[int] | None = Field(None, min_length=3, max_length=3)
    # What transparent pixels of the training images were composited on: uploads get the same.
    background: Literal["black", "white"] = "black"
    # The folder, beside this one, of the classifier that scored the model and made its class latents.
    classifier: str | None = Field(None, pattern=r"^[\w-][\w.-]*$", max_length=200)
    training: Training = Field(default_factory=Training)
    metrics: dict[str, Any] = Field(default_factory=dict)
    class_latents: dict[str, ClassLatentEntry] | None = None
    size_bytes: int | None = Field(None, ge=0)
    parameters: int | None = Field(None, ge=0)

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, metrics: dict) -> dict:
        _finite(metrics, "metrics")
        return metrics


def validate_card(card: Any) -> Card:
    """The card as a typed `Card`, or CardError naming the first few fields that are wrong."""
    try:
        return Card.model_validate(card)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc']) or 'card'}: {error['msg']}"
                             for error in e.errors(include_url=False, include_input=False)[:5])
        raise CardError(f"the card is malformed ({problems})") from None


def check_config(family: str, config_class: type, config: dict) -> None:
    """Every field of `config` is one of `config_class`'s, of its type and within its bounds."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = set(config) - set(fields)
    if unknown:
        raise CardError(f"{family} config has unknown fields {sorted(unknown)}")
    for name, value in config.items():
        default = fields[name].default
        if name == "image_shape":
            _check_image_shape(family, value)
        elif isinstance(default, (str, bool)) or default is None:  # a choice (say a loss or a norm)
            if not (value is None or isinstance(value, (str, bool))) or len(str(value)) > MAX_CHOICE:
                raise CardError(f"{family} config {name}={value!r} is not a short string or a boolean")
        elif isinstance(default, tuple):  # a short list of numbers (say a U-Net's width per level)
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_SEQUENCE:
                raise CardError(f"{family} config {name}={value!r} is not a list of 1 to {MAX_SEQUENCE} numbers")
            for item in value:
                _check_number(family, name, item, fields[name], default[0])
        else:
            _check_number(family, name, value, fields[name], default)


def _check_number(family: str, name: str, value: Any, field: dataclasses.Field, default: Any) -> None:
    low, high = field.metadata.get("bounds", UNDECLARED_BOUNDS)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not low <= value <= high:
        raise CardError(f"{family} config {name}={value!r} is outside [{low}, {high}]")
    if isinstance(default, int) and not isinstance(value, int):
        raise CardError(f"{family} config {name}={value!r} is not an integer")


def _check_image_shape(family: str, shape: Any) -> None:
    ok = (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(type(v) is int for v in shape)
          and shape[0] in IMAGE_CHANNELS and all(IMAGE_SIDE[0] <= v <= IMAGE_SIDE[1] for v in shape[1:]))
    if not ok:
        raise CardError(f"{family} config image_shape={shape!r} is not [C, H, W] with C in {IMAGE_CHANNELS} "
                        f"and H, W in [{IMAGE_SIDE[0]}, {IMAGE_SIDE[1]}]")
