"""The Frechet distance between two Gaussians fitted to feature sets (FID over frames, FVD over clips).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The last trace is computed without a general (non-symmetric) matrix square root: with S1 = R1 R1 and
S2 = R2 R2 for symmetric square roots R1, R2, the eigenvalues of S1 S2 are the squared singular values of
R1 R2, so tr((S1 S2)^(1/2)) is the sum of the singular values of R1 R2 (its nuclear norm). With fewer
samples than dimensions the same holds for the centred feature matrices themselves (S1 = A'A / c1, S2 =
B'B / c2 gives the singular values of A B' / sqrt(c1 c2)), which is exact and far cheaper than a
2048x2048 decomposition. Both are real and non-negative by construction, so no imaginary parts need to
be discarded.
"""

from __future__ import annotations

import numpy as np

from ophora.core.errors import InputError


def gaussian_stats(features: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, D) features; `ddof` 1 is numpy's unbiased np.cov, 0 the 1/N estimate."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) <= ddof:
        raise InputError(f"a Frechet distance needs more than {ddof} feature vectors, got {len(x)}")
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - ddof)


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise InputError(f"Gaussians of different sizes: {mu1.shape} {sigma1.shape} vs {mu2.shape} {sigma2.shape}")
    trace_sqrt = np.linalg.svd(_sym_sqrt(sigma1) @ _sym_sqrt(sigma2), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def frechet_from_features(x: np.ndarray, y: np.ndarray, ddof: int) -> float:
    """The Frechet distance between Gaussians fitted to the (N, D) and (M, D) feature sets `x` and `y`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InputError(f"feature sets of different shapes: {x.shape} and {y.shape}")
    for name, f in (("first", x), ("second", y)):
        if len(f) <= max(ddof, 1):
            raise InputError(f"a Frechet distance needs at least {max(ddof, 1) + 1} feature vectors per set; the "
                             f"{name} has {len(f)}")
    if len(x) + len(y) >= x.shape[1]:
        return frechet_distance(*gaussian_stats(x, ddof), *gaussian_stats(y, ddof))
    mx, my = x.mean(axis=0), y.mean(axis=0)
    a = (x - mx) / np.sqrt(len(x) - ddof)
    b = (y - my) / np.sqrt(len(y) - ddof)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mx - my
    return float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * trace_sqrt)
