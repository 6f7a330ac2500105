"""The one-shot device check of issue 43: run by bench/gpu_check.sh, whose header gives the call.

    python -m bench.gpu_check [--out DIR] [--budget-s 420] [--on-cpu]

On a CUDA device, within `--budget-s` seconds, each stage a subprocess with a time limit of its
own, its output into DIR/gpu_check.log and its figures into DIR/gpu_check.json (written again after
every stage, so that a run cut short keeps what it measured):

  device      name, driver, memory, torch and CUDA versions (torch, nvidia-smi)
  sampling    bench.gpu_sampling: PixelCNN and PixelRNN, 16 images naive, cached, and cached with
              CUDA graphs, and whether they draw the same pixels
  tests       tests/app/test_api_*.py and tests/models/test_cuda_graphs.py, GENSERVE_DEVICE=cuda:
              passed, failed, skipped, and the failures by name
  serve       bench.serve: DCGAN and VAE, one image a request, c=1 and c=32, batching on and off:
              requests/s and p99 (its `raw` loop runs on the CPU: not a GPU figure)
  tests_bf16  the same tests with GENSERVE_DTYPE=bfloat16 (app/config.py's CUDA dtypes), where
              tests that compare pixels with float32 are expected to fail
  peers       bench.peers: genserve beside LitServe, both on the GPU, c=1 and c=32 (when litserve
              imports: carried as a wheel)

A stage that no longer fits the budget is recorded as skipped. Without a CUDA device it writes
{"cuda": false, ...}, prints "no CUDA device" and exits 0; `--on-cpu` runs every stage on the CPU
anyway, shortened, to try the plumbing before a GPU is lent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/models/test_cuda_graphs.py", *sorted(str(p.relative_to(REPO)) for p in (REPO / "tests/app").glob("test_api_*.py"))]
RESERVE_S = 15  # kept back from the budget to stop a stage and write the JSON
STOP_GRACE_S = 15  # after SIGINT (a bench's servers are stopped by its `finally`), before SIGKILL


@dataclass
class Stage:
    name: str
    command: list[str]
    limit_s: float  # at most this long, and never past the budget
    parse: Callable[[str, Path], dict]  # (its output, its JUnit report's path) -> figures
    env: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # modules it imports; missing ones skip it


def device_info() -> dict:
    info = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "python": sys.version.split()[0], "cpus": len(os.sched_getaffinity(0))}
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=False)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        info["nvidia_smi"] = f"not run: {error}"
    return info


# -- what each stage prints, read back ----------------------------------------------------------

def last_json(output: str, _: Path) -> dict:
    """bench.gpu_sampling's closing `JSON {...}` line."""
    lines = [line for line in output.splitlines() if line.startswith("JSON ")]
    return json.loads(lines[-1][5:]) if lines else {"error": "no JSON line in the output"}


def junit(output: str, report: Path) -> dict:
    """Counts and failures from pytest's JUnit XML, and its summary line."""
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    result = {"summary": summary[-1].strip("= ") if summary else None}
    if not report.is_file():
        return {**result, "error": "pytest wrote no report"}
    suite = ET.parse(report).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").splitlines()
            failed.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:200] if message else ''}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**result, "passed": passed, "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"], "failures": failed[:40]}


def serve_lines(output: str, _: Path) -> dict:
    """bench.serve's `MODEL n=N c=C batching=on|off KEY VALUE` lines, the service's own figures."""
    figures: dict = {}
    for model, n, c, mode, key, value in re.findall(r"^(\S+) n=(\d+) c=(\d+) batching=(on|off) (\S+) (\S+)$",
                                                   output, re.MULTILINE):
        if key in ("requests/s", "p50_ms", "p99_ms", "mean_batch", "failed"):
            figures.setdefault(f"{model} n={n} c={c} batching={mode}", {})[key] = float(value)
    ratios = dict(re.findall(r"^(\S+ n=\d+ c=\d+) batching_ratio (\S+)$", output, re.MULTILINE))
    return {"configurations": figures, "batching_ratio": {k: float(v) for k, v in ratios.items()}}


def peers_lines(output: str, _: Path) -> dict:
    """bench.peers' median lines and its ratio lines."""
    medians = {}
    for name, client, c, rest in re.findall(r"^(\S+) client=(\S+) c=(\d+) median (.*)$", output, re.MULTILINE):
        pairs = rest.split()
        medians[f"{name} client={client} c={c}"] = {k: float(v) for k, v in zip(pairs[::2], pairs[1::2])}
    ratios = {f"{label} client={client} c={c}": float(value) for label, client, c, value
              in re.findall(r"^(\S+/\S+) client=(\S+) c=(\d+) (\S+) \(rounds", output, re.MULTILINE)}
    same = re.findall(r"^same_png_for_seed_0 (\S+)$", output, re.MULTILINE)
    return {"medians": medians, "ratios": ratios, "same_png_for_seed_0": same[-1] if same else None}


