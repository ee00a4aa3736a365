"""The rank-flip protocol of the ST-LPIPS paper (section 4, equations 1 and 2).

A sample is a triplet (reference, d0, d1) of equally sized images. Equation 1 shifts a distorted image by k
pixels horizontally with the crop ``I[0:h, k:w+k-3]``; the reference, and the distorted images of the
unshifted sample, are cropped to ``I[0:h, 0:w-3]`` so that every image compared has width ``w - 3``
whatever k is. Equation 2 counts the samples whose ranking ``d(ref, d0) < d(ref, d1)`` differs between the
unshifted and the k-shifted sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Largest shift of the protocol; every image is cropped by this many columns.
MAX_SHIFT = 3
#: The shifts the paper reports (1, 2 and 3 pixels).
SHIFTS = (1, 2, 3)


def shift_crop(image: np.ndarray, k: int) -> np.ndarray:
    """Equation 1: ``image[0:h, k:w+k-3]`` of an HWC (or HW) array; k = 0 is the unshifted crop.

    ``k`` must be in 0..3 and the image wider than 3 pixels. Returns a view of width ``w - 3``.
    """
    if not 0 <= k <= MAX_SHIFT:
        raise ValueError(f"shift k={k} is outside 0..{MAX_SHIFT}; the protocol crops {MAX_SHIFT} columns")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an HW or HWC image, got shape {image.shape}")
    w = image.shape[1]
    if w <= MAX_SHIFT:
        raise ValueError(f"image width {w} leaves nothing after cropping {MAX_SHIFT} columns")
    return image[:, k : w + k - MAX_SHIFT]


def sample_candidates(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    """All distorted crops a triplet needs, stacked ``[d0 k=0..3, d1 k=0..3]`` as ``[8, h, w-3, C]``.

    The reference is compared with each of them after ``shift_crop(ref, 0)``: one reference, eight
    candidates, so a learned metric computes the reference's features once.
    """
    if d0.shape != d1.shape:
        raise ValueError(f"d0 and d1 differ in shape: {d0.shape} vs {d1.shape}")
    return np.stack([shift_crop(d, k) for d in (d0, d1) for k in range(MAX_SHIFT + 1)])


#: Two-sided 95% normal quantile, for every interval of the study.
Z_95 = 1.959964


def prefers_d0(dist: np.ndarray) -> np.ndarray:
    """``[N, 4]``: whether d0 ranks closer to the reference than d1 at each shift 0..3 (strict, as the paper: a
    tie ranks d1 first). ``dist`` is ``[N, 2, 4]``: distance of d0 / d1 (axis 1) at shift 0..3 (axis 2), as laid
    out by `sample_candidates`."""
    if dist.ndim != 3 or dist.shape[1:] != (2, MAX_SHIFT + 1):
        raise ValueError(f"expected distances shaped [N, 2, {MAX_SHIFT + 1}], got {dist.shape}")
    return dist[:, 0, :] < dist[:, 1, :]


def all_rank_flips(dist: np.ndarray) -> np.ndarray:
    """``[N, 3]``: equation 2's indicator ``(s0 < s1) != (ŝ0 < ŝ1)`` for shifts 1..3."""
    ranks = prefers_d0(dist)
    return ranks[:, :1] != ranks[:, 1:]


def rank_flips(dist: np.ndarray, k: int) -> np.ndarray:
    """Equation 2's indicator per sample for shift k (see `all_rank_flips`)."""
    if not 1 <= k <= MAX_SHIFT:
        raise ValueError(f"shift k={k} is outside 1..{MAX_SHIFT}")
    return all_rank_flips(dist)[:, k - 1]


@dataclass(frozen=True)
class Rate:
    """A proportion with its 95% confidence interval, all in [0, 1]."""

    value: float
    low: float
    high: float
    n: int

    def percent(self) -> str:
        """``"3.41 [2.80, 4.13]"``: value and interval in percent."""
        return f"{100 * self.value:.2f} [{100 * self.low:.2f}, {100 * self.high:.2f}]"


def wilson_interval(count: int, n: int, z: float = Z_95) -> Rate:
    """Wilson score interval of ``count`` successes in ``n`` trials (95% for the default z).

    Chosen over the normal approximation because rank-flip rates are often a few percent or zero, where the
    normal interval collapses to a point or leaves [0, 1].
    """
    if n <= 0:
        raise ValueError("a rate needs at least one sample")
    if not 0 <= count <= n:
        raise ValueError(f"count {count} is outside 0..{n}")
    p = count / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Rate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def category_mean_rate(indicators: list[np.ndarray], z: float = Z_95) -> Rate:
    """Mean over categories of per-category proportions (the paper's BAPPS averaging), with a normal CI.

    Each entry of ``indicators`` is one category's boolean vector. The interval uses the variance of a mean
    of independent proportions, ``sum(p_c (1 - p_c) / n_c) / C^2``.
    """
    if not indicators or any(len(x) == 0 for x in indicators):
        raise ValueError("every category needs at least one sample")
    rates = np.array([np.mean(x) for x in indicators])
    sizes = np.array([len(x) for x in indicators])
    mean = float(rates.mean())
    half = z * math.sqrt(float(np.sum(rates * (1 - rates) / sizes))) / len(indicators)
    return Rate(mean, max(0.0, mean - half), min(1.0, mean + half), int(sizes.sum()))


def flip_rates(dist: np.ndarray, categories: np.ndarray | None = None) -> dict[int, Rate]:
    """r_rf per shift k in 1..3 with confidence intervals.

    Without ``categories`` the rate is pooled over all samples (Wilson interval); with them (one label per
    sample) it is the mean of per-category rates, as the paper computes it on BAPPS.
    """
    out: dict[int, Rate] = {}
    for k in SHIFTS:
        flips = rank_flips(dist, k)
        if categories is None:
            out[k] = wilson_interval(int(flips.sum()), len(flips))
        else:
            out[k] = category_mean_rate([flips[categories == c] for c in np.unique(categories)])
    return out


def two_afc_scores(d0: np.ndarray, d1: np.ndarray, judge: np.ndarray) -> np.ndarray:
    """Per-sample 2AFC score: agreement of the metric with the fraction of people who chose p1.

    ``judge`` in [0, 1] is that fraction. A metric preferring p0 (d0 < d1) scores ``1 - judge``, one
    preferring p1 scores ``judge``, a tie scores 0.5: the BAPPS definition.
    """
    judge = np.asarray(judge, dtype=np.float64)
    if np.any((judge < 0) | (judge > 1)):
        raise ValueError("judge values must be fractions in [0, 1]")
    return np.where(d0 < d1, 1 - judge, np.where(d1 < d0, judge, 0.5))
