"""An accuracy budget for INT8: measure the drop against FP32, keep the most sensitive layers in float.

Sensitivity is measured once, in PyTorch, by quantizing one layer at a time (per-channel
int8 weights, per-tensor int8 input from the calibration ranges) and scoring how far the
probabilities move on the validation images (KL divergence from FP32). The backend then
converts with the top layers kept in float, 1, 2, 4, ... of them, until the drop measured
on the real artifact fits the budget.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import EdgeresError
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..targets import resolve_target
from ..targets.base import ConvertResult
from .pipeline import ConvertOptions, convert
from .report import EvalSet, Judged, judge

MAX_SENSITIVITY_IMAGES = 256
KEPT_COUNTS = (1, 2, 4, 8, 16)


class BudgetNotMetError(EdgeresError):
    """No artifact tried met the accuracy budget; the best one was kept."""


@dataclass
class BudgetResult:
    result: ConvertResult
    judged: Judged
    kept_float: tuple[str, ...]
    tried: list[dict]  # each attempt: layers kept in float and the drop it gave
    sensitivity: list[tuple[str, float]]
    met: bool


def meet_budget(model: LoadedModel, options: ConvertOptions, val: EvalSet, max_drop: float, *,
                progress, log: Callable[[str], None]) -> BudgetResult:
    """Convert INT8 within `max_drop` points of FP32 top-1 on `val`, keeping layers in float if needed."""
    if val.truth is None:
        raise EdgeresError("an accuracy budget needs labelled data: add --val DIR (an ImageFolder)")
    spec = Preprocess.imagenet(options.imgsz)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgeres-budget-", dir=out_dir) as scratch:
        attempt = replace(options, out_dir=Path(scratch) / "0", check_int8_agreement=False)
        result = convert(model, attempt, progress=progress, log=log)
        judged = judge(result.path, model.module, spec, model.labels, val)
        tried = [{"kept_float": [], "drop_points": judged.drop_points}]
        log(f"INT8 top-1 {judged.accuracy:.2%} vs FP32 {judged.fp32_accuracy:.2%}: "
            f"{judged.drop_points:.2f} points lost (budget {max_drop:g})")
        best = (judged.drop_points, result, judged, ())
        ranking: list[tuple[str, float]] = []
        if judged.drop_points > max_drop and not resolve_target(options.target)[0].keeps_float:
            log(f"Target {options.target} quantizes every layer: no layer can be kept in float")
        elif judged.drop_points > max_drop:
            ranking = layer_sensitivity(model.module, spec, result_calibration(model, options, spec), val)
            log("Most sensitive layers: " + ", ".join(f"{name} ({kl:.2e})" for name, kl in ranking[:5]))
            for count in [c for c in KEPT_COUNTS if c <= len(ranking)]:
                keep = tuple(name for name, _ in ranking[:count])
                attempt = replace(options, out_dir=Path(scratch) / str(count), keep_float=keep,
                                  check_int8_agreement=False)
                candidate = convert(model, attempt, progress=progress, log=log)
                scored = judge(candidate.path, model.module, spec, model.labels, val)
                tried.append({"kept_float": list(keep), "drop_points": scored.drop_points})
                log(f"Keeping {', '.join(keep)} in float: {scored.drop_points:.2f} points lost")
                if scored.drop_points < best[0]:
                    best = (scored.drop_points, candidate, scored, keep)
                if scored.drop_points <= max_drop:
                    break
        drop, result, judged, keep = best
        final = _move_into(result, out_dir)
    return BudgetResult(final, judged, keep, tried, ranking, met=drop <= max_drop)


def _move_into(result: ConvertResult, out_dir: Path) -> ConvertResult:
    """The chosen candidate's files into the output folder, sidecar and golden file last."""
    order = sorted(result.files, key=lambda f: f.name.endswith((".json", ".npz")))
    moved = []
    for path in order:
        os.replace(path, out_dir / path.name)
        moved.append(out_dir / path.name)
    return replace(result, path=out_dir / result.path.name, files=tuple(moved))


def result_calibration(model: LoadedModel, options: ConvertOptions, spec: Preprocess) -> np.ndarray:
    from ..calibration import read_calibration

    calibration = read_calibration(options.calib, spec, size=options.calib_size, seed=options.seed,
                                   every=options.calib_every)
    return spec.tensors(calibration.crops)


def layer_sensitivity(module: torch.nn.Module, spec: Preprocess, calibration: np.ndarray,
                      val: EvalSet) -> list[tuple[str, float]]:
    """(layer, KL from FP32 when only that layer is quantized), most sensitive first."""
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ranges = _input_ranges(module, layers, torch.from_numpy(calibration))
    inputs = torch.from_numpy(spec.batch(val.frames[:MAX_SENSITIVITY_IMAGES]))
    with torch.inference_mode():
        reference = torch.log_softmax(module(inputs), dim=1)
    scores = []
    for name, layer in layers:
        with _quantized(layer, *ranges[name]), torch.inference_mode():
            quantized = torch.log_softmax(module(inputs), dim=1)
        kl = (reference.exp() * (reference - quantized)).sum(dim=1).mean()
        scores.append((name, float(kl)))
    return sorted(scores, key=lambda item: -item[1])


def _input_ranges(module, layers, calibration: torch.Tensor) -> dict[str, tuple[float, float]]:
    ranges: dict[str, list[float]] = {}

    def hook(name):
        def record(_, args):
            low, high = float(args[0].min()), float(args[0].max())
            seen = ranges.setdefault(name, [low, high])
            seen[0], seen[1] = min(seen[0], low), max(seen[1], high)
        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers]
    try:
        with torch.inference_mode():
            for start in range(0, len(calibration), 32):
                module(calibration[start : start + 32])
    finally:
        for handle in handles:
            handle.remove()
    return {name: tuple(value) for name, value in ranges.items()}


class _quantized:
    """Within the block, `layer` sees int8-quantized inputs and weights, as an INT8 backend would run it."""

    def __init__(self, layer: torch.nn.Module, low: float, high: float) -> None:
        self.layer, self.low, self.high = layer, min(low, 0.0), max(high, 0.0)

    def __enter__(self) -> None:
        weight = self.layer.weight.detach()
        self.saved = weight.clone()
        axes = tuple(range(1, weight.dim()))
        scale = weight.abs().amax(dim=axes, keepdim=True).clamp_min(1e-12) / 127
        self.layer.weight.data = torch.round(weight / scale).clamp(-127, 127) * scale
        scale_in = max(self.high - self.low, 1e-12) / 255
        zero = round(-self.low / scale_in) - 128
        self.handle = self.layer.register_forward_pre_hook(
            lambda _, args: ((torch.round(args[0] / scale_in + zero).clamp(-128, 127) - zero) * scale_in,))

    def __exit__(self, *exc) -> None:
        self.layer.weight.data = self.saved
        self.handle.remove()
