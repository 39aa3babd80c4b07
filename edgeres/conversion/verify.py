"""Compare an artifact's logits with PyTorch's and enforce the target's tolerance."""

from __future__ import annotations

import numpy as np

from pathlib import Path
from typing import Sequence

from ..errors import ModeUnavailableError, VerificationError
from ..preprocess import Preprocess
from ..runtime import backend_class
from ..targets.base import Tolerance
from .measure import artifact_logits


def compare_logits(reference: np.ndarray, candidate: np.ndarray, source: str) -> dict:
    """The artifact's logits against PyTorch's. A non-finite logit on either side is the largest possible
    difference and no agreement: argmax of a row of NaNs would otherwise "agree" with anything."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    finite = bool(np.isfinite(reference).all() and np.isfinite(candidate).all())
    max_abs = float(np.abs(reference - candidate).max()) if finite else float("inf")
    scale = float(np.abs(reference).max()) if finite else 1.0
    scale = scale or 1.0
    rows_finite = np.isfinite(candidate).all(1) & np.isfinite(reference).all(1)
    agreement = float(((reference.argmax(1) == candidate.argmax(1)) & rows_finite).mean())
    return {
        "reference": "pytorch",
        "samples": int(len(reference)),
        "sample_source": source,
        "max_abs_logit_diff": max_abs,
        "max_rel_logit_diff": max_abs / scale,
        "max_abs_logit": scale,
        "top1_agreement": agreement,
    }


def enforce(verification: dict, precision: str, tolerance: Tolerance, artifact: str) -> None:
    """Raise VerificationError when a float artifact is not faithful enough to be shipped.

    INT8 is judged by the accuracy bar of the quantization search instead, but no precision
    may give a non-finite logit.
    """
    if not np.isfinite(verification["max_abs_logit_diff"]):
        raise VerificationError(f"{artifact}: gives non-finite logits (NaN or inf) where PyTorch gives finite ones; "
                                "the export is wrong, please report it")
    allowed = tolerance.fp32_allowed(verification["max_abs_logit"])
    if precision == "fp32" and verification["max_abs_logit_diff"] > allowed:
        raise VerificationError(
            f"{artifact}: FP32 logits differ from PyTorch by {verification['max_abs_logit_diff']:.2e}, "
            f"more than the allowed {allowed:.0e}; the export is wrong, please report it"
        )
    if precision == "fp16" and verification["max_rel_logit_diff"] > tolerance.fp16_max_rel:
        raise VerificationError(
            f"{artifact}: FP16 logits differ from PyTorch by {verification['max_rel_logit_diff']:.1%} "
            f"of the largest logit, more than the allowed {tolerance.fp16_max_rel:.0%}; use fp32 for this model"
        )


def other_modes(path: Path, spec: Preprocess, crops: Sequence[np.ndarray], reference: np.ndarray) -> dict:
    """The artifact in every faster mode its runtime offers (OpenVINO: bf16, fp16) against PyTorch.

    A device may be asked to run it that way (`--precision bf16` on AMX), so the record says what
    each mode costs, measured where this host has the mode, and why not where it has not.
    Runtimes without modes add nothing.
    """
    modes = backend_class(path).execution_precisions
    if not modes:
        return {}
    measured = {}
    for mode in modes[1:]:
        try:
            logits = artifact_logits(path, spec, crops, precision=mode)
        except ModeUnavailableError as error:
            measured[mode] = {"measured": False, "reason": error.reason}
            continue
        found = compare_logits(reference, logits, "")
        measured[mode] = {"measured": True, **{key: found[key] for key in MODE_FIELDS}}
    return {"execution_precision": modes[0], "modes": measured}


MODE_FIELDS = ("max_abs_logit_diff", "max_rel_logit_diff", "top1_agreement")
