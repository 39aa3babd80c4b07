"""Measuring logits against a reference: one definition of each number, numpy only.

Verification, golden samples on a device, the INT8 search, the report, eval and the
classifier all measure with these, so "agreement", "KL" or "within tolerance" mean one
thing everywhere. A row holding a NaN or inf is wrong whatever its argmax says: it never
agrees and is never right, and it makes KL and the largest difference infinite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis (float64), for one row or a batch."""
    return np.exp(log_softmax(logits))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def answers(logits: np.ndarray) -> np.ndarray:
    """Each row's top-1 class; -1 for a row that holds a non-finite value."""
    return np.where(np.isfinite(logits).all(axis=1), logits.argmax(axis=1), -1)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of rows whose top-1 class is the reference's (a non-finite row agrees with nothing)."""
    ours, theirs = answers(candidate), answers(reference)
    return float(((ours == theirs) & (ours >= 0)).mean())


def accuracy(logits: np.ndarray, truth: np.ndarray) -> float:
    return float((answers(logits) == truth).mean())


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean KL(reference || candidate) of the class probabilities."""
    if not (np.isfinite(reference).all() and np.isfinite(candidate).all()):
        return float("inf")
    log_p, log_q = log_softmax(reference), log_softmax(candidate)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def max_abs_difference(reference: np.ndarray, candidate: np.ndarray) -> float:
    if not (np.isfinite(reference).all() and np.isfinite(candidate).all()):
        return float("inf")
    return float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max())


def largest_logit(reference: np.ndarray) -> float:
    """The scale relative errors are taken against (1 where the logits are all zero or not finite)."""
    return (float(np.abs(reference).max()) if np.isfinite(reference).all() else 1.0) or 1.0


def compare_logits(reference: np.ndarray, candidate: np.ndarray, source: str) -> dict:
    """An artifact's logits against PyTorch's, as the record's `verification` keeps them."""
    max_abs, scale = max_abs_difference(reference, candidate), largest_logit(reference)
    return {"reference": "pytorch", "samples": int(len(reference)), "sample_source": source,
            "max_abs_logit_diff": max_abs, "max_rel_logit_diff": max_abs / scale, "max_abs_logit": scale,
            "top1_agreement": agreement(reference, candidate)}


def allowed_error(rule: str, tolerance: Mapping[str, float], scale: float) -> float:
    """The largest logit error an artifact judged by `rule` (fp32, fp16) may show where the largest
    |logit| is `scale`. FP32: fp32_max_abs, growing with the logits above fp32_scale (float32 carries
    7 digits, so logits around 1e4 differ by 1e-3 in any correct export). FP16: a share of the scale.
    INT8 is judged by top-1 instead: 0."""
    if rule == "fp32":
        return tolerance["fp32_max_abs"] * max(1.0, scale / tolerance.get("fp32_scale", 100.0))
    return tolerance["fp16_max_rel"] * scale if rule == "fp16" else 0.0


def tolerance_breach(rule: str, tolerance: Mapping[str, float], max_abs: float, scale: float) -> str | None:
    """None where a logit error of `max_abs` is within `rule`; else by how much, in the rule's terms."""
    if rule == "fp32" and not max_abs <= allowed_error(rule, tolerance, scale):
        return f"{max_abs:.2e}, more than the allowed {allowed_error(rule, tolerance, scale):.0e}"
    if rule == "fp16" and not max_abs / scale <= tolerance["fp16_max_rel"]:
        return f"{max_abs / scale:.1%} of the largest logit, more than the allowed {tolerance['fp16_max_rel']:.0%}"
    return None


@dataclass
class Judged:
    """An artifact's logits against FP32's on the same images."""

    accuracy: float | None  # top-1, where the true classes are known
    fp32_accuracy: float | None
    agreement: float  # top-1 agreement with FP32
    mean_kl: float
    images: int

    @property
    def drop_points(self) -> float | None:
        return None if self.accuracy is None else 100 * (self.fp32_accuracy - self.accuracy)


def judge(logits: np.ndarray, reference: np.ndarray, truth: np.ndarray | None) -> Judged:
    labelled = truth is not None
    return Judged(accuracy=accuracy(logits, truth) if labelled else None,
                  fp32_accuracy=accuracy(reference, truth) if labelled else None,
                  agreement=agreement(reference, logits), mean_kl=mean_kl(reference, logits), images=len(logits))
