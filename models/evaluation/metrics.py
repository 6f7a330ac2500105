"""The figures evaluation computes from classifier features: Frechet distances and class shares."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def features_of(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier features and predicted class probabilities for float images in [0, 1]."""
    device = next(classifier.parameters()).device
    feats, probs = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        f = classifier.features(x)
        feats.append(f.double().cpu())
        probs.append(torch.softmax(classifier.head(f), dim=1).cpu())
    return torch.cat(feats), torch.cat(probs)


def feature_statistics(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The mean [D] and covariance [D, D] of features [N, D], all a Frechet distance needs of them."""
    features = features.double()
    return {"mean": features.mean(0), "covariance": torch.cov(features.T)}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets [N, D]."""
    return frechet_from_statistics(feature_statistics(a), feature_statistics(b))


def frechet_from_statistics(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The Frechet distance between two Gaussians given by `feature_statistics`."""
    mu_a, mu_b, cov_a, cov_b = a["mean"], b["mean"], a["covariance"], b["covariance"]
    # Tr((S_a S_b)^(1/2)) = sum of sqrt(eig(S_a^(1/2) S_b S_a^(1/2))), a symmetric PSD matrix.
    eigvals, eigvecs = torch.linalg.eigh(cov_a)
    sqrt_a = eigvecs @ torch.diag(eigvals.clamp(min=0).sqrt()) @ eigvecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def class_report(probs: torch.Tensor, classes: list[str]) -> dict:
    """The share of samples per predicted class and that distribution's entropy (nats)."""
    counts = torch.bincount(probs.argmax(1), minlength=len(classes)).double()
    share = counts / counts.sum()
    entropy = float(-(share[share > 0] * share[share > 0].log()).sum())
    return {"class_shares": {c: round(float(s), 4) for c, s in zip(classes, share)},
            "class_entropy_nats": round(entropy, 4), "class_entropy_max_nats": round(math.log(len(classes)), 4),
            "classes_found": int((counts > 0).sum())}
