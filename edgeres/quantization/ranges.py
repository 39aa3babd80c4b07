"""Choosing each point's quantization range from its statistics.

min/max keeps every value and wastes resolution on rare outliers; the other methods
clip them where that costs less than it saves: `mean-minmax` takes the mean over images
of each image's extremes (NNCF's default), `percentile` keeps all but the outer 0.01%,
`mse` minimises the mean squared error of the quantized values, `entropy` the KL
divergence of their histogram (TensorRT's calibrator). The model's output (the logits)
always keeps min/max: clipping the largest logit would change the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class PointStats:
    """What calibration saw at one activation point, which its range is chosen from."""

    low: float
    high: float
    sample: np.ndarray  # a seeded random sample of the values seen
    mean_low: float = 0.0  # the mean over images of each image's min (and max): NNCF's default statistic
    mean_high: float = 0.0

    @property
    def unsigned(self) -> bool:
        return self.low >= 0.0


METHODS = ("minmax", "mean-minmax", "percentile", "entropy", "mse")
PERCENTILE = 99.99
LEVELS = 256  # int8
MSE_STEPS = 40
MSE_SAMPLES = 1 << 15
MSE_EXTREMES = 1 << 10  # the largest and smallest values, counted exactly
ENTROPY_BINS = 2048
# entropy stays out of auto: it clipped too hard on wide ResNet activations when measured,
# before ReLU's zeros were left out of its histogram, and has not been measured in auto since
AUTO_METHODS = ("minmax", "mean-minmax", "percentile", "mse")

Range = tuple[float, float]


def choose(stats: PointStats, method: str) -> Range:
    if method not in METHODS:
        raise ValueError(f"unknown range method {method!r}; methods are {', '.join(METHODS)}")
    return _CHOOSERS[method](stats)


def minmax(stats: PointStats) -> Range:
    return _with_zero(stats.low, stats.high)


def mean_minmax(stats: PointStats) -> Range:
    return _with_zero(stats.mean_low, stats.mean_high)


def percentile(stats: PointStats) -> Range:
    high = float(np.percentile(stats.sample, PERCENTILE))
    low = 0.0 if stats.unsigned else float(np.percentile(stats.sample, 100 - PERCENTILE))
    return _with_zero(low, high)


def mse(stats: PointStats) -> Range:
    """The clipping of [low, high] with the least quantization error: both ends scaled alike (1% to
    100%), then, for signed values, each end on its own."""
    values, weights = _stratified(stats.sample)
    fractions = np.geomspace(0.01, 1.0, MSE_STEPS)

    def error(low: float, high: float) -> float:
        low, high = _with_zero(low, high)
        return float(np.sum(weights * (fake_quantize(values, low, high) - values) ** 2))

    best = min((error(stats.low * f, stats.high * f), f, f) for f in fractions)
    if not stats.unsigned:
        for _ in range(2):  # coordinate descent: the high end, then the low end
            best = min((error(stats.low * best[1], stats.high * f), best[1], f) for f in fractions)
            best = min((error(stats.low * f, stats.high * best[2]), f, best[2]) for f in fractions)
    return _with_zero(stats.low * best[1], stats.high * best[2])


def _stratified(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The extremes of `sample` exactly, the rest subsampled, with weights that keep the mean unbiased.

    Clipping trades the error of the rare largest values against the resolution of the bulk;
    a plain subsample would miss the rare values and clip too much.
    """
    values = sample.astype(np.float64)
    if len(values) <= MSE_SAMPLES + 2 * MSE_EXTREMES:
        return values, np.full(len(values), 1.0 / len(values))
    order = np.argpartition(values, (MSE_EXTREMES, len(values) - MSE_EXTREMES))
    extremes = np.concatenate([order[:MSE_EXTREMES], order[-MSE_EXTREMES:]])
    bulk = order[MSE_EXTREMES:-MSE_EXTREMES]
    bulk = bulk[np.random.default_rng(0).choice(len(bulk), MSE_SAMPLES, replace=False)]
    weight = (len(values) - 2 * MSE_EXTREMES) / MSE_SAMPLES
    weights = np.concatenate([np.ones(len(extremes)), np.full(MSE_SAMPLES, weight)]) / len(values)
    return values[np.concatenate([extremes, bulk])], weights


def entropy(stats: PointStats) -> Range:
    """TensorRT's entropy calibration: the threshold whose 128-level histogram is closest in KL."""
    magnitudes = np.abs(stats.sample)
    # ReLU's exact zeros can be most of a sample; kept in, their one bin outweighs the tail
    # and the KL picks a threshold that clips what the classifier needs (measured on digits:
    # 94% agreement with them, 100% without)
    magnitudes = magnitudes[magnitudes > 0] if np.any(magnitudes > 0) else magnitudes
    top = float(magnitudes.max()) or 1.0
    histogram, edges = np.histogram(magnitudes, bins=ENTROPY_BINS, range=(0.0, top))
    histogram = histogram.astype(np.float64)
    levels = LEVELS if stats.unsigned else LEVELS // 2  # a signed range spends half its levels per side
    best, threshold = np.inf, top
    for stop in range(levels, ENTROPY_BINS + 1, 16):
        reference = histogram[:stop].copy()
        reference[-1] += histogram[stop:].sum()
        quantized = _requantize(histogram[:stop], levels)
        divergence = _kl(reference, quantized)
        if divergence < best:
            best, threshold = divergence, float(edges[stop])
    low = 0.0 if stats.unsigned else -threshold
    return _with_zero(max(low, stats.low), min(threshold, stats.high))


def fake_quantize(values: np.ndarray, low: float, high: float, levels: int = LEVELS) -> np.ndarray:
    """Asymmetric uniform quantization to `levels` steps over [low, high], back to float."""
    scale = max(high - low, 1e-12) / (levels - 1)
    zero = np.round(-low / scale)
    return (np.clip(np.round(values / scale) + zero, 0, levels - 1) - zero) * scale


def _with_zero(low: float, high: float) -> Range:
    """Every backend's grid holds an exact zero (padding, ReLU), so a range always spans it."""
    return min(float(low), 0.0), max(float(high), 0.0)


def _requantize(histogram: np.ndarray, levels: int) -> np.ndarray:
    """The histogram merged into `levels` bins and spread back over the non-empty original bins."""
    starts = np.array([chunk[0] for chunk in np.array_split(np.arange(len(histogram)), levels) if len(chunk)])
    filled = histogram > 0
    totals = np.add.reduceat(histogram, starts)
    counts = np.add.reduceat(filled.astype(np.float64), starts)
    per_bin = np.repeat(totals / np.maximum(counts, 1), np.diff(np.append(starts, len(histogram))))
    return np.where(filled, per_bin, 0.0)


def _kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    p = reference / max(reference.sum(), 1e-12)
    q = candidate / max(candidate.sum(), 1e-12)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


_CHOOSERS: dict[str, Callable[[PointStats], Range]] = {
    "minmax": minmax, "mean-minmax": mean_minmax, "percentile": percentile, "entropy": entropy, "mse": mse,
}
