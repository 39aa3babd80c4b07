"""Compare an artifact's logits with PyTorch's and enforce the target's tolerance."""

from __future__ import annotations

import numpy as np

from ..errors import VerificationError
from ..targets.base import Tolerance


def compare_logits(reference: np.ndarray, candidate: np.ndarray, source: str) -> dict:
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    max_abs = float(np.abs(reference - candidate).max())
    scale = float(np.abs(reference).max()) or 1.0
    agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    return {
        "reference": "pytorch",
        "samples": int(len(reference)),
        "sample_source": source,
        "max_abs_logit_diff": max_abs,
        "max_rel_logit_diff": max_abs / scale,
        "top1_agreement": agreement,
    }


def enforce(verification: dict, precision: str, tolerance: Tolerance, artifact: str) -> None:
    """Raise VerificationError when a float artifact is not faithful enough to be shipped.

    INT8 is judged by the accuracy bar of the quantization search instead.
    """
    if precision == "fp32" and verification["max_abs_logit_diff"] > tolerance.fp32_max_abs:
        raise VerificationError(
            f"{artifact}: FP32 logits differ from PyTorch by {verification['max_abs_logit_diff']:.2e}, "
            f"more than the allowed {tolerance.fp32_max_abs:.0e}; the export is wrong, please report it"
        )
    if precision == "fp16" and verification["max_rel_logit_diff"] > tolerance.fp16_max_rel:
        raise VerificationError(
            f"{artifact}: FP16 logits differ from PyTorch by {verification['max_rel_logit_diff']:.1%} "
            f"of the largest logit, more than the allowed {tolerance.fp16_max_rel:.0%}; use fp32 for this model"
        )