# -- running them -------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """The processes below `pid` (/proc): a bench's servers run in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def stop(process: subprocess.Popen) -> None:
    """SIGINT (KeyboardInterrupt: a bench stops its servers on the way out), then SIGKILL; and any
    process it had started that is left (a server interrupted before it was ready is not stopped
    by bench/process.py)."""
    started = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    give_up = time.monotonic() + STOP_GRACE_S
    for pid in started:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    while any(alive(pid) for pid in started) and time.monotonic() < give_up:
        time.sleep(0.2)
    for pid in filter(alive, started):
        os.kill(pid, signal.SIGKILL)

def run_stage(stage: Stage, log, deadline: float, scratch: Path) -> dict:
    left = deadline - time.monotonic() - RESERVE_S
    missing = [module for module in stage.needs if importlib.util.find_spec(module) is None]
    if missing:
        return {"skipped": f"cannot import {', '.join(missing)} (carry its wheels: scripts/gpu-carry)"}
    if left < 30:
        return {"skipped": f"{left:.0f} s of the budget left"}
    limit = min(stage.limit_s, left)
    report = scratch / f"{stage.name}.xml"
    command = [part.replace("{report}", str(report)) for part in stage.command]
    log.write(f"\n===== {stage.name}: {' '.join(command)} (limit {limit:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **stage.env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []

    def copy_output() -> None:
        for line in process.stdout:
            lines.append(line)
            log.write(line)
            log.flush()

    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop(process)
    reader.join(timeout=10)
    result = {"seconds": round(time.monotonic() - start, 1), "returncode": process.returncode, "timed_out": timed_out}
    try:
        result.update(stage.parse("".join(lines), report))
    except Exception as error:  # a stage's output that cannot be read is a finding, not a crash of the check
        result["parse_error"] = repr(error)
    log.write(f"===== {stage.name}: {json.dumps(result)[:2000]}\n")
    log.flush()
    return result


def stages(on_cpu: bool) -> list[Stage]:
    python = sys.executable
    cuda = {"GENSERVE_DEVICE": "cpu" if on_cpu else "cuda", "PYTHONUNBUFFERED": "1"}
    tests = ["tests/app/test_api_models.py"] if on_cpu else TESTS
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--timeout=120", "-rfE",
              "--junitxml={report}", *tests]
    if not on_cpu and importlib.util.find_spec("xdist") is not None:
        pytest += ["-n", "4", "--dist", "loadfile"]  # 16 cores there: each worker its own app
    sampling = [python, "-m", "bench.gpu_sampling"] + (["--images", "2", "--repeats", "1", "--no-naive"] if on_cpu else [])
    serve = [python, "-m", "bench.serve", "--models", "dcgan,vae", "--sizes", "1", "--concurrency", "1,32",
             "--seconds", "1" if on_cpu else "5", "--raw-seconds", "0.5", "--requests", "20" if on_cpu else "5000"]
    peers = [python, "-m", "bench.peers", "--clients", "per_user", "--concurrency", "1,32", "--rounds", "1",
             "--seconds", "1" if on_cpu else "4"]
    serving = ("fastapi", "pydantic_settings", "uvicorn", "httptools", "multipart", "swagger_ui_bundle")
    return [
        Stage("sampling", sampling, 100, last_json, cuda),
        Stage("tests", pytest, 150, junit, cuda, serving),
        Stage("serve", serve, 100, serve_lines, cuda, serving),
        Stage("tests_bf16", pytest, 80, junit, {**cuda, "GENSERVE_DTYPE": "bfloat16"}, serving),
        Stage("peers", peers, 70, peers_lines, cuda, (*serving, "litserve")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "gpu_check")
    parser.add_argument("--budget-s", type=float, default=420, help="the whole check's time, stages included")
    parser.add_argument("--on-cpu", action="store_true", help="run the stages on the CPU, shortened (plumbing)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device_info(), "stages": {}}
    path = args.out / "gpu_check.json"

    def write() -> None:
        path.write_text(json.dumps(summary, indent=1) + "\n")

    if not summary["device"]["cuda"] and not args.on_cpu:
        summary["result"] = "no CUDA device"
        write()
        print(f"no CUDA device: nothing measured; {path} written")
        return 0
    with open(args.out / "gpu_check.log", "a") as log, tempfile.TemporaryDirectory() as scratch:
        log.write(f"device: {json.dumps(summary['device'])}\n")
        write()
        for stage in stages(args.on_cpu):
            summary["stages"][stage.name] = run_stage(stage, log, deadline, Path(scratch))
            write()
            print(f"{stage.name}: {json.dumps(summary['stages'][stage.name])[:600]}", flush=True)
    summary["seconds"] = round(args.budget_s - (deadline - time.monotonic()), 1)
    write()
    print(f"done in {summary['seconds']} s; {path} and {args.out / 'gpu_check.log'} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
