"""The trainers `models.train` runs, one per training objective a family declares: `LossTrainer`
for a family that minimises its own `loss(x, y)`, `GANTrainer` for the adversarial game. Each
takes one step on a batch, owns its optimisers and state, and exports the module to ship."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.data.augment import augment, parse_policy
from models.checkpoint import build_model
from models.contract import Family


PRECISIONS = ("float32", "bfloat16")


def forward_precision(args) -> contextlib.AbstractContextManager:
    """The context the forward passes run in: bfloat16 autocast for `--precision bfloat16` (matrix
    products and convolutions in bfloat16, reductions and losses in float32, as autocast's op lists
    say), a no-op for float32. Backward passes run outside it, as autocast asks."""
    if args.precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)


# -- objectives: one per kind of training -------------------------------------------------------

class Objective(nn.Module):
    """Wraps a model so that its loss is computed in forward(), which is what DDP synchronises."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.model.loss(x, y)


def extend_model(model: nn.Module, config: dict) -> nn.Module:
    """A module of `model`'s family built from `config`, holding `model`'s weights: the parts the
    config adds start from their initialisation; every weight of `model` must fit the new one."""
    extended = build_model(model.family, config)
    try:
        _, unexpected = extended.load_state_dict(model.state_dict(), strict=False)
    except RuntimeError as e:  # torch's several lines, one per weight whose shape the config changes
        changed = [line.strip() for line in str(e).splitlines() if line.strip().startswith("size mismatch")]
        raise SystemExit(f"error: the new config changes the shape of trained weights: {'; '.join(changed[:2])}") from None
    if unexpected:
        raise SystemExit(f"error: the new config drops weights of the checkpoint: {unexpected[:5]}")
    return extended


def trainable_parameters(model: nn.Module, prefix: str | None) -> list[nn.Parameter]:
    """All parameters, or with a prefix only those under it; the others are frozen (no gradients)."""
    if not prefix:
        return list(model.parameters())
    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefix))
        if parameter.requires_grad:
            chosen.append(parameter)
    if not chosen:
        raise SystemExit(f"error: --train-only {prefix}: the model has no parameters under that name")
    return chosen


