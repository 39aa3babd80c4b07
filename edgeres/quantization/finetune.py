"""Quantization-aware fine-tuning: when calibration alone is not enough, train the plan itself.

The model fine-tuned is the one the design simulates for the target: the plan's folded
float weights and biases, int8 weights (per-channel, straight-through rounding), and an
activation quantizer at every point the target places one, on the target's own grid,
with its range learned (LSQ-style: the gradient reaches the range through the step and
the clipping). It learns by distillation from the FP32 model on the training images,
flipped, shifted and mixed (no labels needed); given labels, the task loss is added.

What comes out is a plan like any other (weights, biases, one range per point, the same
layers kept), so every target's own tool applies it exactly as it applies a calibration
plan. The images it is judged on are never among those it trains on.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..metrics import agreement, mean_kl
from ..models import module_logits
from .points import blocks, layers
from ..calibration.folder import Progress, no_progress
from .ranges import Range
from .simulate import GRIDS, output_quantized, quantize_weight

BATCH = 32
WEIGHT_LR = 1e-5  # Adam on the folded weights; measured on the hard ResNet18: 1e-4 and above
# first undo what calibration reached (sign-like first steps on weights of about 1e-2)
BIAS_LR = 1e-3  # biases carry the systematic shift rounding leaves (what bias correction fixes once): on the
# hard ResNet18, 150 steps reached 96.7% simulated agreement with it, 95.3% with biases at WEIGHT_LR
RANGE_LR = 5e-3  # per step, of each range's log width
CURVE_POINTS = 12  # held-out measurements along the run, for the report
CURVE_IMAGES = 256  # held-out images each point of the curve is simulated on (a ResNet50 at 224 px: ~25 s)
MONITOR_IMAGES = 4 * 32  # training images, un-augmented, whose loss picks the state kept
DEFAULT_EPOCHS = 120  # passes over the training images, fewer where the time budget would end the run first
# (the hard ResNet18's simulated KL kept falling to step 600: 2.3e-3 calibrated, 1.3e-3 at 150, 5e-4 at 600)
MAX_STEPS = 2000


@dataclass
class FinetuneRun:
    """What the fine-tuning did: for the record and the report's curve."""

    steps: int
    planned_steps: int
    seconds: float
    images: int  # training images (before augmentation)
    labelled: bool
    stopped: str  # "steps", "time" or "interrupted"
    curve: list[dict] = field(default_factory=list)  # step, seconds, loss, held-out agreement and KL (simulated)
    grid: str = ""

    def describe(self) -> dict:
        return {"steps": self.steps, "planned_steps": self.planned_steps, "seconds": round(self.seconds, 1),
                "training_images": self.images, "labelled": self.labelled, "stopped": self.stopped,
                "grid": self.grid, "curve": self.curve,
                "algorithm": "distillation from FP32 (KL) on augmented training images"
                             f"{' + cross-entropy on their labels' if self.labelled else ''}; int8 weights "
                             "with straight-through rounding, activation ranges learned (LSQ-style), Adam"}


