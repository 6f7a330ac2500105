"""`genserve`: run the service, train and evaluate models, and call a running server.

    genserve serve --port 8000
    genserve train dcgan --epochs 20            (python -m models.train)
    genserve evaluate ...                       (python -m models.evaluate)
    genserve sample dcgan -n 16 --seed 3 -o grid.png
    genserve interpolate vae --start seed:1 --end class:Sneaker --steps 8 -o path.png
    genserve arithmetic dcgan seeds:1,2,3 - seeds:4,5,6 + seeds:7,8,9 -n 4 --noise 0.3 -o sum.png

A latent is written KIND:VALUE: seed:3, seeds:1,2,3, class:Sneaker, vector:0.1,-0.2,..., image:FILE.
Arithmetic terms are joined by + and -, each optionally weighted: 0.5*seed:3.
"""

from __future__ import annotations

import argparse
import base64
import signal
import sys
from pathlib import Path

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """A message for the user, and a non-zero exit."""


# -- latent specs and terms ---------------------------------------------------------------------

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
        try:
            return {"image": base64.b64encode(Path(value).read_bytes()).decode("ascii")}
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror}") from None
    raise argparse.ArgumentTypeError(f"{text!r}: unknown latent kind {kind!r}; use seed, seeds, vector, class or image")


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


def post_image(url: str, path: str, body: dict, output: Path, timeout: float) -> str:
    """POST a JSON body, write the PNG answer to `output`; returns the seed header (or '')."""
    try:
        response = httpx.post(url.rstrip("/") + path, json=body, timeout=timeout)
    except httpx.TimeoutException:
        raise CliError(f"no answer from {url} within {timeout:g} s") from None
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the genserve server at {url} ({e}); is it running? "
                       f"(start one with `genserve serve`)") from None
    if response.status_code != 200:
        raise CliError(_describe(response))
    output.write_bytes(response.content)
    return response.headers.get("X-Seed", "")


def _client(args) -> tuple[str, dict]:
    if args.command == "sample":
        body = {"n": args.n, "seed": args.seed, "temperature": args.temperature, "class": args.class_,
                "nrow": args.nrow}
        return "samples", {k: v for k, v in body.items() if v is not None}
    if args.command == "interpolate":
        return "interpolate", {"start": args.start, "end": args.end, "steps": args.steps, "method": args.method}
    body = {"terms": parse_terms(args.terms), "n": args.n, "noise": args.noise, "seed": args.seed,
            "show_terms": not args.result_only}
    return "arithmetic", {k: v for k, v in body.items() if v is not None}


# -- the command line ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service (uvicorn); GENSERVE_* settings apply")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--weights-dir")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    commands.add_parser("train", help="train a model (python -m models.train ...; see genserve train --help)")
    commands.add_parser("evaluate", help="evaluate checkpoints (python -m models.evaluate ...)")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("model", help="model name, e.g. dcgan")
        sub.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
        sub.add_argument("-o", "--output", type=Path, default=Path(f"{name}.png"), help="PNG file to write")
        sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
        return sub

    sample = client("sample", "sample a grid of images from a running server")
    sample.add_argument("-n", type=int, default=16)
    sample.add_argument("--seed", type=int)
    sample.add_argument("--temperature", type=float)
    sample.add_argument("--class", dest="class_", metavar="CLASS")
    sample.add_argument("--nrow", type=int)

    interpolate = client("interpolate", "a row of images between two latents")
    interpolate.add_argument("--start", type=parse_latent, required=True, metavar="LATENT")
    interpolate.add_argument("--end", type=parse_latent, required=True, metavar="LATENT")
    interpolate.add_argument("--steps", type=int, default=8)
    interpolate.add_argument("--method", choices=["slerp", "lerp"], default="slerp")

    arithmetic = client("arithmetic", "latent arithmetic, e.g. seeds:1,2,3 - seeds:4,5,6 + seeds:7,8,9")
    arithmetic.add_argument("terms", nargs="+", metavar="TERM", help="latents joined by + and -")
    arithmetic.add_argument("-n", type=int, default=1, help="result images (the sum, then variations)")
    arithmetic.add_argument("--noise", type=float, default=0.0)
    arithmetic.add_argument("--seed", type=int)
    arithmetic.add_argument("--result-only", action="store_true", help="leave the operands out of the grid")
    return parser


def serve(args, worker_factory=None) -> None:
    """Serve until SIGTERM; `worker_factory` is create_app's (its default when None)."""
    import uvicorn

    from app.config import Settings
    from app.main import create_app
    from app.server import uvicorn_config
    from app.worker import Worker

    overrides = {key: getattr(args, key) for key in ("host", "port", "weights_dir", "device", "log_level")}
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    # On SIGTERM uvicorn stops accepting and lets requests in flight finish (up to the grace); then it
    # raises SIGTERM again for the default handler to end the process (status -15). A server that
    # shut down cleanly exits 0 instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.Server(uvicorn_config(create_app(settings, worker_factory or Worker), settings)).run()


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
        serve(args)
        return 0
    try:
        endpoint, body = _client(args)
        seed = post_image(args.url, f"/v1/models/{args.model}/{endpoint}", body, args.output, args.timeout)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    except CliError as e:
        print(f"genserve: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}" + (f" (seed {seed})" if seed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
