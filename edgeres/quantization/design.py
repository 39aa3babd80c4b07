"""The quantization design: statistics once, then plans that every INT8 target applies its own way.

A plan is backend-neutral: a BatchNorm-folded float model (with its biases corrected
for quantization), one range per activation point, and the layers kept out of INT8. The
design also simulates a plan in PyTorch, which is how range methods, bias correction
and the layers worth keeping are chosen before any backend is run.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..calibration.folder import Progress, no_progress
from ..metrics import accuracy, agreement, mean_kl
from .corrections import correct_biases
from .points import fold_batchnorm, layers
from .ranges import AUTO_METHODS, Range, choose, minmax
from ..models import module_logits
from .simulate import ALL_PLACEMENTS, GRIDS, simulated
from .statistics import collect

if TYPE_CHECKING:
    from .finetune import FinetuneRun

SENSITIVITY_IMAGES = 64
CHOICE_IMAGES = 256
OUTPUT_POINT = "fc"


@dataclass(frozen=True)
class QuantizationPlan:
    """What an INT8 target applies: the corrected float model, each point's range, the layers left out."""

    module: torch.nn.Module = field(repr=False)
    ranges: dict[str, Range] = field(repr=False)
    method: str
    bias_correction: bool
    higher: tuple[str, ...] = ()  # layers kept in the target's higher precision
    finetuned: bool = False  # weights, biases and ranges trained by quantization-aware fine-tuning

    def with_higher(self, higher: tuple[str, ...]) -> "QuantizationPlan":
        return QuantizationPlan(self.module, self.ranges, self.method, self.bias_correction, tuple(higher),
                                self.finetuned)

    def describe(self) -> dict:
        return {
            "algorithm": "edgeres: BatchNorm folded, per-tensor activation ranges by "
                         f"{self.method}{' + fast bias correction' if self.bias_correction else ''}, "
                         "per-channel symmetric int8 weights"
                         f"{', then quantization-aware fine-tuning' if self.finetuned else ''}",
            "range_method": self.method, "bias_correction": self.bias_correction, "finetuned": self.finetuned,
            "points": len(self.ranges), "kept_higher": list(self.higher),
        }


@dataclass
class Simulated:
    agreement: float  # top-1 agreement with FP32 on the design's evaluation inputs
    kl: float
    accuracy: float | None


