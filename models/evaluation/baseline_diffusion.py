"""The diffusion model a user would train instead: diffusers' unconditional image-generation example
(examples/unconditional_image_generation/train_unconditional.py), as it writes it.

Its `UNet2DModel` (layers_per_block 2, block_out_channels 128, 128, 256, 256, 512, 512, attention in
the fifth down block and the second up block), a `DDPMScheduler` of 1,000 steps (linear betas,
epsilon prediction), MSE on the noise, AdamW (lr 1e-4, betas 0.95 / 0.999, weight decay 1e-6,
eps 1e-8), a cosine schedule after 500 warm-up steps over the example's 100 epochs, gradient
clipping at 1, batch 16, random horizontal flips, images in [-1, 1], and its EMA of the weights
(inv_gamma 1, power 3/4, at most 0.9999), which is what it samples from.

The fewest changes, each for Fashion-MNIST on this CPU: one channel in and out instead of three;
28x28 images padded with their black ground to 32x32 (the U-Net halves its map five times), the
samples cropped back; samples drawn by DDIM (eta 0) in `sample_steps` steps of the trained
1,000-step schedule, where the example's pipeline takes all 1,000 DDPM steps (a thousand passes of
a 114 M-parameter U-Net per image is days of CPU for 10,000 samples). diffusers is imported only
here, from the `baselines` extra.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PAD = 2  # 28 + 2 * 2 = 32


class BaselineDDPM(nn.Module):
    recipe = "diffusers examples/unconditional_image_generation/train_unconditional.py"
    sizing = ("UNet2DModel 128-128-256-256-512-512, layers_per_block 2, 1 channel, 28x28 padded to 32x32; "
              "DDPM 1,000 steps, epsilon, AdamW 1e-4 (0.95, 0.999), wd 1e-6, cosine after 500 warm-up steps "
              "(100 epochs), clip 1, batch 16, flips, EMA (inv_gamma 1, power 3/4, max 0.9999); sampled by DDIM")
    batch_size = 16
    likelihood = "none"
    epochs = 100  # the example's, which its cosine schedule spans
    warmup_steps = 500
    sample_steps = 50

    def __init__(self, image_shape, train_images: int = 60000):
        super().__init__()
        from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel

        if tuple(image_shape) != (1, 28, 28):
            raise ValueError(f"the diffusion recipe is sized for 1x28x28 images only, not {list(image_shape)}")
        self.unet = UNet2DModel(
            sample_size=32, in_channels=1, out_channels=1, layers_per_block=2,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                              "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"))
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.sampler = DDIMScheduler.from_config(self.scheduler.config)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                                           eps=1e-8)
        total = train_images // self.batch_size * self.epochs
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: cosine_with_warmup(
            step, self.warmup_steps, total))
        self.ema = EMAModel(self.unet.parameters(), inv_gamma=1.0, power=3 / 4, decay=0.9999, use_ema_warmup=True)

    def train_step(self, x: torch.Tensor, noise: torch.Generator) -> dict:
        """One step of the example's loop on images [B, 1, 28, 28] in [0, 1]."""
        self.unet.train()
        flip = torch.rand(x.shape[0], generator=noise) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        clean = F.pad(x * 2 - 1, (PAD,) * 4, value=-1.0)
        eps = torch.randn(clean.shape, generator=noise)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (clean.shape[0],), generator=noise)
        predicted = self.unet(self.scheduler.add_noise(clean, eps, timesteps), timesteps).sample
        loss = F.mse_loss(predicted, eps)
        loss.backward()
        nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.step(self.unet.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images [n, 1, 28, 28] in [0, 1] from the EMA weights, by DDIM in `sample_steps` steps."""
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())
        self.unet.eval()
        try:
            z = torch.randn(n, 1, 32, 32, generator=generator)
            self.sampler.set_timesteps(self.sample_steps)
            for t in self.sampler.timesteps:
                z = self.sampler.step(self.unet(z, t).sample, t, z, eta=0.0).prev_sample
        finally:
            self.ema.restore(self.unet.parameters())
        return ((z[:, :, PAD:-PAD, PAD:-PAD] + 1) / 2).clamp(0, 1)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """diffusers' get_scheduler("cosine"): linear warm-up, then half a cosine down to 0."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
