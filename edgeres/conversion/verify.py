"""Hold an artifact's logits against PyTorch's to the target's tolerance, in every mode it may run in."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModeUnavailableError, VerificationError
from ..metrics import compare_logits, tolerance_breach
from ..preprocess import Preprocess
from ..runtime import backend_class
from ..targets.base import Tolerance
from .measure import artifact_logits


def enforce(verification: dict, precision: str, tolerance: Tolerance, artifact: str) -> None:
    """Raise VerificationError when a float artifact is not faithful enough to be shipped.

    INT8 is judged by the accuracy bar of the quantization search instead, but no precision
    may give a non-finite logit.
    """
    if not np.isfinite(verification["max_abs_logit_diff"]):
        raise VerificationError(f"{artifact}: gives non-finite logits (NaN or inf) where PyTorch gives finite ones; "
                                "the export is wrong, please report it")
    breach = tolerance_breach(precision, asdict(tolerance), verification["max_abs_logit_diff"],
                              verification["max_abs_logit"])
    if breach and precision == "fp32":
        raise VerificationError(f"{artifact}: FP32 logits differ from PyTorch by {breach}; the export is wrong, "
                                "please report it")
    if breach:
        raise VerificationError(f"{artifact}: FP16 logits differ from PyTorch by {breach}; use fp32 for this model")


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