class WeightAverage:
    """An exponential moving average of a module's parameters, warmed up as TensorFlow's
    num_updates rule does (decay min(decay, (1 + t) / (10 + t)) at update t) so that early exports
    are not dominated by the initial weights."""

    def __init__(self, module: nn.Module, copy: nn.Module, decay: float):
        self.module, self.average, self.decay, self.updates = module, copy, decay, 0
        self.average.load_state_dict(module.state_dict())
        self.average.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for p_average, p in zip(self.average.parameters(), self.module.parameters()):
            p_average.lerp_(p, 1 - decay)

    def state_dict(self) -> dict:
        return {"ema": self.average.state_dict(), "ema_updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state["ema"])
        self.updates = state.get("ema_updates", 10 ** 9)  # states saved before the warm-up: none


class LossTrainer:
    """A family with a `loss(x, y)`: one loss, one Adam; where the family declares
    `averaged_weights`, an EMA of the weights is what ships."""

    def __init__(self, model: nn.Module, args, distributed: bool):
        self.model = model
        self.parameters = trainable_parameters(model, args.train_only)
        objective = Objective(model)
        self.objective = DistributedDataParallel(objective) if distributed else objective
        beta1 = 0.9 if args.beta1 is None else args.beta1  # Adam's own default
        self.optimizer = torch.optim.Adam(self.parameters, lr=args.lr, betas=(beta1, 0.999))
        self.grad_clip = args.grad_clip
        self.args = args
        self.average = None
        if model.averaged_weights:
            copy = build_model(model.family, dataclasses.asdict(model.config)).to(args.device)
            self.average = WeightAverage(model, copy, args.ema)

    def step(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Generator) -> dict:
        self.model.train()
        with forward_precision(self.args):
            loss, logs = self.objective(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
        return {"loss": loss.item(), **logs}

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def state_dict(self) -> dict:
        average = self.average.state_dict() if self.average is not None else {}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **average}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None:
            if "ema" in state:
                self.average.load_state_dict(state)
            else:  # a state saved without an average: it starts from the weights
                self.average = WeightAverage(self.model, self.average.average, self.average.decay)

    def record(self) -> dict:
        """What the card's training record says of this trainer beyond the command."""
        return {} if self.average is None else {"weight_average_decay": self.average.decay}

    @torch.no_grad()
    def export(self) -> nn.Module:
        if self.average is None:
            return self.model
        # Buffers are not averaged: the shipped copy takes the model's (a fitted class prior, say).
        for average_buffer, buffer in zip(self.average.average.buffers(), self.model.buffers()):
            average_buffer.copy_(buffer)
        return self.average.average.eval()


class GANTrainer:
    """A family whose objective is "adversarial": the game its `adversarial_game()` declares
    between its `adversarial_parts()` (losses, gradient penalty, critic steps, Adam's betas, each
    overridden by a flag given), plus an exponential moving average of the generator (what is
    shipped; its batchnorm statistics are re-estimated before each export). Each step is one
    critic update on its batch; every `critic_steps`-th also updates the generator."""

    def __init__(self, model: Family, args, distributed: bool):
        self.model = model
        wrap = DistributedDataParallel if distributed else (lambda m: m)
        generator, critic = model.adversarial_parts()
        self.generator = wrap(generator)
        self.critic = wrap(critic)
        game = model.adversarial_game()
        self.game = dataclasses.replace(
            game, loss=args.gan_loss or game.loss,
            betas=(args.beta1, game.betas[1]) if args.beta1 is not None else game.betas)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=self.game.betas)
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=args.lr, betas=self.game.betas)
        ema = build_model(model.family, dataclasses.asdict(model.config)).adversarial_parts()[0].to(args.device)
        self.average = WeightAverage(generator, ema, args.ema)
        self.augmentation = parse_policy(args.augment)
        self.critic_updates = 0
        self.args = args

    def step(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Generator) -> dict:
        self.model.train()
        z, fake_labels = self.model.adversarial_inputs(y, noise)
        real_labels = None if fake_labels is None else y
        generator_turn = (self.critic_updates + 1) % self.game.critic_steps == 0
        # A critic-only step needs no graph through the generator (nor does DDP expect one).
        with forward_precision(self.args), torch.set_grad_enabled(generator_turn):
            fake = (self.generator(z.to(x.device), fake_labels) + 1) / 2
        with forward_precision(self.args):
            real_seen, fake_seen = self.seen(x, noise), self.seen(fake.detach(), noise)
            d_real = self.critic(real_seen, real_labels).float()
            d_fake = self.critic(fake_seen, fake_labels).float()
            loss_d = self.model.critic_loss(d_real, d_fake, self.game)
        if self.game.gradient_penalty:
            penalty = gradient_penalty(self.critic, real_seen, fake_seen, real_labels, noise)
            loss_d = loss_d + self.game.gradient_penalty * penalty
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.critic_updates += 1
        logs = {"loss_d": loss_d.item(), "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}
        if self.game.loss == "bce":  # scores as probabilities, as the DCGAN's logs always read
            logs.update(d_real=torch.sigmoid(d_real).mean().item(), d_fake=torch.sigmoid(d_fake).mean().item())
        if not generator_turn:
            return logs
        # Generator: raise the critic's score of the fakes.
        with forward_precision(self.args):
            loss_g = self.model.generator_loss(self.critic(self.seen(fake, noise), fake_labels).float(), self.game)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.average.update()
        return {**logs, "loss_g": loss_g.item()}

    def seen(self, images: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        """Images [0, 1] as the discriminator sees them: through `--augment`'s transforms, if any,
        drawn afresh for every batch, real and fake alike."""
        if not self.augmentation:
            return images
        return (augment(images * 2 - 1, self.augmentation, noise) + 1) / 2

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def record(self) -> dict:
        """The game played, as the card records it (the family's, with the flags' overrides)."""
        return {"game": dataclasses.asdict(self.game), "weight_average_decay": self.average.decay}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), **self.average.state_dict(), "critic_updates": self.critic_updates,
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.average.load_state_dict(state)
        self.critic_updates = state.get("critic_updates", 0)
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    @torch.no_grad()
    def export(self, batches: int = 50, batch_size: int = 256) -> nn.Module:
        """A DCGAN whose generator is the EMA one, with batchnorm statistics measured on it."""
        device = next(self.average.average.parameters()).device
        exported = build_model(self.model.family, dataclasses.asdict(self.model.config)).to(device)
        exported.load_state_dict(self.model.state_dict())
        generator = exported.adversarial_parts()[0]
        generator.load_state_dict(self.average.average.state_dict())
        generator.train()
        for module in generator.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the batches below
        calibration = torch.Generator().manual_seed(0)
        for _ in range(batches):
            generator(exported.sample_latents(batch_size, calibration).to(device))
        for module in generator.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
        return exported.eval()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                     noise: torch.Generator) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al. 2017): E (|grad D(x_hat)|_2 - 1)^2 at x_hat drawn
    uniformly between each real image and a fake (the fakes' graph cut: only D is penalised)."""
    share = torch.rand(real.shape[0], 1, 1, 1, generator=noise).to(real)
    between = (share * real.detach() + (1 - share) * fake.detach()).requires_grad_(True)
    scores = critic(between, labels).float()
    (gradient,) = torch.autograd.grad(scores.sum(), between, create_graph=True)
    return (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()


TRAINERS = {"loss": LossTrainer, "adversarial": GANTrainer}
