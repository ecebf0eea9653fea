"""Krippendorff's alpha for ordinal ratings, with a bootstrap interval over the rated videos.

Data are laid out as in the `krippendorff` package: one row per rater, one column per unit (video), NaN
where a rater did not rate a unit. Following Krippendorff (2011, "Computing Krippendorff's alpha-
reliability"): each unit with m >= 2 values adds n_c n_k / (m - 1) to the coincidence o_ck of every pair
of its values (c = k: n_c (n_c - 1) / (m - 1)); with the ordinal distance
delta_ck^2 = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 on the coincidences' margins n_g,

    alpha = 1 - (n - 1) * sum_ck o_ck delta_ck^2 / sum_ck n_c n_k delta_ck^2.

The interval resamples units with replacement (each unit's coincidences are computed once, so a thousand
resamples are one matrix product) and takes the 2.5 and 97.5 percentiles.
"""

from __future__ import annotations

import numpy as np


def unit_coincidences(data: np.ndarray, categories: tuple[int, ...]) -> np.ndarray:
    """(units with >= 2 values, k, k): each pairable unit's contribution to the coincidence matrix."""
    data = np.asarray(data, dtype=float)
    counts = np.stack([(data == c).sum(axis=0) for c in categories], axis=1).astype(float)  # (units, k)
    m = counts.sum(axis=1)
    counts = counts[m >= 2]
    m = m[m >= 2]
    pairs = counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(len(categories))[None]
    return pairs / (m - 1)[:, None, None]


def alpha_from_coincidences(o: np.ndarray) -> np.ndarray:
    """Ordinal alpha of coincidence matrices (..., k, k); NaN where all values are one category."""
    o = np.asarray(o, dtype=float)
    n_c = o.sum(axis=-1)  # (..., k)
    n = n_c.sum(axis=-1)
    cum = np.cumsum(n_c, axis=-1)
    # sum_{g=c..k} n_g for c <= k is cum[k] - cum[c] + n_c; delta is symmetric
    between = cum[..., None, :] - cum[..., :, None] + n_c[..., :, None]
    k = o.shape[-1]
    upper = np.triu(np.ones((k, k), dtype=bool))
    between = np.where(upper, between, np.swapaxes(between, -1, -2))
    delta2 = (between - (n_c[..., :, None] + n_c[..., None, :]) / 2) ** 2
    observed = (o * delta2).sum(axis=(-1, -2))
    expected = (n_c[..., :, None] * n_c[..., None, :] * delta2).sum(axis=(-1, -2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected > 0, 1 - (n - 1) * observed / np.where(expected > 0, expected, 1), np.nan)


def alpha_ordinal(data, categories: tuple[int, ...] = (1, 2, 3, 4, 5)) -> float:
    """Krippendorff's alpha (ordinal) of rater x unit data with NaN for missing ratings."""
    units = unit_coincidences(data, categories)
    if len(units) == 0:
        return float("nan")
    return float(alpha_from_coincidences(units.sum(axis=0)))


def alpha_interval(data, categories: tuple[int, ...] = (1, 2, 3, 4, 5), resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of alpha, resampling units (videos) with replacement."""
    units = unit_coincidences(data, categories)
    if len(units) < 2 or resamples < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(units), np.full(len(units), 1 / len(units)), size=resamples)  # (B, units)
    o = (weights @ units.reshape(len(units), -1)).reshape(resamples, *units.shape[1:])
    alphas = alpha_from_coincidences(o)
    alphas = alphas[np.isfinite(alphas)]
    if len(alphas) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(alphas, [2.5, 97.5])
    return float(low), float(high)
