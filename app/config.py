"""Settings: the one place the service reads its environment (`GENSERVE_*`).

Everything else gets them passed down: `create_app(settings)` puts them on `app.state`, and the
routes reach them through a dependency. Every number is finite and bounded (the README's
Configuration table lists the bounds): a value that validates must not break the service, as
`GENSERVE_BATCH_WAIT_MS=inf` once killed the worker thread at the first batched request, and
`load_settings` turns a bad one into a one-line error naming its variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.schemas import MAX_LIST

MiB = 1 << 20
HOUR_S = 3600.0  # the longest any timeout or wait may be set to


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENSERVE_", extra="ignore", allow_inf_nan=False)

    weights_dir: Path = Field(Path("weights"), description="folder of checkpoints, one sub-folder per model")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, le=256, description="torch CPU threads for inference "
                                "(default: the usable cores less one, which is left to HTTP and PNG work)")
    channels_last: bool = Field(True, description="run the families that ask for it (convolutional decoders) "
                                                  "in channels-last memory, faster on CPU")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="inference dtype on CUDA; the CPU always runs float32")

    # Request limits, reported by GET /v1/models.
    max_n: int = Field(64, ge=1, le=1024, description="most images one request may ask for")
    max_n_sequential: int = Field(
        16, ge=1, le=256, validation_alias=AliasChoices("max_n_sequential", "GENSERVE_MAX_N_SEQUENTIAL",
                                                "max_n_pixelcnn", "GENSERVE_MAX_N_PIXELCNN"),
        description="most images one request may ask of a model that samples pixel by pixel (PixelCNN, "
                    "PixelRNN); GENSERVE_MAX_N_PIXELCNN, its old name, is still read (deprecated)")
    max_steps: int = Field(32, ge=2, le=256, description="most steps of an interpolation")
    max_terms: int = Field(16, ge=1, le=MAX_LIST, description="most terms of latent arithmetic, or seeds of one latent")
    max_image_bytes: int = Field(MiB, ge=1, le=16 * MiB, description="largest decoded image upload")
    max_body_bytes: int = Field(2 * MiB, ge=1, le=64 * MiB, description="largest request body; more is answered 413")

    # The inference worker.
    batch_wait_ms: float = Field(
        0.0, ge=0, le=60_000, description="how long a pass may wait for more requests to merge, and only while "
        "others are in the server on their way to the queue (0: a pass takes what is queued when the worker is free)")
    max_batch: int = Field(64, ge=1, le=4096, description="most images in one merged forward pass")
    queue_size: int = Field(256, ge=1, le=65_536, description="most requests waiting; more are answered 503")
    request_timeout_s: float = Field(60.0, gt=0, le=HOUR_S,
                                     description="a request still waiting after this is answered 504")
    saturation_wait_s: float = Field(5.0, gt=0, le=HOUR_S, description="a model whose oldest queued request has "
                                     "waited longer is reported saturated by /readyz")

    # Serving.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma-separated or a JSON list); none by default")
    graceful_timeout_s: float | None = Field(
        None, gt=0, le=HOUR_S, description="after SIGTERM, how long in-flight requests may take to finish "
        "(default: request_timeout_s + 5, so that any request still answered in time is)")
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools", description="uvicorn's HTTP/1.1 parser: httptools (C, the faster) or h11 (pure Python)")
    # The server's guard against slow or idle clients (uvicorn, see app/server.py).
    keep_alive_s: int = Field(
        75, ge=1, le=int(HOUR_S), description="how long an idle keep-alive connection stays open; longer than "
        "clients keep idle connections (httpx 5 s, nginx 60 s), so that the client, not the server, closes it and "
        "a request is never sent on a connection being closed")
    header_timeout_s: float = Field(10.0, gt=0, le=HOUR_S, description="time a client has to send a request's headers")
    body_timeout_s: float = Field(30.0, gt=0, le=HOUR_S, description="time a client has to send a request's body, once "
                                  "its headers are in")
    max_connections: int = Field(
        512, ge=1, le=65_536, description="requests in flight at most (past it a request is answered 503 with "
        "Retry-After; /healthz and /readyz are exempt), and open connections before each new one closes the "
        "connection idling longest between requests")
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=MiB, description="largest request line and headers")
    admin_token: SecretStr | None = Field(None, description="bearer token for /v1/admin/*; admin is off when unset "
                                          "(an empty one is refused: it turned admin on with every call 401)")
    log_level: Literal["debug", "info", "warning", "error"] = "warning"

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):  # a JSON list, or origins separated by commas
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("admin_token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: give a token, or unset the variable to turn admin off")
        return value

    @property
    def shutdown_grace_s(self) -> float:
        return self.graceful_timeout_s or self.request_timeout_s + 5

    def torch_threads(self) -> int:
        """`threads`, or the cores this process may use less one: torch's own default (every core)
        makes the worker's threads fight the event loop, and stall whenever another process runs."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return self.threads or max(1, cores - 1)

    def limits(self) -> dict:
        """The limits a client may need to know, as GET /v1/models reports them."""
        return {
            "max_n": self.max_n,
            "max_n_sequential": self.max_n_sequential,
            "max_n_pixelcnn": self.max_n_sequential,  # the old name of the same limit (deprecated)
            "max_steps": self.max_steps,
            "max_terms": self.max_terms,
            "max_image_bytes": self.max_image_bytes,
            "max_body_bytes": self.max_body_bytes,
        }


class SettingsError(ValueError):
    """A GENSERVE_* setting out of its bounds; the message names each, in one line."""


SECRET_SETTINGS = {"admin_token"}  # never echoed in an error


def load_settings(**overrides) -> Settings:
    """Settings from the environment (and `overrides`), or SettingsError naming what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = []
        for error in e.errors(include_url=False):
            field = str(error["loc"][0]).lower().removeprefix("genserve_") if error["loc"] else "?"
            shown = "" if field in SECRET_SETTINGS else f"={error.get('input')!r}"
            problems.append(f"GENSERVE_{field.upper()}{shown}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
