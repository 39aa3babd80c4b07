"""Golden samples: a few images and their reference logits that travel beside every artifact.

At conversion, `<stem>.golden.npz` stores a handful of calibration crops (as frames), the
FP32 PyTorch logits for them and the artifact's own logits on the conversion machine.
`edgeres verify ARTIFACT` runs the frames through the runtime installed on the device,
preprocessing included, and compares: a wrong runtime version, a broken delegate or a
preprocessing mismatch shows up on the device itself, before any user sees it.
This module needs no torch: it runs on the device.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ArtifactError
from .files import npz_headers
from .metrics import agreement, allowed_error, largest_logit, max_abs_difference, tolerance_breach

GOLDEN_SUFFIX = ".golden.npz"
GOLDEN_COUNT = 16
# Quantized kernels of two runtime builds may differ by a few output steps, not more.
INT8_DEVICE_MAX_REL = 0.05


def golden_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.stem + GOLDEN_SUFFIX)


def content_hash(frames: np.ndarray, reference: np.ndarray, expected: np.ndarray) -> str:
    """sha256 over every array a check reads: frames, PyTorch's logits and the artifact's own."""
    digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes())
    for logits in (reference, expected):
        digest.update(np.ascontiguousarray(logits, dtype=np.float32).tobytes())
    return digest.hexdigest()


def golden_record(frames: np.ndarray, reference: np.ndarray, expected: np.ndarray, artifact_stem: str,
                  tolerance: dict) -> dict:
    """What the artifact's record says of its golden samples (the record is written before the file)."""
    return {"file": artifact_stem + GOLDEN_SUFFIX, "samples": int(len(frames)), "reference": "pytorch fp32",
            "sha256": content_hash(frames, reference, expected), "tolerance": tolerance}


def golden_file(artifact: Path, record) -> Path:
    """The golden file `record` names beside `artifact` (an ArtifactError where it names none or a path)."""
    if not record.golden:
        raise ArtifactError(f"{artifact.name} carries no golden samples; convert it again with this edgeres")
    return _golden_file(artifact, record.golden)


def _golden_file(artifact: Path, info: dict) -> Path:
    """The golden file named in the record, only ever a file in the artifact's own folder."""
    name = info.get("file")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ArtifactError(f"{artifact.name}'s record names golden file {name!r}; it must be a plain file name "
                            "beside the artifact (the record was edited): convert again")
    return artifact.parent / name


def golden_bytes(frames: np.ndarray, reference: np.ndarray, expected: np.ndarray) -> bytes:
    """The golden file: frames uint8 BGR (N, H, W, 3), PyTorch's logits, the artifact's logits here."""
    stream = io.BytesIO()
    np.savez_compressed(stream, frames=frames, reference=reference.astype(np.float32),
                        expected=expected.astype(np.float32))
    return stream.getvalue()


@dataclass
class GoldenCheck:
    samples: int
    top1_vs_reference: float  # agreement with the FP32 PyTorch model
    max_abs_vs_reference: float
    top1_vs_expected: float  # agreement with this artifact's outputs at conversion
    max_abs_vs_expected: float
    scale: float  # the largest |reference logit|, for relative errors
    failures: list[str]
    clear_flips: int = 0  # top-1 differs where the reference's two best are further apart than the error allowed

    @property
    def passed(self) -> bool:
        return not self.failures


def check_golden(classifier) -> GoldenCheck:
    """Run the artifact's golden samples through `classifier` (an edgeres Classifier) and judge them."""
    frames, reference, expected = golden_samples(classifier.path, classifier.record)
    logits = classifier.logits_batch(list(frames))
    return judge_golden(logits, reference, expected, classifier.record, classifier.execution_precision,
                        classifier.path)


