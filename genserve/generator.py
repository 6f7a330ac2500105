"""`Generator`: a checkpoint run in this process as the service runs it, with no HTTP in between.

Every method is an endpoint of the HTTP API under its name, with its arguments and defaults
(`class` is `class_` here), and returns the images of the API's answer cell by cell as
`PIL.Image.Image`s, pixel for pixel: the same per-seed rules (models.inference), the same worker
operations (app.operations), the module prepared as the worker prepares it (channels-last, dtype,
inference mode), each call one forward pass as one request is. What the service caps per request
(images, steps, terms) is not capped here: `sample` draws any number in passes of `batch_size`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from app.operations import COMPLETE, DECODE, ENCODE, INVERT, NLL, NLL_BOUND, PROJECT, SAMPLE, Operation
from genserve import arguments
from models import inference
from models.checkpoint import CheckpointError, load_checkpoint, resolve_device
from models.contract import Family
from models.families.projection import projection_latents, projection_state
from models.grid import to_uint8
from models.inference import ClassLatent, InvalidArgument, Unsupported

# Images per forward pass of `sample`: the service's max_batch, so that a call of up to that many
# images is one pass, as a request of as many images is.
BATCH_SIZE = 64


def load(folder: str | Path, device: str | torch.device | None = None, *, dtype: str = "float32",
         channels_last: bool = True) -> Generator:
    """The checkpoint in `folder` (model.safetensors and card.json, verified) ready to generate.
    `device`: "cpu", "cuda", "cuda:1" ...; by default the service's rule: CUDA when there is one.
    `dtype` ("float32", "float16", "bfloat16") applies on CUDA only, and `channels_last` to the
    families that ask for it, as the service's settings of the same names."""
    folder = Path(folder)
    try:
        device = resolve_device("auto" if device is None else str(device))
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but this torch sees no CUDA device")
    arguments.choice(dtype, ("float32", "float16", "bfloat16"), "dtype")
    try:
        module, card = load_checkpoint(folder, device)
        class_latents = inference.card_class_latents(module, card)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    if not module.capabilities:
        raise ValueError(f"{folder}: its {module.family} model generates nothing (its family declares no capabilities)")
    return Generator(folder.name, module, card, class_latents, device, inference.inference_dtype(device, dtype),
                     channels_last)


