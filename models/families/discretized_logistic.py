"""The discretized logistic (Salimans et al. 2017, PixelCNN++): a continuous logistic of per-pixel
mean and scale, integrated over each of the data's `levels` bins, so that a likelihood built on
it is a true probability of the 8-bit data and its bits/dim compare with a softmax's."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  levels: int = 256) -> torch.Tensor:
    """log P(x) per element for x on the grid {0, 1/(levels-1), ..., 1} under a logistic(mean, scale)
    binned into `levels` intervals; the first and last bins extend to -inf and +inf."""
    half_bin = 0.5 / (levels - 1)
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + half_bin)
    lower = inv_scale * (x - mean - half_bin)
    log_cdf_upper = F.logsigmoid(upper)  # log P(X <= x + half_bin)
    log_one_minus_cdf_lower = -F.softplus(lower)  # log P(X > x - half_bin)
    # sigmoid(u) - sigmoid(l) = sigmoid(u) * sigmoid(-l) * (1 - exp(l - u)): stable in log space.
    log_mass = (log_cdf_upper + log_one_minus_cdf_lower
                + torch.log(-torch.expm1(lower - upper).clamp(max=-1e-12)))
    return torch.where(x < half_bin, log_cdf_upper,
                       torch.where(x > 1 - half_bin, log_one_minus_cdf_lower, log_mass))
