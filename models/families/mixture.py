"""A mixture of full-covariance Gaussians, fitted by EM: the VAE's learned prior over its codes.

A VAE's aggregate posterior is not N(0, I): prior draws land in holes the decoder never saw, and
its samples blur. Fitting a small mixture to the encoder's codes after training ("ex-post density
estimation", Ghosh et al. 2020, "From Variational to Deterministic Autoencoders") puts the draws
where the codes are. It has a density, so the ELBO stays a true bound with the mixture as p(z).

On little data a mixture overfits its codes, and its draws land where the decoder has seen one
image or none: `choose_prior` keeps a mixture only where it beats N(0, I) on held-out codes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

# Mixture sizes tried below the configured one (which is tried too): a few, each four times the last.
CANDIDATES = (1, 4, 16, 64)
STANDARD = "N(0, I)"


class GaussianMixture(nn.Module):
    """K weighted Gaussians over R^d. Buffers, not parameters: EM fits them, not gradients."""

    def __init__(self, dim: int, components: int):
        super().__init__()
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))
        self.register_buffer("means", torch.zeros(components, dim))
        self.register_buffer("scale_tril", torch.eye(dim).repeat(components, 1, 1))  # Cholesky factors
        self._cpu_copy = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._cpu_copy = None
        super()._load_from_state_dict(*args, **kwargs)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) [B] for z [B, d]."""
        return torch.logsumexp(self._component_log_probs(z, self.log_weights, self.means, self.scale_tril), dim=0)

    @staticmethod
    def _component_log_probs(z, log_weights, means, scale_tril) -> torch.Tensor:
        """log w_k + log N(z; m_k, L_k L_k^T) for each component k and point, [K, B]."""
        diff = (z[None] - means[:, None]).transpose(1, 2)  # [K, d, B]
        white = torch.linalg.solve_triangular(scale_tril, diff, upper=False)
        log_det = torch.diagonal(scale_tril, dim1=1, dim2=2).log().sum(1)
        dim = z.shape[1]
        return log_weights[:, None] - 0.5 * white.pow(2).sum(1) - log_det[:, None] - 0.5 * dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n draws [n, d], on the CPU: a uniform picks each draw's component (inverse CDF), then a
        N(0, I) draw is coloured by its covariance, scaled by `temperature` about its mean."""
        log_weights, means, scale_tril = self._on_cpu()
        u = torch.rand(n, generator=generator)
        eps = torch.randn(n, means.shape[1], generator=generator)
        k = torch.searchsorted(log_weights.exp().cumsum(0), u[:, None]).squeeze(1).clamp_(max=len(means) - 1)
        return means[k] + temperature * (scale_tril[k] @ eps[:, :, None]).squeeze(2)

    def _on_cpu(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Draws run on the CPU so that a seed means the same z on every device; the copy is kept.
        if self._cpu_copy is None:
            self._cpu_copy = tuple(t.detach().float().cpu() for t in (self.log_weights, self.means, self.scale_tril))
        return self._cpu_copy

    @torch.no_grad()
    def fit(self, codes: torch.Tensor, iterations: int = 100, ridge: float = 1e-4, seed: int = 0,
            quiet: bool = False, desc: str = "prior EM") -> float:
        """Fit to codes [N, d] by EM (in float64), starting from K random codes with the pooled
        covariance; `ridge` keeps every covariance well conditioned. Returns the mean log p."""
        x = codes.detach().double().cpu()
        n, dim = x.shape
        k = len(self.means)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        means = x[order.repeat(math.ceil(k / n))[:k]].clone()  # fewer codes than components: some start twice
        covs = torch.cov(x.T).expand(k, dim, dim).clone()
        log_weights = torch.full((k,), -math.log(k), dtype=x.dtype)
        eye = ridge * torch.eye(dim, dtype=x.dtype)
        mean_log_p = -math.inf
        for _ in tqdm(range(iterations), desc=desc, disable=quiet, mininterval=5):
            scale_tril = torch.linalg.cholesky(covs + eye)
            joint = self._component_log_probs(x, log_weights, means, scale_tril)
            log_p = torch.logsumexp(joint, dim=0)
            mean_log_p = float(log_p.mean())
            resp = (joint - log_p).exp()  # [K, N]: each code's share in each component
            mass = resp.sum(1) + 1e-10
            log_weights = (mass / n).log()
            means = resp @ x / mass[:, None]
            # E[x x^T] - m m^T per component, one weighted matmul each (the [K, N, d] form would not fit).
            covs = torch.stack([(x * r[:, None]).T @ x for r in resp]) / mass[:, None, None]
            covs -= means[:, :, None] * means[:, None, :]
        self.log_weights.copy_(log_weights)
        self.means.copy_(means)
        self.scale_tril.copy_(torch.linalg.cholesky(covs + eye))
        self._cpu_copy = None
        return mean_log_p


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) [B] for z [B, d]."""
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))


def candidate_components(most: int, codes: int) -> list[int]:
    """The mixture sizes to try: a few up to `most`, none with more components than codes to fit."""
    return [k for k in sorted({*(c for c in CANDIDATES if c < most), most}) if k <= codes]


def choose_prior(fit_codes: torch.Tensor, held_codes: torch.Tensor, most: int,
                 quiet: bool = False) -> tuple[GaussianMixture | None, dict[str, float]]:
    """The prior that gives held-out codes [M, d] the highest mean log density: N(0, I) (None), or
    a mixture of some of `candidate_components(most, ...)` Gaussians fitted to `fit_codes` [N, d].
    Where the codes are posterior draws, that is the prior whose ELBO on held-out images is highest
    (the prior enters the bound only through E_q[log p(z)]): a mixture is kept only where it gives
    images it was not fitted to a better bound than N(0, I) does. Returns it with each candidate's
    held-out mean log density (nats per code); a candidate whose EM fails is left out."""
    scores = {STANDARD: float(standard_normal_log_prob(held_codes.double()).mean())}
    best, best_score = None, scores[STANDARD]
    for k in candidate_components(most, len(fit_codes)):
        mixture = GaussianMixture(fit_codes.shape[1], k)
        try:
            mixture.fit(fit_codes, quiet=quiet, desc=f"prior EM, mixture of {k}")
        except torch.linalg.LinAlgError:  # a component left with next to no codes: not a candidate
            continue
        score = float(mixture.log_prob(held_codes.float()).mean())
        if not math.isfinite(score):  # a degenerate fit: never kept, and a card holds no infinities
            continue
        scores[f"mixture of {k}"] = score
        if score > best_score:
            best, best_score = mixture, score
    return best, {name: round(score, 4) for name, score in scores.items()}