class QuantizationDesign:
    """Calibration statistics of one model, collected once, and the plans made from them."""

    def __init__(self, module: torch.nn.Module, calibration: np.ndarray, evaluation: np.ndarray,
                 truth: np.ndarray | None = None, placement: frozenset[str] = ALL_PLACEMENTS,
                 grid: str = "asymmetric", reference: np.ndarray | None = None) -> None:
        """`reference`: the FP32 logits on `evaluation`, where the caller has them already."""
        self.folded = fold_batchnorm(module)
        self.calibration = calibration
        self.evaluation, self.truth = evaluation, truth
        self.placement, self.grid = placement, grid
        memo = _memo_for(self.folded, calibration)
        if "stats" not in memo:
            memo["stats"] = collect(self.folded, calibration)
        self.stats = memo["stats"]
        self.layer_names = [layer.name for layer in layers(self.folded)]
        self.reference = module_logits(self.folded, evaluation) if reference is None else reference
        # bias correction measures the shift on the target's grid, so plans are per grid
        self._plans: dict[tuple[str, bool], QuantizationPlan] = memo.setdefault(("plans", grid), {})
        self._simulated: dict[tuple, tuple[QuantizationPlan, Simulated]] = memo.setdefault(
            ("simulated", placement, grid, _digest(evaluation)), {})
        # one fine-tuning per grid and placement: targets that share them share the run
        self._finetuned: dict[tuple, tuple] = memo.setdefault(("finetuned", placement, grid), {})

    def plan(self, method: str, bias_correction: bool, higher: tuple[str, ...] = ()) -> QuantizationPlan:
        key = (method, bias_correction)
        if key not in self._plans:
            ranges = {point: choose(stats, method) for point, stats in self.stats.items()}
            ranges[OUTPUT_POINT] = minmax(self.stats[OUTPUT_POINT])  # the answer is the largest logit
            # Every backend gives max-pool's output its input's parameters (a max keeps the grid)
            ranges["maxpool"] = ranges["conv1"]
            module = self.folded
            if bias_correction:
                module = copy.deepcopy(self.folded)
                correct_biases(module, ranges, self.calibration, grid=GRIDS[self.grid])
            self._plans[key] = QuantizationPlan(module, ranges, method, bias_correction)
        return self._plans[key].with_higher(higher)

    def simulate(self, plan: QuantizationPlan, subset: int | None = None) -> Simulated:
        """The plan's INT8 model, simulated, against FP32 on the evaluation inputs (the first `subset`)."""
        # by identity of the weights and ranges (a fine-tuned plan has the same names); the plan is kept
        # with its result, so those identities cannot be reused by another plan
        key = (plan.higher, subset, id(plan.module), id(plan.ranges))
        if key not in self._simulated:
            self._simulated[key] = (plan, self._simulate(plan, subset))
        return self._simulated[key][1]

    def _simulate(self, plan: QuantizationPlan, subset: int | None) -> Simulated:
        inputs, reference = self.evaluation[:subset], self.reference[:subset]
        with simulated(plan.module, plan.ranges, placement=self.placement, higher=set(plan.higher),
                       grid=GRIDS[self.grid]):
            quantized = module_logits(plan.module, inputs)
        top1 = None if self.truth is None else accuracy(quantized, self.truth[:subset])
        return Simulated(agreement(reference, quantized), mean_kl(reference, quantized), top1)

    def best_plan(self, methods: tuple[str, ...] = AUTO_METHODS,
                  corrections: tuple[bool, ...] = (True, False)) -> tuple[QuantizationPlan, list[dict]]:
        """The range method and bias correction whose simulated INT8 model is closest to FP32 (KL)."""
        table = []
        for method in methods:
            for correction in corrections:
                result = self.simulate(self.plan(method, correction), CHOICE_IMAGES)
                table.append({"range_method": method, "bias_correction": correction,
                              "simulated_agreement": result.agreement, "simulated_kl": result.kl})
        best = min(table, key=lambda row: (row["simulated_kl"], -row["simulated_agreement"]))
        return self.plan(best["range_method"], best["bias_correction"]), table

    def finetuned(self, plan: QuantizationPlan, *, seconds: float, steps: int | None = None,
                  train: np.ndarray | None = None, labels: np.ndarray | None = None, seed: int = 0,
                  track: Progress = no_progress, log: Callable[[str], None] = lambda message: None
                  ) -> tuple[QuantizationPlan | None, "FinetuneRun"]:
        """`plan` after quantization-aware fine-tuning on `train` (default: the calibration images), by
        distillation from FP32 (and `labels`' task loss); the evaluation inputs only draw its curve.
        None for the plan where the run ended before its first step."""
        from .finetune import finetune

        images = self.calibration if train is None else train
        # by the plan's identity (the plan is kept with the result, so the identity cannot be reused)
        key = (id(plan.module), id(plan.ranges), plan.higher, seconds, steps, seed, _digest(images),
               None if labels is None else _digest(labels), _digest(self.evaluation))
        if key not in self._finetuned:
            module, ranges, run = finetune(plan.module, plan.ranges, plan.higher, self.folded, images, self.evaluation,
                                           self.reference, placement=self.placement, grid=self.grid, seconds=seconds,
                                           steps=steps, labels=labels, seed=seed, track=track, log=log)
            tuned = (QuantizationPlan(module, ranges, plan.method, plan.bias_correction, plan.higher, finetuned=True)
                     if run.steps else None)
            self._finetuned[key] = (plan, tuned, run)
        return self._finetuned[key][1:]

    def sensitivity(self, plan: QuantizationPlan) -> list[tuple[str, float]]:
        """Each layer, by how much keeping it out of INT8 brings the simulated model closer to FP32 (KL)."""
        base = self.simulate(plan, SENSITIVITY_IMAGES).kl
        gains = []
        for name in self.layer_names:
            if name in plan.higher:
                continue
            kept = self.simulate(plan.with_higher((*plan.higher, name)), SENSITIVITY_IMAGES).kl
            gains.append((name, base - kept))
        return sorted(gains, key=lambda item: -item[1])


# Statistics, plans and simulations of the last few (model, calibration) pairs, kept for
# the process: converting one model for several targets (edgeres demo, a script, the
# tests) computes them once. Keyed by content, not identity, and small: a ResNet50's
# bias-corrected plans take a few hundred MB.
_MEMO: OrderedDict[str, dict] = OrderedDict()
MEMO_ENTRIES = 2


def _memo_for(module: torch.nn.Module, calibration: np.ndarray) -> dict:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    key = digest.hexdigest() + _digest(calibration)
    if key in _MEMO:
        _MEMO.move_to_end(key)
    else:
        _MEMO[key] = {}
        while len(_MEMO) > MEMO_ENTRIES:
            _MEMO.popitem(last=False)
    return _MEMO[key]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest() + str(array.shape)
