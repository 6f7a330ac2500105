"""`genserve`: run the service, train and evaluate models, and call a running server.

    genserve serve --port 8000                  (what `make serve` runs; train and evaluate: models.*)
    genserve models                             what the server serves, and what each model can do
    genserve reload                             load new or retrained checkpoints into a running server
    genserve sample dcgan -n 16 --seed 3 -o grid.png
    genserve interpolate vae --start seed:1 --end class:Sneaker --steps 8 -o path.gif
    genserve traverse vae --center seed:0 --axis 0 --axis class:Sneaker --steps 5 -o walk.png
    genserve arithmetic dcgan seeds:1,2,3 - seeds:4,5,6 + seeds:7,8,9 -n 4 --noise 0.3 -o sum.png
    genserve reconstruct vae shirt.png -o pair.png
    genserve complete pixelcnn shirt.png --keep-rows 14 -n 4 --seed 1 -o completions.png
    genserve likelihood pixelcnn shirt.png
    genserve latents dcgan class:Sneaker

The server is --url, else $GENSERVE_URL, else http://127.0.0.1:8000. Images are written to -o as
PNG, or as an animated GIF when the name ends in .gif (interpolate, and traverse along one axis);
JSON answers are printed. A latent is written KIND:VALUE: seed:3, seeds:1,2,3, class:Sneaker,
vector:0.1,-0.2,..., image:FILE. Arithmetic terms are joined by + and -, each optionally weighted:
0.5*seed:3. A traverse axis is a dimension (--axis 0) or a latent to walk toward (--axis class:Bag).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import signal
import sys
from pathlib import Path

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
ANIMATED = ("interpolate", "traverse")  # the endpoints that answer ?format=gif


class CliError(Exception):
    """A message for the user, and a non-zero exit."""


# -- latents, terms, axes and images ------------------------------------------------------------

def parse_latent(text: str) -> dict:
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: write a latent as KIND:VALUE, e.g. seed:3 or class:Sneaker")
    try:
        if kind == "seed":
            return {"seed": int(value)}
        if kind == "seeds":
            return {"seeds": [int(v) for v in value.split(",")]}
        if kind == "vector":
            return {"vector": [float(v) for v in value.split(",")]}
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if kind == "class":
        return {"class": value}
    if kind == "image":
        return {"image": read_image(value)}
    raise argparse.ArgumentTypeError(f"{text!r}: unknown latent kind {kind!r}; use seed, seeds, vector, class or image")


def parse_axis(text: str) -> dict:
    """`3` is latent dimension 3; anything else is a latent to walk toward."""
    return {"dim": int(text)} if text.isdigit() else {"toward": parse_latent(text)}


def read_image(path: str) -> str:
    try:
        return base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None


def parse_terms(tokens: list[str]) -> list[dict]:
    """`A - B + 0.5*C` -> [{"latent": A, "weight": 1}, {"latent": B, "weight": -1}, {"latent": C, "weight": 0.5}]."""
    terms, sign = [], 1.0
    expect_term = True
    for token in tokens:
        if not expect_term:
            if token not in ("+", "-"):
                raise argparse.ArgumentTypeError(f"expected + or - between terms, got {token!r}")
            sign, expect_term = (1.0 if token == "+" else -1.0), True
            continue
        weight, star, spec = token.rpartition("*")
        try:
            factor = float(weight) if star else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"{token!r}: the weight before * is not a number") from None
        terms.append({"latent": parse_latent(spec), "weight": sign * factor})
        expect_term = False
    if expect_term:
        raise argparse.ArgumentTypeError("the terms end with an operator" if terms else "give at least one term")
    return terms


# -- the HTTP client ----------------------------------------------------------------------------

def _describe(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI validation errors
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body')}: {e.get('msg')}"
                           for e in detail)
    return f"the server answered {response.status_code}: {detail}"


def call(url: str, method: str, path: str, timeout: float, ok=(200,), **kwargs) -> httpx.Response:
    """One request; anything but a status in `ok` is a CliError saying what went wrong."""
    try:
        response = httpx.request(method, url.rstrip("/") + path, timeout=timeout, **kwargs)
    except httpx.TimeoutException:
        raise CliError(f"no answer from {url} within {timeout:g} s") from None
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the genserve server at {url} ({e}); is it running? "
                       f"(start one with `genserve serve`, or set GENSERVE_URL)") from None
    if response.status_code not in ok:
        raise CliError(_describe(response))
    return response


def _json(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        raise CliError(f"the server's answer is not JSON: {response.text[:100]!r}") from None


# What each client command sends: (endpoint, JSON body). Commands whose answer is an image write it
# to -o; the others print JSON.
REQUESTS = {
    "sample": lambda a: ("samples", {"n": a.n, "seed": a.seed, "temperature": a.temperature, "class": a.class_,
                                     "nrow": a.nrow, "steps": a.steps}),
    "interpolate": lambda a: ("interpolate", {"start": a.start, "end": a.end, "steps": a.steps, "method": a.method}),
    "traverse": lambda a: ("traverse", {"center": a.center, "axes": a.axis or [{"dim": 0}], "steps": a.steps,
                                        "extent": a.extent, "spacing": a.spacing}),
    "arithmetic": lambda a: ("arithmetic", {"terms": parse_terms(a.terms), "n": a.n, "noise": a.noise,
                                            "seed": a.seed, "show_terms": not a.result_only}),
    "reconstruct": lambda a: ("reconstruct", {"image": a.image}),
    "complete": lambda a: ("complete", {"image": a.image, "keep_rows": a.keep_rows, "n": a.n, "seed": a.seed,
                                        "temperature": a.temperature, "class": a.class_}),
    "likelihood": lambda a: ("likelihood", {"image": a.image, "class": a.class_}),
    "latents": lambda a: ("latents", {"latent": a.latent}),
}
PRINTED = ("likelihood", "latents")


def run_request(args) -> str:
    """Send the command's request; write the image to -o, or return the JSON to print."""
    endpoint, body = REQUESTS[args.command](args)
    body = {key: value for key, value in body.items() if value is not None}
    path = f"/v1/models/{args.model}/{endpoint}"
    if args.command in PRINTED:
        return json.dumps(_json(call(args.url, "POST", path, args.timeout, json=body)))
    gif = args.output.suffix.lower() == ".gif"
    if gif and args.command not in ANIMATED:
        raise CliError(f"{args.command} writes PNG only; a GIF is made by {' and '.join(ANIMATED)}")
    response = call(args.url, "POST", path, args.timeout, json=body, params={"format": "gif"} if gif else None)
    try:
        args.output.write_bytes(response.content)
    except OSError as e:
        raise CliError(f"cannot write {args.output}: {e.strerror}") from None
    seed = response.headers.get("X-Seed")
    return f"wrote {args.output}" + (f" (seed {seed})" if seed else "")