def planned_steps(images: int) -> int:
    """DEFAULT_EPOCHS passes of BATCH images over `images` training images, at most MAX_STEPS."""
    return max(1, min(MAX_STEPS, -(-DEFAULT_EPOCHS * images // BATCH)))


def finetune(module: torch.nn.Module, ranges: dict[str, Range], higher: tuple[str, ...],
             teacher_logits: Callable[[torch.Tensor], torch.Tensor], train: np.ndarray,
             held_out: np.ndarray, held_reference: np.ndarray, *, placement: frozenset[str], grid: str,
             seconds: float, steps: int | None = None, labels: np.ndarray | None = None, seed: int = 0,
             track: Progress = no_progress, log: Callable[[str], None] = lambda message: None
             ) -> tuple[torch.nn.Module, dict[str, Range], FinetuneRun]:
    """Fine-tune a plan's folded `module` and `ranges`, int8 but for the layers in `higher`, for at most
    `seconds` (and `steps`); returns the weights and ranges with the lowest training loss, and the run.

    `train`: normalised NCHW images the model learns from; `held_out` (never trained on)
    and `held_reference` (FP32's logits on it) only draw the curve. Ctrl-C ends the run
    early and keeps the best state so far.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    student = copy.deepcopy(module).train(False)
    planned = steps if steps is not None else planned_steps(len(train))
    quantizers = _Quantizers(ranges, grid)
    parameters = list(student.parameters())
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam([{"params": [p for p in parameters if p.dim() > 1], "lr": WEIGHT_LR},
                                  {"params": [p for p in parameters if p.dim() <= 1], "lr": BIAS_LR},
                                  {"params": quantizers.parameters(), "lr": RANGE_LR}])
    most = planned
    horizon = [max(planned, 1)]  # the cosine's length, fitted to the budget as the pace becomes known
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, horizon[0]) / horizon[0])))
    inputs = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32))
    truth = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    monitor = inputs[torch.from_numpy(rng.choice(len(inputs), min(len(inputs), MONITOR_IMAGES), replace=False))]
    with torch.no_grad():
        monitor_targets = torch.cat([teacher_logits(monitor[i:i + BATCH]) for i in range(0, len(monitor), BATCH)])
    held_out, held_reference = held_out[:CURVE_IMAGES], held_reference[:CURVE_IMAGES]

    best: dict = {"loss": np.inf, "state": None}
    curve: list[dict] = []
    stopped, done = "steps", 0
    start = time.monotonic()

    def checkpoint() -> None:
        """Keep the state if its loss on the (un-augmented) training images is the lowest yet; draw the curve."""
        loss = _monitor_loss(student, monitor, monitor_targets)
        if loss < best["loss"]:
            best.update(loss=loss, state=_state(student, quantizers))
        point = _measure(student, held_out, held_reference)
        curve.append({"step": done, "seconds": round(time.monotonic() - start, 1), "loss": round(loss, 5), **point})
        held = "" if point["agreement"] is None else f", held-out agreement {point['agreement']:.2%}"
        log(f"Fine-tuning step {done}/{planned}: loss {loss:.4g}{held} (simulated)")

    every, interval = max(1, planned // CURVE_POINTS), seconds / CURVE_POINTS
    with _quantized(student, quantizers, higher, placement):
        try:
            for step in track(range(planned), "Fine-tuning", planned):
                if time.monotonic() - start > seconds:
                    stopped = "time"
                    break
                if step >= planned:  # shortened to the budget: the schedule has annealed
                    break
                _step(student, teacher_logits, optimizer, inputs, truth, rng)
                schedule.step()
                done = step + 1
                # every twelfth of the steps or of the time budget, whichever comes first
                since = time.monotonic() - start - (curve[-1]["seconds"] if curve else 0.0)
                measured = done % every == 0 or done == planned or since > interval
                if measured:
                    checkpoint()
                if measured or done in REPLAN_AT:  # the pace so far, checkpoints included
                    planned = horizon[0] = _fitted(most, done, time.monotonic() - start, seconds)
                    every = max(1, planned // CURVE_POINTS)
        except KeyboardInterrupt:
            stopped = "interrupted"
        if done and (not curve or curve[-1]["step"] != done):
            checkpoint()  # where the budget ended it between two points, that state is a candidate too
    run = FinetuneRun(done, planned, time.monotonic() - start, len(train), labels is not None, stopped, curve, grid)
    if best["state"] is None:  # not one step: the plan as it was
        return copy.deepcopy(module).eval(), dict(ranges), run
    return (*_restore(module, best["state"]), run)


REPLAN_AT = (3, 12, 48)  # steps after which (and after each checkpoint) the plan is fitted to the budget


def _fitted(most: int, done: int, elapsed: float, seconds: float) -> int:
    """The steps that fit in `seconds` at the pace so far, at most `most`: the learning rate anneals
    before the budget ends (a run cut short mid-schedule stops at its highest rates). Refitted as the
    pace settles, so a slow first step does not shorten the run for good."""
    # at least the steps done (then the run ends here: no more fits), never more than `most`; a tenth of
    # the budget is left for the last checkpoint
    return min(most, max(done, int(0.9 * seconds * done / max(elapsed, 1e-9))))


def _step(student: torch.nn.Module, teacher_logits, optimizer, inputs: torch.Tensor, truth: torch.Tensor | None,
          rng: np.random.Generator) -> None:
    batch = torch.from_numpy(rng.choice(len(inputs), min(BATCH, len(inputs)), replace=False))
    x, mix, order = _augment(inputs[batch], rng)
    with torch.no_grad():
        soft = teacher_logits(x)
    logits = student(x)
    loss = _distillation(logits, soft)
    if truth is not None:
        hard = truth[batch]
        loss = loss + mix * F.cross_entropy(logits, hard) + (1 - mix) * F.cross_entropy(logits, hard[order])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class _Quantizers(torch.nn.Module):
    """One learnable range per activation point, on the target's grid.

    A range is (low, high) times learned factors; a point that calibration saw only
    non-negative keeps low at 0 (ReLU outputs), and every range spans zero.
    """

    def __init__(self, ranges: dict[str, Range], grid: str) -> None:
        super().__init__()
        self.names = sorted(point for point in ranges if point != "maxpool")
        self.grid = grid
        self.register_buffer("start", torch.tensor([ranges[p] for p in self.names], dtype=torch.float32))
        self.log_factors = torch.nn.Parameter(torch.zeros(len(self.names), 2))  # relative: one step size for all
        self.index = {name: i for i, name in enumerate(self.names)}
        self.index["maxpool"] = self.index["conv1"]  # a max keeps its input's grid, in every backend

    def range_of(self, point: str) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.index[point]
        factors = self.log_factors[i].exp()
        low = (self.start[i, 0] * factors[0]).clamp(max=0.0)
        high = (self.start[i, 1] * factors[1]).clamp(min=1e-6)
        return low, high

    def ranges(self) -> dict[str, Range]:
        with torch.no_grad():
            found = {point: tuple(float(v) for v in self.range_of(point)) for point in self.names}
        found["maxpool"] = found["conv1"]
        return found

    def forward(self, values: torch.Tensor, point: str) -> torch.Tensor:
        low, high = self.range_of(point)
        return fake_quantize_learned(values, low, high, self.grid)


def fake_quantize_learned(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, grid: str) -> torch.Tensor:
    """simulate.fake_quantize with gradients: rounding passes straight through; the range learns
    through the step size and the clipping (the grid's own mapping, applied to tensors)."""
    low, high, levels = GRIDS[grid]((low, high))
    scale = torch.clamp_min(high - low, 1e-8) / (levels - 1)
    zero = _round(-low / scale)
    return (torch.clamp(_round(values / scale) + zero, 0, levels - 1) - zero) * scale


def _round(values: torch.Tensor) -> torch.Tensor:
    return values + (torch.round(values) - values).detach()


class _WeightInt8(torch.nn.Module):
    """simulate.quantize_weight, its rounding passed straight through (the scale max|w|/127 never clips)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (quantize_weight(weight.detach()) - weight).detach()


@contextmanager
def _quantized(module: torch.nn.Module, quantizers: _Quantizers, higher: tuple[str, ...],
               placement: frozenset[str]) -> Iterator[None]:
    """`module` computes as simulate.simulated would, differentiably, with `quantizers`' ranges."""
    named = dict(module.named_modules())
    handles, weighted = [], []
    try:
        for name, block in blocks(module):
            handles.append(block.register_forward_hook(lambda _, __, out, n=name: quantizers(out, n)))
        for layer in layers(module):
            if layer.name in higher:
                continue
            target = named[layer.name]
            handles.append(target.register_forward_pre_hook(
                lambda _, args, p=layer.input_point: (quantizers(args[0], p),)))
            if output_quantized(layer, placement):
                handles.append(target.register_forward_hook(lambda _, __, out, n=layer.name: quantizers(out, n)))
            parametrize.register_parametrization(target, "weight", _WeightInt8())
            weighted.append(target)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for target in weighted:
            parametrize.remove_parametrizations(target, "weight", leave_parametrized=False)


def _augment(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Flips, shifts of up to an eighth of the side, and half the batches mixed in pairs: the teacher
    labels each new input, so distillation sees more than the calibration crops themselves."""
    flip = torch.from_numpy(rng.random(len(x)) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    side = x.shape[-1]
    pad = max(1, side // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = rng.integers(0, 2 * pad + 1, 2)
    x = padded[:, :, dy:dy + side, dx:dx + side]
    mix = float(rng.beta(0.4, 0.4)) if rng.random() < 0.5 else 1.0
    order = torch.from_numpy(rng.permutation(len(x)))
    return mix * x + (1 - mix) * x[order], mix, order


def _monitor_loss(student: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([student(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
    return float(_distillation(logits, targets))


def _distillation(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(targets, 1), log_target=True, reduction="batchmean")


def _measure(student: torch.nn.Module, held_out: np.ndarray, reference: np.ndarray) -> dict:
    if len(held_out) == 0:
        return {"agreement": None, "kl": None}
    logits = module_logits(student, held_out)
    return {"agreement": round(agreement(reference, logits), 5), "kl": round(mean_kl(reference, logits), 6)}


def _state(module: torch.nn.Module, quantizers: _Quantizers) -> tuple[dict, dict]:
    weights = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()
               if "parametrizations" not in name or name.endswith("original")}
    return weights, quantizers.ranges()


def _restore(original: torch.nn.Module, state: tuple[dict, dict]) -> tuple[torch.nn.Module, dict[str, Range]]:
    weights, ranges = state
    module = copy.deepcopy(original)
    clean = {name.replace("parametrizations.weight.original", "weight"): tensor for name, tensor in weights.items()}
    module.load_state_dict(clean)
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval(), ranges
