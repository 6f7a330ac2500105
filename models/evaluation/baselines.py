"""The standard recipes, trained for a fixed budget: what a user gets without genserve.

    python -m models.baselines dcgan --minutes 45 --threads 2   # pytorch/examples' cpp/dcgan, natively 28x28
    python -m models.baselines vae --minutes 10       # pytorch/examples' MLP VAE (784-400-20)
    python -m models.baselines pixelcnn --minutes 32.5 --threads 2   # jzbontar/pixelcnn-pytorch
    python -m models.baselines diffusion --minutes 150   # diffusers' unconditional example (pip install -e .[baselines])
    python -m models.evaluate runs/baselines/dcgan runs/baselines/vae runs/baselines/pixelcnn   # score them
    python -m models.baselines dcgan --dataset folder --data-dir DIR --image-size 32 --minutes 35   # your images

Each recipe is written as its example writes it (architecture, initialisation, optimiser, loss,
batch size) so that the comparison in docs/quality.md is reproducible here. The budget counts the
training loop's own CPU time divided by its threads: on a quiet machine that is the wall-clock
time, and on a shared one wall-clock time would hand the recipe less compute than it had.
At the end the recipe writes `baseline.json` (the recipe, budget, epochs and steps done) and what
`models.evaluate` scores: for a recipe that samples at once, `samples.safetensors` (10,000 uint8
images from fixed seeds) and a grid of the first 64, scored in the same feature space as the
shipped models; for an explicit density (`likelihood = "exact"`), whose samples take one pass of the
whole network per pixel, its weights (`weights.safetensors`, tensors only), scored by its test
bits/dim as the shipped PixelCNN and PixelRNN are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from models.checkpoint import sha256_file
from models.data import DATASETS, FOLDER, DatasetError, load_dataset, to_float
from models.evaluation.baseline_diffusion import BaselineDDPM
from models.families.dcgan import init_weights
from models.grid import save_grid

BASELINE_FILE = "baseline.json"
SAMPLES_FILE = "samples.safetensors"
WEIGHTS_FILE = "weights.safetensors"


def only_fashion_mnist(recipe: nn.Module, image_shape) -> tuple[int, int, int]:
    if tuple(image_shape) != (1, 28, 28):
        raise ValueError(f"the {type(recipe).__name__} recipe is for 1x28x28 images only, not {list(image_shape)}")
    return (1, 28, 28)


class BaselineDCGAN(nn.Module):
    """pytorch/examples' native 28x28 DCGAN, `cpp/dcgan/dcgan.cpp`, layer by layer: G transposed
    convolutions 100 -> 256 (4x4) -> 128 (7x7) -> 64 (14x14) -> 1 (28x28), D 1 -> 64 -> 128 -> 256
    -> 1 with a sigmoid, no biases, libtorch's default initialisation (the C++ example has no
    weights_init), BCE on probabilities, real labels drawn from U(0.8, 1.0), fake labels 0, one D
    step then one G step on the same fakes, Adam 2e-4 with betas (0.5, 0.5), batch 64."""

    recipe = ("pytorch/examples cpp/dcgan (native 28x28): G 100-256x4x4-128x7x7-64x14x14-1x28x28, "
              "D 1-64-128-256-1 sigmoid, no biases, default init, BCE, real labels U(0.8, 1.0), "
              "Adam 2e-4 betas (0.5, 0.5), batch 64")
    batch_size, lr, betas, latent_dim = 64, 2e-4, (0.5, 0.5), 100
    likelihood = "none"  # scored by its samples

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        c, h, w = self.image_shape = tuple(image_shape)
        if (h, w) not in ((28, 28), (32, 32)):
            raise ValueError(f"the {type(self).__name__} recipe is for 28x28 or 32x32 images, not {h}x{w}")
        # At 32x32 the tower goes 4 -> 8 -> 16 -> 32: the second transposed convolution's kernel
        # and the critic's last one are 4 instead of 3, the one change the size needs.
        k = 3 if h == 28 else 4
        self.sizing = "as written" if (c, h) == (1, 28) else f"sized for {c}x{h}x{w}: kernel {k} in G's 2nd and D's last conv"
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(self.latent_dim, 256, 4, 1, 0, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.ConvTranspose2d(256, 128, k, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.ConvTranspose2d(64, c, 4, 2, 1, bias=False), nn.Tanh(),
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(c, 64, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Conv2d(128, 256, 4, 2, 1, bias=False), nn.BatchNorm2d(256), nn.LeakyReLU(0.2),
            nn.Conv2d(256, 1, k, 1, 0, bias=False), nn.Sigmoid(),
        )
        self.make_optimisers()

    def make_optimisers(self) -> None:
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)

    def real_labels(self, n: int, noise: torch.Generator) -> torch.Tensor:
        return torch.empty(n).uniform_(0.8, 1.0, generator=noise)  # the example's label smoothing

    def train_step(self, x: torch.Tensor, noise: torch.Generator) -> dict:
        real = x * 2 - 1  # the example's Normalize(0.5, 0.5)
        fake = self.generator(torch.randn(x.shape[0], self.latent_dim, 1, 1, generator=noise))
        d_real, d_fake = self.discriminator(real).flatten(), self.discriminator(fake.detach()).flatten()
        loss_d = (F.binary_cross_entropy(d_real, self.real_labels(x.shape[0], noise))
                  + F.binary_cross_entropy(d_fake, torch.zeros_like(d_fake)))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        d_fake = self.discriminator(fake).flatten()
        loss_g = F.binary_cross_entropy(d_fake, torch.ones_like(d_fake))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        # As the example draws its pictures: the generator still in training mode, batchnorm on
        # the statistics of the batch (500 here).
        return (self.generator(torch.randn(n, self.latent_dim, 1, 1, generator=generator)) + 1) / 2


class BaselineDCGANPythonCut(BaselineDCGAN):
    """A weaker second reference: pytorch/examples' Python `dcgan/main.py` (ngf = ndf = 64, its
    weights_init, real labels 1, Adam betas (0.5, 0.999)), its 64x64 tower cut to 28x28 as
    1 -> 7 -> 14 -> 28 in the generator and back. Kept for the figures recorded against it."""

    recipe = ("pytorch/examples dcgan at native 28x28: G 100-128x7x7-64x14x14-1x28x28, "
              "D 1-64-128-1, BCE, Adam 2e-4 beta1 0.5, batch 64")
    betas = (0.5, 0.999)

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), width: int = 64):
        nn.Module.__init__(self)
        self.image_shape, self.sizing = only_fashion_mnist(self, image_shape), "as written"
        g = d = width
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(self.latent_dim, 2 * g, 7, 1, 0, bias=False), nn.BatchNorm2d(2 * g), nn.ReLU(True),
            nn.ConvTranspose2d(2 * g, g, 4, 2, 1, bias=False), nn.BatchNorm2d(g), nn.ReLU(True),
            nn.ConvTranspose2d(g, 1, 4, 2, 1, bias=False), nn.Tanh(),
        )
        self.discriminator = nn.Sequential(
            nn.Conv2d(1, d, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),
            nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * d), nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * d, 1, 7, 1, 0, bias=False), nn.Sigmoid(),
        )
        self.apply(init_weights)  # the DCGAN paper's, which is the Python example's weights_init
        self.make_optimisers()

    def real_labels(self, n: int, noise: torch.Generator) -> torch.Tensor:
        return torch.ones(n)


class BaselineVAE(nn.Module):
    """pytorch/examples' VAE: MLP 784-400-20 with ReLU, a Bernoulli decoder (BCE on the gray
    levels as probabilities), Adam 1e-3, batch 128; samples are the decoder's means."""

    recipe = "pytorch/examples vae: MLP 784-400-20-400-784, Bernoulli decoder (BCE), Adam 1e-3, batch 128"
    batch_size, lr, latent_dim = 128, 1e-3, 20
    likelihood = "none"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = math.prod(self.image_shape)  # 784 as written; the MLP's input and output follow the images
        self.sizing = "as written" if self.image_shape == (1, 28, 28) else f"sized for {pixels} inputs"
        self.fc1, self.fc21, self.fc22 = nn.Linear(pixels, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, pixels)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(F.relu(self.fc3(z)))

    def train_step(self, x: torch.Tensor, noise: torch.Generator) -> dict:
        x = x.flatten(1)
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=noise)
        bce = F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (bce + kld) / x.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator)
        return torch.sigmoid(self.decode_logits(z)).view(n, *self.image_shape)


