"""Request and response bodies (pydantic v2), with the examples that /docs shows.

Limits that are settings (n, steps, terms) are checked by the routes against the settings and
answered 422 in the same shape; everything static is checked here. Floats must be finite: JSON
bodies may carry NaN or Infinity, and they are refused with 422. Every list has a static cap, so
that no body, however built, costs more than a bounded amount of validation (and of error reply).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

SEED_MAX = 2**63 - 1
LATENT_KINDS = ("seed", "seeds", "vector", "class", "image")
# The static caps on lists: seeds in one latent and terms of one sum (the max_terms setting may only
# lower it), and a latent vector. MAX_LIST vectors of MAX_VECTOR numbers must stay within the JSON
# value budget (app.middleware.MAX_JSON_VALUES), so a model whose latent is longer (a diffusion
# model's noise image in colour, up to models.card.MAX_LATENT_DIM) takes its latents by seed, class
# or image over HTTP, and as vectors from Python.
MAX_LIST = 64
MAX_VECTOR = 1024

LATENT_MAX = 1e4


def _too_long(value: Any, max_length: int) -> None:
    if isinstance(value, list) and len(value) > max_length:
        raise PydanticCustomError("too_long", "List should have at most {max_length} items, not {actual_length}",
                                  {"max_length": max_length, "actual_length": len(value)})


def _at_most(max_length: int) -> BeforeValidator:
    """A list past `max_length` is one too_long error, its items unread (pydantic would first make
    an error for each bad item: 50,000 empty terms, 50,000 errors)."""
    def check(value: Any) -> Any:
        _too_long(value, max_length)
        return value
    return BeforeValidator(check)


def _one_error_per_list(valid: Callable[[Any], bool], what: str, max_length: int) -> BeforeValidator:
    """One error for a list with bad entries (naming the first), not one per entry: pydantic makes
    every error of a body, and each costs time on the event loop (some 20 us), so a body of 60,000
    bad numbers must not make 60,000. A list past `max_length` is one too_long error, unread."""
    def check(value: Any) -> Any:
        _too_long(value, max_length)
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not valid(item):
                    raise PydanticCustomError("list_entry", "entry {index} is not {what}",
                                              {"index": index, "what": what})
        return value
    return BeforeValidator(check)


def _is_seed(item: Any) -> bool:
    return type(item) is int and 0 <= item <= SEED_MAX


def _is_latent_number(item: Any) -> bool:
    return type(item) in (int, float) and math.isfinite(item) and -LATENT_MAX <= item <= LATENT_MAX


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Temperature = Annotated[float, Field(gt=0, le=2, description="PixelCNN, PixelRNN: softmax temperature; "
                                     "latent models: scales z's noise (see the samples endpoint)")]
Base64Image = Annotated[str, Field(min_length=1, description="a PNG or JPEG, base64 (a data: URL is accepted too)")]
ClassName = Annotated[str, Field(min_length=1, max_length=100, description="one of the model's classes")]
LatentNumber = Annotated[float, Field(ge=-LATENT_MAX, le=LATENT_MAX)]
Seeds = Annotated[list[Seed], _one_error_per_list(_is_seed, f"an integer in [0, {SEED_MAX}]", MAX_LIST)]
Vector = Annotated[list[LatentNumber],
                   _one_error_per_list(_is_latent_number, "a finite number within ±1e4", MAX_VECTOR)]

# A 28x28 gray rectangle, for the examples.
TINY_PNG = "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAHklEQVR42mNgoD9ghDHuIAmqQGkmfDpHJUclBw4AAO+WASimvrHEAAAAAElFTkSuQmCC"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_by_name=True)


class Latent(Body):
    """Exactly one of: seed, seeds, vector, class, image."""

    model_config = ConfigDict(json_schema_extra={
        "minProperties": 1, "maxProperties": 1,
        "examples": [{"seed": 7}, {"seeds": [1, 2, 3]}, {"class": "Sneaker"}, {"vector": [0.0, 0.5, -1.2]}],
    })

    seed: Seed | None = Field(None, description="z ~ N(0, I) drawn from this seed")
    seeds: Seeds | None = Field(None, min_length=1, max_length=MAX_LIST,
                                description="the mean of these seeds' z (at most max_terms)")
    vector: Vector | None = Field(None, min_length=1, max_length=MAX_VECTOR, description="z itself, latent_dim numbers")
    class_: ClassName | None = Field(None, alias="class", description="the model's mean latent of this class")
    image: Base64Image | None = Field(None, description="the encoder's mean for this image (VAE)")

    def _given(self) -> list[str]:
        return [kind for kind in LATENT_KINDS if getattr(self, "class_" if kind == "class" else kind) is not None]

    @model_validator(mode="after")
    def _exactly_one(self) -> Latent:
        given = self._given()
        if len(given) != 1:
            raise PydanticCustomError("latent_kind", "a latent is exactly one of {kinds}; got {given}",
                                      {"kinds": ", ".join(LATENT_KINDS), "given": ", ".join(given) or "none"})
        return self

    @property
    def kind(self) -> str:
        """Which one of LATENT_KINDS this latent is."""
        return self._given()[0]


class SamplesRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"n": 16, "seed": 7, "temperature": 1.0, "class": None, "nrow": None},
        {"n": 8, "seed": 3, "class": "Sneaker", "nrow": 4},
    ]})

    n: int = Field(16, ge=1, description="images, at most max_n (max_n_sequential for PixelCNN and PixelRNN)")
    seed: Seed | None = Field(None, description="image i is the image of seed + i; random when omitted")
    temperature: Temperature = 1.0
    class_: ClassName | None = Field(None, alias="class", description="PixelCNN, PixelRNN: the conditioning label; "
                                     "latent models: z = mean_c + temperature * spread * std_c * eps, spread 0.5 "
                                     "(1 for diffusion, whose class latents are its prior's)")
    nrow: int | None = Field(None, ge=1, description="images per grid row; default ceil(sqrt(n))")
    steps: int | None = Field(None, ge=1, description="the sampler's steps, for a model that takes them "
                              "(diffusion: DDIM steps; its default in /v1/models as sampling_steps)")


class SamplesQuery(SamplesRequest):
    """The query parameters of GET .../samples.png; other parameters (cache busters) are ignored."""

    model_config = ConfigDict(extra="ignore")


class InterpolateRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 8, "method": "slerp"},
        {"start": {"class": "Sneaker"}, "end": {"class": "Ankle boot"}, "steps": 6, "method": "lerp"},
    ]})

    start: Latent
    end: Latent
    steps: int = Field(8, ge=2, description="images, both ends included; at most max_steps")
    method: Literal["slerp", "lerp"] = "slerp"


class Axis(Body):
    """Exactly one of: dim, toward."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1,
                                                 "examples": [{"dim": 0}, {"toward": {"class": "Sneaker"}}]})

    dim: int | None = Field(None, ge=0, description="the unit vector of this latent dimension (0-based)")
    toward: Latent | None = Field(None, description="the unit vector from the center toward this latent")

    @model_validator(mode="after")
    def _exactly_one(self) -> Axis:
        if (self.dim is None) == (self.toward is None):
            raise PydanticCustomError("axis_kind", "an axis is exactly one of dim, toward")
        return self