def list_models(args) -> str:
    """The models the server serves, one a line (or its JSON), then the folders that failed."""
    models = _json(call(args.url, "GET", "/v1/models", args.timeout))
    if args.json:
        return json.dumps(models)
    readiness = _json(call(args.url, "GET", "/readyz", args.timeout, ok=(200, 503)))
    lines = [model_line(info) for info in models["models"]] or ["no models are served"]
    lines += [f"failed: {name}: {reason}" for name, reason in sorted(readiness.get("failed", {}).items())]
    return "\n".join(lines)


def reload_models(args) -> str:
    """POST /v1/admin/reload (with the admin token when one is given): the models served after it,
    and the folders that failed. Some failed (409) or none loaded (503) is a non-zero exit."""
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    response = call(args.url, "POST", "/v1/admin/reload", args.timeout, ok=(200, 401, 404, 409, 503),
                    headers=headers)
    if response.status_code in (401, 404):
        raise CliError(f"{_describe(response)}: reloading takes the server's GENSERVE_ADMIN_TOKEN (--token, or "
                       f"GENSERVE_ADMIN_TOKEN here); without one, only a server bound to loopback reloads, "
                       f"asked from its own machine")
    readiness = _json(response)
    lines = [f"serving {len(readiness['models'])} models: {', '.join(readiness['models']) or 'none'}"]
    lines += [f"failed: {name}: {reason}" for name, reason in sorted(readiness.get("failed", {}).items())]
    if response.status_code != 200:
        raise CliError("reloaded, but " + "; ".join(lines))
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (what went wrong, and where the help is), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genserve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = commands.add_parser("serve", help="run the HTTP service (uvicorn); GENSERVE_* settings apply")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--weights-dir")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    commands.add_parser("train", help="train a model (python -m models.train ...; see genserve train --help)")
    commands.add_parser("evaluate", help="evaluate checkpoints (python -m models.evaluate ...)")

    url = os.environ.get("GENSERVE_URL") or DEFAULT_URL

    def client(name: str, help_text: str, model: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        if model:
            sub.add_argument("model", help="model name, e.g. dcgan (genserve models lists them)")
        sub.add_argument("--url", default=url, help=f"the server (default: $GENSERVE_URL, else {DEFAULT_URL})")
        sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
        if name not in PRINTED and model:
            sub.add_argument("-o", "--output", type=Path, default=Path(f"{name}.png"),
                             help="the file to write: PNG, or for a name ending in .gif an animation")
        return sub

    models = client("models", "list the models a server serves, what each can do, and those that failed", False)
    models.add_argument("--json", action="store_true", help="print GET /v1/models as it is")

    sample = client("sample", "a grid of samples")
    sample.add_argument("-n", type=int, default=16)
    sample.add_argument("--seed", type=int, help="image i is the image of seed + i (random when omitted)")
    sample.add_argument("--temperature", type=float)
    sample.add_argument("--class", dest="class_", metavar="CLASS")
    sample.add_argument("--nrow", type=int, help="images per row")
    sample.add_argument("--steps", type=int, help="sampler steps, for a model that takes them (its sampling_steps)")

    interpolate = client("interpolate", "a row of images between two latents")
    interpolate.add_argument("--start", type=parse_latent, required=True, metavar="LATENT")
    interpolate.add_argument("--end", type=parse_latent, required=True, metavar="LATENT")
    interpolate.add_argument("--steps", type=int, default=8)
    interpolate.add_argument("--method", choices=["slerp", "lerp"], default="slerp")

    traverse = client("traverse", "decodings along one axis (a row) or two (a grid) through a center")
    traverse.add_argument("--center", type=parse_latent, default={"seed": 0}, metavar="LATENT", help="default seed:0")
    traverse.add_argument("--axis", type=parse_axis, action="append", metavar="AXIS",
                          help="a latent dimension (0) or a latent to walk toward (class:Sneaker); "
                               "twice for a grid; default: dimension 0")
    traverse.add_argument("--steps", type=int, default=9)
    traverse.add_argument("--extent", type=float, default=3.0, help="linear offsets run from -extent to extent")
    traverse.add_argument("--spacing", choices=["linear", "gaussian"], default="linear")

    arithmetic = client("arithmetic", "latent arithmetic, e.g. seeds:1,2,3 - seeds:4,5,6 + seeds:7,8,9")
    arithmetic.add_argument("terms", nargs="+", metavar="TERM", help="latents joined by + and -")
    arithmetic.add_argument("-n", type=int, default=1, help="result images (the sum, then variations)")
    arithmetic.add_argument("--noise", type=float, default=0.0)
    arithmetic.add_argument("--seed", type=int)
    arithmetic.add_argument("--result-only", action="store_true", help="leave the operands out of the grid")

    reconstruct = client("reconstruct", "an image (PNG or JPEG) beside its reconstruction")
    reconstruct.add_argument("image", type=read_image, metavar="IMAGE")

    complete = client("complete", "the image's top rows kept, the rest sampled n times")
    complete.add_argument("image", type=read_image, metavar="IMAGE")
    complete.add_argument("--keep-rows", type=int, default=14)
    complete.add_argument("-n", type=int, default=4)
    complete.add_argument("--seed", type=int, help="completion i uses seed + i (random when omitted)")
    complete.add_argument("--temperature", type=float)
    complete.add_argument("--class", dest="class_", metavar="CLASS")

    likelihood = client("likelihood", "print -log p(image) in nats and bits/dim (JSON)")
    likelihood.add_argument("image", type=read_image, metavar="IMAGE")
    likelihood.add_argument("--class", dest="class_", metavar="CLASS")

    latents = client("latents", "print the latent vector of a latent spec (JSON)")
    latents.add_argument("latent", type=parse_latent, metavar="LATENT")

    reload = client("reload", "make the server load its weights folder again (new or retrained models)", False)
    reload.add_argument("--token", default=os.environ.get("GENSERVE_ADMIN_TOKEN"),
                        help="the server's admin token (default $GENSERVE_ADMIN_TOKEN)")
    return parser


# -- serve --------------------------------------------------------------------------------------

def model_line(info: dict) -> str:
    """One model as `genserve models` and the serve announcement list it."""
    return (f"{info['name']:<16} {info['family']:<10} {'x'.join(map(str, info['image_shape'])):<9} "
            f"{', '.join(c for c in info['capabilities'] if c != 'encode')}")


EVERY_INTERFACE = ("0.0.0.0", "::", "")


def loopback(host: str) -> bool:
    """Whether a server bound to `host` listens on loopback only (and so reloads without a token)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def announcement(app, host: str, port: int) -> str:
    """What a started server says: where it is, what it serves, what failed, where to look."""
    settings, registry = app.state.settings, app.state.registry
    shown = "127.0.0.1" if host in EVERY_INTERFACE else host
    url = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"  # an IPv6 address in brackets
    where = f" (listening on {host or '*'}: every interface)" if host in EVERY_INTERFACE else ""
    models = [registry.models[name].info(settings.limits()) for name in sorted(registry.models)]
    lines = [f"genserve is ready at {url}{where}, serving {len(models)} "
             f"model{'' if len(models) == 1 else 's'} from {settings.weights_dir} on {registry.device}:"]
    lines += [f"  {model_line(info)}" for info in models]
    lines += [(f"  failed: {name}: {reason}" if name != "*" else f"  {reason} ({settings.weights_dir})")
              for name, reason in sorted(registry.failed.items())]
    lines += [f"demo page: {url}/", f"API docs:  {url}/docs",
              f"new or retrained models in {settings.weights_dir}: `genserve reload`" + (
                  " with GENSERVE_ADMIN_TOKEN" if settings.admin_token else
                  " from this machine" if loopback(host) else ": off (set GENSERVE_ADMIN_TOKEN to allow it)"),
              "stop it with Ctrl+C"]
    return "\n".join(lines)


def serve(args, worker_factory=None) -> None:
    """Serve until SIGTERM; `worker_factory` is create_app's (its default when None)."""
    import uvicorn

    from app.config import load_settings

    overrides = {key: getattr(args, key) for key in ("host", "port", "weights_dir", "device", "log_level")}
    settings = load_settings(**{key: value for key, value in overrides.items() if value is not None})
    from app.main import create_app  # after the settings are checked: importing it builds an app from them
    from app.server import uvicorn_config
    from app.worker import Worker

    class AnnouncingServer(uvicorn.Server):
        """uvicorn's server, which says once it listens where it is and what it serves: loading
        the models takes a while, and a silent terminal reads as a hung one."""

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1]  # the real one, also for --port 0
                print(announcement(app, settings.host, port), flush=True)

    print(f"genserve: loading the models in {settings.weights_dir} ...", flush=True)
    app = create_app(settings, worker_factory or Worker)
    # On SIGTERM uvicorn stops accepting and lets requests in flight finish (up to the grace); then it
    # raises SIGTERM again for the default handler to end the process (status -15). A server that
    # shut down cleanly exits 0 instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    AnnouncingServer(uvicorn_config(app, settings)).run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # train and evaluate hand every argument, --help included, to the training module.
    if argv[:1] == ["train"]:
        from models.training.command import main as train
        train(argv[1:])
        return 0
    if argv[:1] == ["evaluate"]:
        from models.evaluation.evaluate import main as evaluate
        evaluate(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from app.config import SettingsError
        try:
            serve(args)
        except SettingsError as e:  # a setting out of its bounds, from the flags or GENSERVE_*
            parser.exit(2, f"genserve serve: error: {e}\n")
        return 0
    try:
        commands = {"models": list_models, "reload": reload_models}
        print(commands.get(args.command, run_request)(args))
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    except CliError as e:
        print(f"genserve: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("genserve: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