class MaskedConv2d(nn.Conv2d):
    """The recipe's masked convolution: a pixel sees the rows above it and the pixels to its left,
    and with mask "B" (every layer but the first) its own position's features too."""

    def __init__(self, mask_type: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mask = torch.ones_like(self.weight)
        _, _, height, width = mask.shape
        mask[:, :, height // 2, width // 2 + (mask_type == "B"):] = 0
        mask[:, :, height // 2 + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class BaselinePixelCNN(nn.Module):
    """jzbontar/pixelcnn-pytorch, the PixelCNN most often copied: eight 7x7 masked convolutions of
    64 maps (A, then seven B), each with batchnorm and ReLU, a 1x1 convolution to 256 gray levels,
    cross-entropy over the images' gray levels, Adam 1e-3, batch 128."""

    recipe = ("jzbontar/pixelcnn-pytorch: 8 masked 7x7 convs (A, then 7 B), 64 maps, batchnorm, ReLU, "
              "1x1 conv to 256 levels, cross-entropy, Adam 1e-3, batch 128")
    batch_size, lr, width, n_layers = 128, 1e-3, 64, 8
    likelihood = "exact"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.image_shape, self.sizing = only_fashion_mnist(self, image_shape), "as written"
        layers: list[nn.Module] = []
        for i in range(self.n_layers):
            layers += [MaskedConv2d("A" if i == 0 else "B", 1 if i == 0 else self.width, self.width, 7, 1, 3,
                                    bias=False), nn.BatchNorm2d(self.width), nn.ReLU(True)]
        self.net = nn.Sequential(*layers, nn.Conv2d(self.width, 256, 1))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)

    def pixel_nll(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B, 1, H, W] in [0, 1] -> nats [B, H, W] of each pixel given those before it."""
        return F.cross_entropy(self.net(x), x[:, 0].mul(255).round().long(), reduction="none")

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Nats per image, as the shipped models' `nll` (models.evaluate.likelihood calls it)."""
        return self.pixel_nll(x).flatten(1).sum(1)

    def train_step(self, x: torch.Tensor, noise: torch.Generator) -> dict:
        loss = self.pixel_nll(x).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"bits_per_dim": loss.item() / math.log(2)}


RECIPES = {"dcgan": BaselineDCGAN, "dcgan-python-cut": BaselineDCGANPythonCut, "vae": BaselineVAE,
           "pixelcnn": BaselinePixelCNN, "diffusion": BaselineDDPM}


def train_baseline(name: str, minutes: float, out: Path, threads: int = 1, seed: int = 0, n_samples: int = 10000,
                   data_dir: str | None = None, limit: int | None = None, quiet: bool = False,
                   dataset: str = "fashion-mnist", image_size: int | None = None) -> dict:
    """Train recipe `name` until its CPU budget is spent (finishing the step under way), then write
    its samples and record into `out`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train = load_dataset(dataset, "train", data_dir, limit=limit,
                         **({"image_size": image_size, "quiet": quiet} if dataset == FOLDER else {}))
    model = RECIPES[name](train.image_shape)
    noise = torch.Generator().manual_seed(seed)
    budget_s, used_s, steps, epochs = minutes * 60, 0.0, 0, 0.0
    steps_per_epoch = len(train) // model.batch_size
    wall_start = time.monotonic()
    bar = tqdm(total=round(budget_s), desc=f"baseline {name}", unit="cpu-s", disable=quiet, mininterval=5,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} cpu-s [{elapsed}<{remaining}{postfix}]")
    while used_s < budget_s:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 7919 + int(epochs)))
        for batch in range(steps_per_epoch):
            start = time.process_time()
            x = to_float(train.images[order[batch * model.batch_size:(batch + 1) * model.batch_size]])
            logs = model.train_step(x, noise)
            spent = (time.process_time() - start) / threads
            used_s += spent
            steps += 1
            bar.update(spent)
            if steps % 50 == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            if used_s >= budget_s:
                break
        epochs = steps / steps_per_epoch
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    weights_record: dict = {}
    if model.likelihood == "exact":
        save_file({key: t.contiguous() for key, t in model.state_dict().items()}, str(out / WEIGHTS_FILE))
        weights_record["weights_sha256"] = sha256_file(out / WEIGHTS_FILE)  # evaluation checks it before loading
        n_samples = 0
    else:
        samples = torch.cat([model.sample(500, torch.Generator().manual_seed(seed + start))
                             for start in range(0, n_samples, 500)])[:n_samples]
        save_file({"samples": samples.clamp(0, 1).mul(255).round().to(torch.uint8)}, str(out / SAMPLES_FILE))
        save_grid(samples[:64], out / "samples.png", nrow=8)
    record = {
        "baseline": name,
        "recipe": model.recipe,
        "sizing": model.sizing,
        # What models.evaluate scores the samples against, in a card's terms.
        "data": {"dataset": dataset, "image_shape": list(train.image_shape),
                 **({"data_dir": str(data_dir)} if dataset == FOLDER else {})},
        "budget_minutes": minutes,
        "budget_clock": f"training-loop CPU time / {threads} thread(s)",
        "threads": threads,
        "wall_time_s": round(time.monotonic() - wall_start, 1),
        "steps": steps,
        "epochs": round(epochs, 2),
        "train_images": len(train),
        "samples": n_samples,
        **weights_record,
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {},
    }
    (out / BASELINE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.baselines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--minutes", type=float, required=True, help="training budget (CPU minutes per thread)")
    parser.add_argument("--out", type=Path, help="output folder (default runs/baselines/RECIPE)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    parser.add_argument("--data-dir")
    parser.add_argument("--image-size", type=int, help="a folder's images are scaled and cropped to this side")
    parser.add_argument("--limit", type=int, help="train on the first N images only (smoke tests)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        record = train_baseline(args.recipe, args.minutes, args.out or Path("runs/baselines") / args.recipe,
                                args.threads, args.seed, args.samples, args.data_dir, args.limit, args.quiet,
                                args.dataset, args.image_size)
    except (DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: v for k, v in record.items() if k != "metrics"}), flush=True)


if __name__ == "__main__":
    main()