TRAVERSE_MAX_STEPS = 16


class TraverseRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"center": {"seed": 0}, "axes": [{"dim": 0}], "steps": 9, "extent": 3.0, "spacing": "linear"},
        {"center": {"vector": [0.0, 0.0]}, "axes": [{"dim": 0}, {"dim": 1}], "steps": 16, "spacing": "gaussian"},
        {"center": {"class": "Sneaker"}, "axes": [{"toward": {"class": "Ankle boot"}}], "steps": 8},
    ]})

    center: Latent = Field(default_factory=lambda: Latent(seed=0), description="the latent at offset 0")
    axes: list[Axis] = Field(min_length=1, max_length=2, description="one axis: a row; two: a steps x steps grid, "
                             "row r along the first axis, column c along the second")
    steps: int = Field(9, ge=2, le=TRAVERSE_MAX_STEPS, description="offsets along each axis")
    extent: float = Field(3.0, gt=0, le=100, description="linear spacing: offsets from -extent to +extent")
    spacing: Literal["linear", "gaussian"] = Field(
        "linear", description="linear: evenly from -extent to +extent; gaussian: the standard normal's quantiles "
        "at (i + 0.5) / steps (Kingma & Welling's manifold figure), extent ignored")


class Term(Body):
    latent: Latent
    weight: float = Field(1.0, ge=-100, le=100)


class ArithmeticRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "terms": [{"latent": {"seeds": [1, 2, 3]}, "weight": 1.0}, {"latent": {"seeds": [4, 5, 6]}, "weight": -1.0},
                  {"latent": {"seeds": [7, 8, 9]}, "weight": 1.0}],
        "n": 4, "noise": 0.3, "seed": 11, "show_terms": True,
    }]})

    terms: Annotated[list[Term], _at_most(MAX_LIST)] = Field(min_length=1, max_length=MAX_LIST,
                                                              description="at most max_terms")
    n: int = Field(1, ge=1, description="result images: the exact sum, then n - 1 variations with noise")
    noise: float = Field(0.0, ge=0, le=10, description="scale of the N(0, I) noise added to the variations")
    seed: Seed | None = Field(None, description="variation k adds the z of seed + k; random when omitted")
    show_terms: bool = Field(True, description="put the decoded operands before the result")


class LatentsRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"latent": {"seed": 7}}]})

    latent: Latent


class LatentsResponse(BaseModel):
    vector: list[float]


class ImageRequest(Body):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image": TINY_PNG}]})

    image: Base64Image


