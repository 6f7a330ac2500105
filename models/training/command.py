"""Train a model family and write a servable checkpoint.

    python -m models.train dcgan --out weights/dcgan-2
    python -m models.train pixelcnn --epochs 10 --set channels=32 --out weights/pixelcnn-32 --resume
    python -m models.train pixelcnn --epochs 12 --init-from weights/pixelcnn   # in place: no state at hand
    python -m models.train dcgan --dataset folder --data-dir my-images --image-size 32 --out weights/mine
    torchrun --nproc-per-node 4 -m models.train vae --out weights/vae-ddp     # data-parallel (DDP)

Defaults come from the family's preset (`models/families/configs/<family>.json` for the shipped
families: the settings that produced the shipped
weights); flags override them. Every epoch (and every `--save-minutes` within one) the training
state goes to `--state-dir` for `--resume`, and the weights, card and a sample grid to `--out`.
A run replaces only a checkpoint and a state it wrote, or with --overwrite (models/training/targets.py).
`--minutes` ends a run by its budget, not by the preset's epochs (models/training/budget.py); the
figures go to `--state-dir` as metrics.csv and TensorBoard events (models/training/metrics_log.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from models.data.augment import parse_policy
from models.checkpoint import build_model, load_checkpoint, resolve_device, save_checkpoint
from models.data import DATASETS, FOLDER, DatasetError, load_dataset, to_float
from models.families import FAMILIES, FamilyError, discover_from_environment
from models.grid import make_grid, png_bytes
from models.training.budget import RunBar, budget_line, budget_time, run_done, run_over
from models.training.metrics_log import LOG_EVERY, MetricsLog
from models.training.targets import check_writable, claim, load_state, new_run_id, save_state
from models.training.trainers import PRECISIONS, TRAINERS, extend_model

PREVIEW_SEED = 1234


# -- the loop ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    try:
        discover_from_environment()
    except FamilyError as e:
        raise SystemExit(f"error: {e}") from None
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--preset", type=Path, help="JSON of defaults (default: the family's preset_path(), models/families/configs/FAMILY.json)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override model config fields, e.g. channels=32 n_layers=5")
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="folder: your own images in --data-dir, one subfolder per class (see README)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--image-size", type=int, help="folder: images are cropped and scaled to N x N")
    parser.add_argument("--channels", type=int, choices=[1, 3],
                        help="folder: 1 gray, 3 colour (default: 3 when any image has colour)")
    parser.add_argument("--cache-dir", type=Path, help="folder: where its decoded pixels are kept (default runs/cache)")
    parser.add_argument("--upscale", action="store_true",
                        help="folder: enlarge images smaller than --image-size (Lanczos) instead of refusing them")
    parser.add_argument("--limit", type=int, help="train on the first N images only (smoke tests)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps in all")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-decay", type=float, help="learning rate multiplier per epoch (--lr-schedule exponential; "
                        "a run that --minutes ends spreads the decay of the preset's epochs over its budget)")
    parser.add_argument("--lr-schedule", choices=["exponential", "linear"],
                        help="exponential: times --lr-decay each epoch; linear: down to zero at the end of the "
                             "run (--epochs, --max-steps or --minutes, whichever comes first)")
    parser.add_argument("--minutes", type=float,
                        help="stop after this much training-loop time: CPU time per thread on the CPU (on a quiet "
                             "machine, the wall time; on a busy one, the compute the run was given), wall time on a "
                             "GPU. It replaces the preset's epochs: give --epochs as well to cap the run by both")
    parser.add_argument("--beta1", type=float)
    parser.add_argument("--grad-clip", type=float)
    parser.add_argument("--ema", type=float, help="generator EMA decay (dcgan)")
    parser.add_argument("--augment", metavar="POLICY",
                        help="differentiable augmentation of what the discriminator sees, e.g. color,translation,cutout (dcgan)")
    parser.add_argument("--gan-loss", choices=["bce", "hinge", "wasserstein"],
                        help="an adversarial family's loss, instead of the one its game declares")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the forward passes' arithmetic: bfloat16 autocast about doubles a CPU step where "
                             "the CPU has bfloat16 matrix units (AMX, AVX512-BF16); weights and optimiser stay float32")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, help="checkpoint folder (default weights/FAMILY); a checkpoint already "
                        "there is replaced only by the run that wrote it (--resume), by --init-from naming it, "
                        "or with --overwrite")
    parser.add_argument("--name", help="the checkpoint's name in its card (default: the --out folder's name)")
    parser.add_argument("--state-dir", type=Path, help="resumable training state (default runs/NAME, NAME the "
                        "--out folder's); another run's state there is replaced only with --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoint in --out and the state in --state-dir whoever wrote them")
    parser.add_argument("--resume", action="store_true", help="continue from --state-dir if it holds a state")
    parser.add_argument("--init-from", type=Path, help="start from this checkpoint's weights and training record")
    parser.add_argument("--train-only", metavar="PREFIX",
                        help="optimise only the parameters whose names start with PREFIX (e.g. decoder)")
    parser.add_argument("--save-minutes", type=float, help="also save the state this often within an epoch")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    epochs_given = args.epochs is not None

    preset_path = args.preset or FAMILIES[args.family].preset_path()
    preset = json.loads(preset_path.read_text()) if preset_path.exists() else {}
    for key, value in preset.get("train", {}).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    # --beta1 and --gan-loss stay None unless given: the family's game (or Adam's default) decides.
    defaults = dict(dataset="fashion-mnist", epochs=1, batch_size=64, lr=1e-3, lr_decay=1.0, lr_schedule="exponential",
                    grad_clip=0.0, ema=0.999, augment="", precision="float32", seed=0, save_minutes=10.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.preset_epochs = args.epochs
    if args.minutes and not epochs_given:
        args.epochs = None  # the budget ends the run (a small folder's epoch is a few steps)
    try:
        parse_policy(args.augment)
    except ValueError as e:
        parser.error(f"--augment: {e}")
    args.config_overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        args.config_overrides[key] = json.loads(value) if value[:1] in "0123456789-[{tfn" else value
    args.model_config = {**preset.get("model", {}), **args.config_overrides}
    args.out = args.out or Path("weights") / args.family
    args.state_dir = args.state_dir or Path("runs") / args.out.name
    return args


def learning_rate(args: argparse.Namespace, progress: dict, batches_per_epoch: int) -> float:
    """The learning rate for the next step: exponential per epoch, or linear to zero at the end of
    whichever limit ends the run first (a budgeted schedule, Li et al. 2020). Where the budget
    alone ends it, the exponential decay is the preset's epochs' decay, spread over the budget."""
    done = run_done(args, progress, batches_per_epoch)
    if args.lr_schedule == "exponential":
        return args.lr * args.lr_decay ** (progress["epoch"] if args.epochs is not None else args.preset_epochs * done)
    return args.lr * max(0.0, 1.0 - done)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_writable(args)  # at start, not at the first save an epoch in
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = 0, 1
    if distributed:  # launched by torchrun
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            args.device = f"cuda:{os.environ['LOCAL_RANK']}"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = device
    torch.manual_seed(args.seed + rank)
    is_main = rank == 0

    try:
        train = load_dataset(args.dataset, "train", args.data_dir, limit=args.limit, image_size=args.image_size,
                             channels=args.channels, cache_dir=args.cache_dir, quiet=args.quiet or not is_main,
                             upscale=args.upscale)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    model_config = {"image_shape": list(train.image_shape), **args.model_config}
    if not train.classes:
        if model_config.get("n_classes") == "dataset":
            can_do_without = getattr(FAMILIES[args.family].Config, "n_classes", None) == 0
            raise SystemExit(f"error: {args.family} takes its classes from the data (n_classes: \"dataset\"), but "
                             f"{args.data_dir} has no class subfolders; put the images in one folder per class"
                             + (", or --set n_classes=0 for a model without classes" if can_do_without else ""))
        if is_main:
            print(json.dumps({"event": "unlabelled data", "message": f"{args.data_dir} has no class subfolders: "
                              "no class-conditional sampling, class latents or class figures"}), flush=True)
    elif model_config.get("n_classes") == "dataset":
        model_config["n_classes"] = len(train.classes)
    batches_per_epoch = len(train) // (args.batch_size * world)
    if batches_per_epoch == 0:
        raise SystemExit(f"error: {len(train)} images are fewer than one batch of {args.batch_size * world}")
    progress = {"epoch": 0, "batch": 0, "step": 0, "wall_time_s": 0.0, "budget_time_s": 0.0, "history": []}
    if args.init_from:
        # Warm start from a servable checkpoint (the shipped weights, say) when no training state
        # is at hand: its config, weights and training record carry over; the optimiser starts afresh.
        # `--set` may add parts to it (a VAE's mixture prior): those start fresh, the rest loads.
        model, source_card = load_checkpoint(args.init_from, device)
        if args.config_overrides:
            model = extend_model(model, {**source_card["config"], **args.config_overrides}).to(device)
        record = source_card["training"]
        epochs_done = float(record["epochs"])
        progress.update(epoch=int(epochs_done), batch=round((epochs_done % 1) * batches_per_epoch),
                        step=record["steps"], wall_time_s=record["wall_time_s"],
                        budget_time_s=record.get("budget_time_s", record["wall_time_s"]), history=record.get("history", []))
    else:
        model = build_model(args.family, model_config).to(device)
    if model.objective not in TRAINERS:
        raise SystemExit(f"error: {args.family} declares no training objective: it is served, not trained here")
    trainer = TRAINERS[model.objective](model, args, distributed)  # the training its family declares

    state_file = args.state_dir / "state.pt"
    noise = torch.Generator().manual_seed(args.seed * 1000 + rank)
    state = None
    if args.resume and state_file.exists():
        state = load_state(trainer, state_file, device)
        progress = state["progress"]
        if "rng" in state and rank == 0:  # what draws from torch's own generator (a VAE's posterior samples)
            torch.set_rng_state(state["rng"].cpu())
        noise.set_state(state["noise"])
        if is_main:
            print(f"resumed from {state_file}: epoch {progress['epoch']}, batch {progress['batch']}, "
                  f"step {progress['step']}", flush=True)

    target = claim(args, state)  # before any training: never replace what this run was not asked to
    progress.setdefault("run", new_run_id())
    if is_main:
        print(budget_line(args, device, batches_per_epoch), flush=True)
    log = MetricsLog(args.state_dir, progress["run"], progress["step"] if state else None, enabled=is_main)

    def save(after_training: dict | None = None) -> None:
        """The checkpoint, then the state: a run killed between them resumes from the state before,
        onto a checkpoint that is its own. With what was fitted after training, the checkpoint only:
        a resumed run fits it again from the state (whose modules keep the shapes the run began with)."""
        if not is_main:
            return
        rng = torch.get_rng_state()  # a save leaves the run's randomness as it found it
        exported = trainer.export()
        # A glance at every save (on a small folder, saves within epochs are the only ones for long)
        preview = sample_preview(exported)
        grid = None if preview is None else make_grid(preview, nrow=8)
        target.check()
        card = save_checkpoint(exported, args.out, {
            "name": args.name or args.out.name,
            "dataset": args.dataset,
            **({"data_dir": args.data_dir} if args.dataset == FOLDER else {}),
            **({"upscale": True} if args.upscale else {}),  # evaluation reloads the data as trained on
            "classes": train.classes,
            "image_shape": list(train.image_shape),
            "background": train.background,
            "training": {
                "command": "python -m models.train " + shlex.join(sys.argv[1:] if argv is None else argv),
                "epochs": round(progress["epoch"] + progress["batch"] / batches_per_epoch, 2),
                "steps": progress["step"],
                "batch_size": args.batch_size * world,
                "world_size": world,
                "wall_time_s": round(progress["wall_time_s"], 1),
                "budget_time_s": round(budget_time(progress), 1),
                "hardware": hardware(device),
                "precision": args.precision,
                "torch": torch.__version__,
                "seed": args.seed,
                "train_images": len(train),
                "history": progress["history"],
                "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "run": progress["run"],
                **trainer.record(),
                **({"after_training": after_training} if after_training else {}),
            },
            "metrics": {},
        }, extra_files={} if grid is None else {"samples.png": png_bytes(grid)})
        target.wrote(card["sha256"])
        if grid is not None:
            log.image(grid, progress["step"])
        if after_training is None:
            save_state({"trainer": trainer.state_dict(), "progress": progress, "noise": noise.get_state(),
                        "rng": rng}, state_file)
        torch.set_rng_state(rng)

    bar = RunBar(args, progress, batches_per_epoch, disable=args.quiet or not is_main)
    last_save = time.monotonic()
    while not run_over(args, progress):
        epoch = progress["epoch"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed * 7919 + epoch))
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}  # a figure logged on some steps only (a GAN's loss_g) averages over those
        for batch in range(progress["batch"], batches_per_epoch):
            start, start_cpu = time.monotonic(), time.process_time()
            rate = learning_rate(args, progress, batches_per_epoch)
            for optimizer in trainer.optimizers():
                for group in optimizer.param_groups:
                    group["lr"] = rate
            global_index = order[(batch * world + rank) * args.batch_size:(batch * world + rank + 1) * args.batch_size]
            x = to_float(train.images[global_index]).to(device)
            y = train.labels[global_index].to(device)
            logs = trainer.step(x, y, noise)
            progress["step"] += 1
            progress["batch"] = batch + 1
            progress["wall_time_s"] += time.monotonic() - start
            # On the CPU the budget is the step's CPU time per thread, as models.baselines counts
            # it: a run beside others is given the compute it asked for, not the wall time.
            progress["budget_time_s"] = budget_time(progress) + (
                time.monotonic() - start if device.type == "cuda"
                else (time.process_time() - start_cpu) / torch.get_num_threads())
            for k, v in logs.items():
                totals[k] = totals.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            log.add(logs)
            bar.update(progress, logs)
            over = run_over(args, progress)
            if over or progress["step"] % LOG_EVERY == 0 or batch + 1 == batches_per_epoch:
                log.row(progress, rate, batches_per_epoch, budget_time(progress))
            if over:
                break
            if time.monotonic() - last_save > args.save_minutes * 60 and batch + 1 < batches_per_epoch:
                save()
                last_save = time.monotonic()
        if progress["batch"] >= batches_per_epoch:
            progress["history"].append({"epoch": epoch + 1, **{k: round(v / counts[k], 4) for k, v in totals.items()}})
            progress["epoch"] += 1
            progress["batch"] = 0
            if is_main:
                bar.write(json.dumps({"event": "epoch", "family": args.family, **progress["history"][-1],
                                      "step": progress["step"], "wall_time_s": round(progress["wall_time_s"])}))
        # An epoch of a small folder takes seconds: save as often as --save-minutes asks, and at the end.
        if run_over(args, progress) or time.monotonic() - last_save > args.save_minutes * 60:
            save()
            last_save = time.monotonic()
    bar.close()
    # Parts that gradients do not train (a VAE's mixture prior) are fitted once training is done,
    # all epochs or a budget (--minutes, --max-steps) spent; a resumed run fits them again.
    # The trained module itself: a trainer's export() may do work of its own (a GAN's batchnorm).
    if is_main:
        fitted = model.fit_after_training(train.images, train.labels, quiet=args.quiet)
        if fitted:
            print(json.dumps({"event": "fitted after training", "family": args.family, **fitted}), flush=True)
            save(after_training=fitted)
    log.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    if is_main:
        print(serving_hint(args.out, model), flush=True)


def serving_hint(out: Path, model: nn.Module) -> str:
    """A run's last line: where its checkpoint is, and the command that serves it."""
    if not model.capabilities:  # a classifier: evaluation's feature extractor, never served
        return f"saved {out}: score a generator with it by `python -m models.evaluate weights/NAME --classifier {out}`"
    return (f"saved {out}: serve it with `genserve serve --weights-dir {out.parent}` (a server already running on "
            f"that folder picks it up with `genserve reload`), then open http://127.0.0.1:8000/?model={out.name}")


@torch.no_grad()
def sample_preview(model: nn.Module) -> torch.Tensor | None:
    """Fixed-seed samples for a glance at training: 8x8, or 8x2 where sampling is sequential."""
    if "sample" not in model.capabilities:
        return None
    n = 16 if model.sequential_sampling else 64
    return model.sample_for_seeds(range(PREVIEW_SEED, PREVIEW_SEED + n))


if __name__ == "__main__":
    main()