class Generator(inference.Model):
    """A loaded generator. `name` is its folder's name, as the service names it; `card` its card."""

    def __init__(self, name: str, module: Family, card: dict, class_latents: dict[str, ClassLatent],
                 device: torch.device, dtype: torch.dtype, channels_last: bool = True):
        super().__init__(name, module, card, class_latents)
        self.device, self.dtype = device, dtype
        inference.prepare(module, channels_last=channels_last, dtype=dtype)

    def __repr__(self) -> str:
        return (f"<genserve.Generator {self.name!r}: {self.family} {'x'.join(map(str, self.image_shape))}, "
                f"{', '.join(self.capabilities)}, on {self.device}>")

    @property
    def capabilities(self) -> tuple[str, ...]:
        return tuple(self.module.capabilities)

    # -- generation ---------------------------------------------------------------------------

    def sample(self, n: int = 16, seed: int | None = None, temperature: float = 1.0, class_: str | None = None,
               steps: int | None = None, *, batch_size: int = BATCH_SIZE, as_tensor: bool = False,
               progress: bool | None = None) -> list[Image.Image] | torch.Tensor:
        """n samples; image i is the image of seed `seed + i` (a seed is drawn when none is given;
        each image's is in its `info["seed"]`). `temperature` and `class_` as POST .../samples:
        the softmax temperature and the label of an autoregressive model, the scale of z and a
        draw around the class's mean latent for a latent model; `steps`, the sampler's, for a model
        that takes them. Drawn in passes of `batch_size`, with a progress bar when there are
        several (`progress` forces it on or off); `as_tensor`: one float tensor [n, C, H, W] in
        [0, 1] instead of images."""
        self._require("sample")
        n, batch_size = arguments.count(n, "n"), arguments.count(batch_size, "batch_size")
        first = inference.pick_seed(arguments.optional_seed(seed))
        temperature = arguments.number(temperature, "temperature")
        options = inference.sampler_steps(self, None if steps is None else arguments.count(steps, "steps"))
        label, class_latent = None, None
        if class_ is not None and self.module.sampling == "noise":
            label = inference.class_index(self, class_)
        elif class_ is not None:
            class_latent = inference.class_latent(self, class_)
        parts, show = [], n > batch_size if progress is None else progress
        with tqdm(total=n, unit="image", desc=self.name, disable=not show) as bar:
            for start in range(first, first + n, batch_size):
                seeds = range(start, min(start + batch_size, first + n))
                if self.module.sampling == "noise":
                    noise, labels = inference.sampling_noise(self, seeds, label)
                    parts.append(self._run(SAMPLE, noise, labels, temperature=temperature, **options))
                else:
                    z = inference.for_samples(self, seeds, temperature, class_latent)
                    parts.append(self._run(DECODE, z, **options))
                bar.update(len(seeds))
        images = torch.cat(parts)
        if as_tensor:
            return images
        pictures = to_pil(images)
        for i, picture in enumerate(pictures):
            picture.info["seed"] = first + i
        return pictures

    def interpolate(self, start, end, steps: int = 8, method: str = "slerp") -> list[Image.Image]:
        """`steps` images from latent `start` to latent `end`, both included, along a great circle
        ("slerp") or a straight line ("lerp")."""
        self._require("interpolate")
        steps = arguments.count(steps, "steps", least=2)
        method = arguments.choice(method, arguments.INTERPOLATIONS, "method")
        ends = self._latents([arguments.latent_spec(start, "start"), arguments.latent_spec(end, "end")])
        return to_pil(self._run(DECODE, inference.interpolate(ends[0], ends[1], steps, method)))

    def traverse(self, axes, center=None, steps: int = 9, extent: float = 3.0,
                 spacing: str = "linear") -> list[Image.Image]:
        """Decodings along one or two axes through `center` (default: seed 0's latent), row-major:
        center + t0 * a0 (+ t1 * a1). An axis is a dimension (an int, or {"dim": k}) or
        {"toward": latent}; the offsets run from -extent to extent ("linear") or are the standard
        normal's quantiles ("gaussian")."""
        self._require("traverse")
        axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
        if not 1 <= len(axes) <= 2:
            raise InvalidArgument(f"a traversal has one or two axes, not {len(axes)}")
        steps = arguments.count(steps, "steps", least=2)
        extent = arguments.number(extent, "extent")
        spacing = arguments.choice(spacing, arguments.SPACINGS, "spacing")
        dims, specs = [], [arguments.latent_spec({"seed": 0} if center is None else center, "center")]
        for i, axis in enumerate(axes):
            axis = {"dim": axis} if not isinstance(axis, dict) else axis
            if set(axis) == {"dim"}:
                dims.append(arguments.count(axis["dim"], f"axis {i}'s dim", least=0))
            elif set(axis) == {"toward"}:
                dims.append(None)
                specs.append(arguments.latent_spec(axis["toward"], f"axis {i}'s toward"))
            else:
                raise InvalidArgument(f"axis {i} is a dimension (an int or {{'dim': k}}) or {{'toward': latent}}")
        resolved = self._latents(specs)
        towards = iter(resolved[1:])
        cells = inference.traverse(self, resolved[0], [next(towards) if d is None else d for d in dims], steps,
                                   extent, spacing)
        return to_pil(self._run(DECODE, cells))

    def arithmetic(self, terms, n: int = 1, noise: float = 0.0, seed: int | None = None,
                   show_terms: bool = True) -> list[Image.Image]:
        """sum(weight * latent) over `terms` (each {"latent": latent, "weight": w}, a tuple
        (latent, w), or a latent of weight 1), then n - 1 variations adding noise * z(seed + k);
        with `show_terms` the decoded operands come first, as in the API's grid."""
        self._require("arithmetic")
        terms = [arguments.term(term, i) for i, term in enumerate(terms)]
        if not terms:
            raise InvalidArgument("arithmetic needs at least one term")
        operands = self._latents([spec for spec, _ in terms])
        weights = [weight for _, weight in terms]
        results = inference.variations(self, inference.arithmetic(operands, weights), arguments.count(n, "n"),
                                       arguments.number(noise, "noise", zero=True),
                                       inference.pick_seed(arguments.optional_seed(seed)))
        return to_pil(self._run(DECODE, torch.cat([operands, results]) if show_terms else results))

    def latents(self, latent) -> list[float]:
        """The z of a latent, as the API's latents endpoint answers it ("vector")."""
        self._require("arithmetic")  # the service offers its latents endpoint with arithmetic
        return self._latents([arguments.latent_spec(latent, "latent")])[0].tolist()

    # -- images in ----------------------------------------------------------------------------

    def reconstruct(self, image) -> list[Image.Image]:
        """[the image as the model sees it, the decoding of its latent] (the encoder's mean, the
        inversion, or the projection: 100 deterministic optimiser steps through the decoder)."""
        self._require("reconstruct")
        pixels = self._image(image)
        return to_pil(torch.cat([pixels, self._run(DECODE, self._encode(pixels))]))

    def complete(self, image, keep_rows: int = 14, n: int = 4, seed: int | None = None, temperature: float = 1.0,
                 class_: str | None = None) -> list[Image.Image]:
        """[the image with the rows below `keep_rows` blacked out, then n completions that keep
        those rows]: completion i uses seed + i."""
        self._require("complete")
        keep_rows, n = arguments.count(keep_rows, "keep_rows", least=0), arguments.count(n, "n")
        if keep_rows > self.image_shape[1]:
            raise InvalidArgument(f"at most {self.image_shape[1]} rows are allowed, got {keep_rows}")
        temperature = arguments.number(temperature, "temperature")
        pixels = self._image(image)
        label = None if class_ is None else inference.class_index(self, class_)
        first = inference.pick_seed(arguments.optional_seed(seed))
        inputs, shown = inference.completion_inputs(self, pixels, keep_rows, range(first, first + n), label)
        return to_pil(torch.cat([shown, self._run(COMPLETE, *inputs, temperature=temperature)]))

    def likelihood(self, image, class_: str | None = None) -> dict:
        """-log p(x) of one image, as the API's JSON: {"model", "nll_nats", "bits_per_dim", "exact",
        "method"}: exact for an autoregressive model (over the classes unless `class_` is given),
        an upper bound (the negative ELBO, or a diffusion model's bound) otherwise."""
        self._require("likelihood")
        pixels = self._image(image)
        cond = inference.likelihood_condition(self, class_)
        exact = self.module.likelihood == "exact"
        nll = float(self._run(NLL if exact else NLL_BOUND, pixels, cond)[0])
        method = self.module.likelihood_method + (" given the class" if cond is not None else "")
        return {"model": self.name, "nll_nats": nll, "bits_per_dim": nll / (pixels[0].numel() * math.log(2)),
                "exact": exact, "method": method}

    # -- how a call runs ----------------------------------------------------------------------

    def _require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise Unsupported(f"model {self.name!r} ({self.family}) does not support {capability!r}; "
                              f"its capabilities are {list(self.capabilities)}")

    def _image(self, image) -> torch.Tensor:
        return arguments.image_tensor(image, self.image_shape, self.background)

    def _latents(self, specs: list[tuple[str, object]]) -> torch.Tensor:
        """(kind, value) specs -> z [len(specs), latent_dim]; images encoded together, as the
        service encodes the images of one request."""
        rows: list[torch.Tensor | None] = []
        images: list[tuple[int, torch.Tensor]] = []
        for index, (kind, value) in enumerate(specs):
            if kind != "image":
                rows.append(inference.latent(self, kind, value))
                continue
            if "image_latent" not in self.capabilities:
                raise Unsupported(f"model {self.name!r} cannot encode images; its capabilities are "
                                  f"{list(self.capabilities)}")
            images.append((index, self._image(value)))
            rows.append(None)
        if images:
            encoded = self._encode(torch.cat([pixels for _, pixels in images]))
            for (index, _), z in zip(images, encoded):
                rows[index] = z
        return torch.stack(rows)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> latents by the encoder's mean, the inversion, or the projection, run in the
        service's slices (app.latents.encode_images)."""
        if "encoder" in self.capabilities:
            return self._run(ENCODE, images)
        if "invert" in self.capabilities:
            return self._run(INVERT, images)
        state = projection_state(inference.projection_start(self, images.shape[0]))
        for first, steps in inference.projection_slices():
            state = self._run(PROJECT, images, state, first_step=first, steps=steps)
        return projection_latents(state)

    def _run(self, operation: Operation, *inputs: torch.Tensor | None, **params) -> torch.Tensor:
        """One forward pass, as the worker runs a job alone: inputs made contiguous (its merge),
        on the device in the module's dtype, in inference mode; the output in float32 on the CPU."""
        with torch.inference_mode():
            batch = [None if part is None else inference.model_input(torch.cat((part,)), self.device, self.dtype)
                     for part in inputs]
            return operation.run(self.module, *batch, **params).float().cpu()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """float [N, C, H, W] in [0, 1] -> N images ("L" gray or "RGB"), rounded to 8 bits as the
    service's PNGs are (models.grid.to_uint8)."""
    return [Image.fromarray(tile[:, :, 0] if tile.shape[2] == 1 else tile) for tile in to_uint8(images)]