class LikelihoodRequest(ImageRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"image": TINY_PNG}, {"image": TINY_PNG, "class": "Bag"}]})

    class_: ClassName | None = Field(None, alias="class", description="PixelCNN, PixelRNN: log p(x | class) instead of "
                                     "log p(x) marginalised over the classes")


class CompleteRequest(ImageRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"image": TINY_PNG, "keep_rows": 14, "n": 4, "seed": 1, "temperature": 1.0}]})

    keep_rows: int = Field(14, ge=0, description="rows kept from the top of the image; the rest are sampled")
    n: int = Field(4, ge=1, description="completions, at most max_n_sequential")
    seed: Seed | None = Field(None, description="completion i uses seed + i; random when omitted")
    temperature: Temperature = 1.0
    class_: ClassName | None = Field(None, alias="class", description="the completions' class "
                                     "(otherwise a conditional autoregressive model draws each completion's class from "
                                     "its posterior given the kept rows, with the completion's seed)")


class LikelihoodResponse(BaseModel):
    model: str
    nll_nats: float = Field(description="-log p(x) in nats for the image (an upper bound when exact is false)")
    bits_per_dim: float = Field(description="nll_nats / (C * H * W * ln 2)")
    exact: bool = Field(description="true for an exact likelihood (autoregressive models), "
                                   "false for a bound (the VAE's ELBO)")
    method: str


class ImagesResponse(BaseModel):
    """The ?format=json answer of an image endpoint."""

    images: list[str] = Field(description="one base64 PNG per cell of the grid, in order")
    seed: int | None = None
    latents: list[list[float]] | None = Field(None, description="each image's z, where there are latents")


class LatentMap(BaseModel):
    """The 2-D PCA of the encoder means of test images, from the model card (`python -m models.latent_map`).
    The point (x, y) of the plane is the latent mean + x * components[0] + y * components[1]."""

    model: str
    classes: list[str]
    images: int = Field(description="test images mapped")
    mean: list[float] = Field(description="the mean of their encoder means")
    components: list[list[float]] = Field(description="the two principal directions, unit vectors in latent space")
    explained_variance: list[float] = Field(description="the share of the means' variance along each")
    points: list[list[float | int]] = Field(description="each image's [x, y, label]: its place in the plane "
                                            "and the index of its class")


class Limits(BaseModel):
    max_n: int
    max_n_sequential: int = Field(description="most images per request of a model that samples pixel by pixel")
    max_n_pixelcnn: int = Field(description="the same as max_n_sequential, its old name", deprecated=True)
    max_steps: int
    max_terms: int
    max_image_bytes: int
    max_body_bytes: int


class CheckpointInfo(BaseModel):
    sha256: str | None
    trained_at: str | None
    epochs: float | None


class ModelInfo(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "dcgan", "family": "dcgan", "summary": "Adversarial: a generator trained to fool a critic; sharp samples.",
        "dataset": "fashion-mnist", "image_shape": [1, 28, 28],
        "latent_dim": 100, "classes": ["T-shirt/top", "Trouser"], "conditional": True,
        "capabilities": ["sample", "interpolate", "arithmetic"], "max_n": 64, "metrics": {"fid": 12.3},
        "checkpoint": {"sha256": "9f2c...", "trained_at": "2025-01-01T00:00:00+00:00", "epochs": 20},
    }]})

    name: str
    family: str
    summary: str = Field(description="what the model family is, in one line (from the family itself)")
    dataset: str | None
    image_shape: list[int] = Field(description="[C, H, W]")
    background: Literal["black", "white"] = Field(
        "black", description="what the training images stand on; an upload's transparency is composited on it")
    latent_dim: int | None = Field(description="null for models that do not sample from a latent (PixelCNN, PixelRNN)")
    sampling: Literal["latent", "noise"] | None = Field(
        None, description="how it samples: a latent through a decoder, or its own noise by its own procedure")
    sampling_steps: list[int] | None = Field(
        None, description="[default, most] steps a samples request may ask for (its `steps`); null: it takes none")
    classes: list[str]
    conditional: bool = Field(description="whether samples take a class")
    capabilities: list[str]
    max_n: int = Field(description="most images one request may ask of this model")
    parameters: int | None = Field(None, description="the module's parameters, from the card")
    latent_map: bool = Field(False, description="whether GET /v1/models/{name}/latent-map has a map of its latents")
    metrics: dict
    checkpoint: CheckpointInfo


class ModelList(BaseModel):
    models: list[ModelInfo]
    limits: Limits


class Readiness(BaseModel):
    ready: bool
    models: list[str]
    failed: dict[str, str] = Field(description="checkpoint folders that did not load, and why")
    saturated: dict[str, float] = Field(
        default_factory=dict, description="models whose oldest queued request has waited longer than "
        "saturation_wait_s, and how long (seconds)")


class ErrorDetail(BaseModel):
    detail: str | list