def golden_samples(artifact: Path, record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The golden frames, PyTorch's logits and the artifact's own at conversion, checked against `record`."""
    path = golden_file(artifact, record)
    from .preprocess import Preprocess

    crop = Preprocess.from_dict(record.preprocess).crop
    return _load(path, record.golden, crop, len(record.labels))


def judge_golden(logits: np.ndarray, reference: np.ndarray, expected: np.ndarray, record, mode: str,
                 artifact: Path) -> GoldenCheck:
    """How `logits` (the golden frames run by some runtime in float `mode`) stand against the record's rule."""
    logits = np.asarray(logits, np.float64)
    scale = largest_logit(reference)
    result = GoldenCheck(
        samples=len(logits),
        top1_vs_reference=agreement(reference, logits), max_abs_vs_reference=max_abs_difference(reference, logits),
        top1_vs_expected=agreement(expected, logits), max_abs_vs_expected=max_abs_difference(expected, logits),
        scale=scale, failures=[],
    )
    rule, tolerance = judged_as(record.precision, mode), _tolerance(record.golden, artifact)
    result.clear_flips = _clear_flips(logits, reference, 2 * allowed_error(rule, tolerance, scale))
    result.failures = _failures(result, rule, tolerance, conversion_top1=agreement(reference, expected))
    return result


def _clear_flips(logits: np.ndarray, reference: np.ndarray, margin: float) -> int:
    """Top-1 changes on samples whose reference top-1 leads its top-2 by more than `margin`: a near tie
    may flip within the allowed error (seeded random golden frames have them), a clear lead may not."""
    ordered = np.sort(reference, axis=1)
    lead = ordered[:, -1] - ordered[:, -2] if reference.shape[1] > 1 else np.full(len(reference), np.inf)
    return int(((logits.argmax(1) != reference.argmax(1)) & (lead > margin)).sum())


# What a record's golden tolerance may say: a record that allows anything would pass anything.
TOLERANCE_RANGES = {"fp32_max_abs": (0.0, 0.1), "fp16_max_rel": (0.0, 0.2), "int8_top1": (0.5, 1.0),
                    "fp32_scale": (1.0, 1e9)}


def _tolerance(info: dict, artifact: Path) -> dict:
    tolerance = info.get("tolerance")
    if not isinstance(tolerance, dict):
        raise ArtifactError(f"{artifact.name}'s record gives no golden tolerance; convert again")
    for key, (low, high) in TOLERANCE_RANGES.items():
        value = tolerance.get(key, 100.0 if key == "fp32_scale" else None)  # fp32_scale: records before it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
            raise ArtifactError(f"{artifact.name}'s record sets golden tolerance {key} to {value!r}, outside "
                                f"({low:g}, {high:g}]; the record was edited: convert again")
    return tolerance


def judged_as(precision: str, mode: str) -> str:
    """The rule an artifact of `precision` run in float `mode` is held to: a float artifact run in bf16
    or fp16 arithmetic (asked for on the device) answers to fp16's share of the largest logit."""
    return "fp16" if precision == "fp32" and mode in ("bf16", "fp16") else precision


def _failures(check: GoldenCheck, precision: str, tolerance: dict, conversion_top1: float) -> list[str]:
    failures = []
    breach = tolerance_breach(precision, tolerance, check.max_abs_vs_reference, check.scale)
    if breach:
        failures.append(f"logits differ from the FP32 reference by {breach}")
    if precision == "int8":
        needed = min(tolerance["int8_top1"], conversion_top1)
        if check.top1_vs_reference < needed:
            failures.append(f"top-1 agrees with the FP32 reference on {check.top1_vs_reference:.0%} of the samples "
                            f"(at least {needed:.0%} needed, as at conversion)")
        if check.max_abs_vs_expected / check.scale > INT8_DEVICE_MAX_REL:
            failures.append(f"logits differ from this artifact's logits at conversion by "
                            f"{check.max_abs_vs_expected / check.scale:.1%} of the largest logit "
                            f"(allowed {INT8_DEVICE_MAX_REL:.0%}): the runtime computes something else")
    if precision != "int8" and check.clear_flips:
        failures.append(f"top-1 agrees with the FP32 reference on only {check.top1_vs_reference:.0%} of the samples "
                        f"({check.clear_flips} of them with a clear lead)")
    return failures


MAX_GOLDEN_SAMPLES = 64  # edgeres writes GOLDEN_COUNT; a record claiming far more is not one of ours
MAX_GOLDEN_BYTES = 64 << 20  # whatever the record says: 16 frames at a 1024 crop are 48 MiB


def _load(path: Path, info: dict, crop: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The golden arrays, once their headers match what the record says they hold: `samples` frames of
    crop x crop pixels and that many rows of `classes` logits. Nothing is inflated before."""
    if not path.exists() and not path.is_symlink():
        raise ArtifactError(f"{path.name} is missing beside the artifact; copy it along with the artifact")
    samples = info.get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_GOLDEN_SAMPLES:
        raise ArtifactError(f"the record says its golden file holds {samples!r} samples; edgeres writes 1 to "
                            f"{MAX_GOLDEN_SAMPLES}: the record was edited, convert again")
    expected_shapes = {"frames": ((samples, crop, crop, 3), np.uint8), "reference": ((samples, classes), np.float32),
                       "expected": ((samples, classes), np.float32)}
    limit = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in expected_shapes.values())
    if limit > MAX_GOLDEN_BYTES:
        raise ArtifactError(f"the record says its golden file holds {limit >> 20} MiB of samples, more than the "
                            f"{MAX_GOLDEN_BYTES >> 20} MiB edgeres writes; the record was edited: convert again")
    headers = npz_headers(path, limit + (1 << 20), "golden file")
    for name, (shape, dtype) in expected_shapes.items():
        if name not in headers or headers[name] != (shape, np.dtype(dtype)):
            found = headers.get(name, "nothing")
            raise ArtifactError(f"{path.name} does not belong to this artifact: its record says {name} is {shape} "
                                f"{np.dtype(dtype)}, the file holds {found}; copy the artifact's own golden file, "
                                "or convert again")
    try:
        with np.load(path, allow_pickle=False) as data:
            frames, reference, expected = data["frames"], data["reference"], data["expected"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ArtifactError(f"{path.name} is not a readable golden file: {error}") from None
    if content_hash(frames, reference, expected) != info.get("sha256"):
        raise ArtifactError(f"{path.name} does not belong to this artifact (its samples differ from the record's)")
    if not (np.isfinite(reference).all() and np.isfinite(expected).all()):
        raise ArtifactError(f"{path.name} holds non-finite logits; it cannot judge anything: convert again")
    return frames, reference.astype(np.float64), expected.astype(np.float64)
