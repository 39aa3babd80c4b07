"""How much of a model's INT8 agreement with FP32 is the noise of rounding itself: a diagnostic.

    .venv/bin/python tools/int8_noise_floor.py --fixtures resnet50-photos-32 resnet18-photos-32

For each model (the accuracy benchmark's fixtures, trained here and cached), on its val images:
- FP32 top-1, and FP32 against itself when every pixel moves by one grey level (the check
  `edgeres convert --int8` logs and records) and when run in bfloat16;
- the INT8 model the quantization design simulates for a target's placement and grid (the
  plan the search starts from), with every layer INT8 and with fc (the logits) kept float;
- the same plan with every activation's rounding replaced by noise of the same size (uniform
  over one step of each point's grid; exact zeros, which INT8 keeps exact, left alone; no
  clipping; int8 weights; fc float), for a few seeds: an estimate of what the random part of
  rounding at these ranges costs on its own. Where it is near or below the bar, the search's
  remedies, which choose ranges and correct systematic error, have little left to work on;
  narrower ranges or a model less sensitive to noise (more training, not more calibration)
  would be needed. It is an estimate: rounding is not independent noise.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_accuracy import _load, _stability, fixtures  # noqa: E402

from edgeres.metrics import accuracy, agreement, mean_kl  # noqa: E402
from edgeres.models import load_model, module_logits  # noqa: E402
from edgeres.photoset import FIXTURES  # noqa: E402
from edgeres.preprocess import Preprocess  # noqa: E402
from edgeres.quantization.design import QuantizationDesign  # noqa: E402
from edgeres.quantization.simulate import ALL_PLACEMENTS, BRANCHES, GRIDS, Grid, simulated  # noqa: E402

PLACEMENTS = {"all": ALL_PLACEMENTS, "branches": frozenset({BRANCHES}), "none": frozenset()}


def rounding_noise(seed: int):
    """A quantizer's stand-in: uniform noise over one step of the point's grid on every value but exact zeros;
    no rounding, no clipping."""
    generator = torch.Generator().manual_seed(seed)

    def noisy(values: torch.Tensor, value_range, grid: Grid) -> torch.Tensor:
        low, high, levels = grid(value_range)
        step = (high - low) / (levels - 1)
        noise = (torch.rand(values.shape, generator=generator) - 0.5).to(values.device, values.dtype) * step
        return values + noise * (values != 0)  # zero is on every grid: a ReLU's zeros stay exact

    return noisy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", nargs="+", default=["resnet50-photos-32", "resnet18-photos-32"],
                        choices=[*FIXTURES, "resnet18-digits"])
    parser.add_argument("--cache", type=Path, default=Path(".cache/benchmark_accuracy"))
    parser.add_argument("--grid", default="asymmetric", choices=sorted(GRIDS),
                        help="the target's int8 grid (asymmetric: npu, rpi, mobile; symmetric: jetson)")
    parser.add_argument("--placement", default="all", choices=sorted(PLACEMENTS),
                        help="where the target quantizes beyond layer inputs (all: npu, rpi, mobile; "
                        "branches: x86; none: jetson)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    for fixture in fixtures(args.fixtures, args.cache):
        model = load_model(fixture.checkpoint, fixture.arch, labels=fixture.labels)
        spec = Preprocess.imagenet(fixture.imgsz)
        calib, _ = _load(fixture.calib_dir, fixture.labels, spec)
        val, truth = _load(fixture.val_dir, fixture.labels, spec)
        design = QuantizationDesign(model.module, calib, val, truth, PLACEMENTS[args.placement], args.grid)
        reference = design.reference

        def line(name: str, logits: np.ndarray) -> None:
            print(f"  {name:68s} agreement {agreement(reference, logits):7.2%}  KL {mean_kl(reference, logits):.1e}"
                  f"  top-1 {accuracy(logits, truth):.2%}", flush=True)

        print(f"{fixture.name}: FP32 top-1 {accuracy(reference, truth):.2%} on {len(val)} val images")
        stability = _stability(fixture, model, spec, reference)
        print(f"  {'FP32, every pixel moved by one grey level (' + str(stability['images']) + ' images)':68s} "
              f"agreement {stability['agreement']:7.2%}")
        with torch.no_grad():
            bf16_model = copy.deepcopy(design.folded).bfloat16()
            line("FP32 model run in bfloat16", np.concatenate([bf16_model(torch.from_numpy(val[i:i + 64]).bfloat16())
                                                               .float().numpy() for i in range(0, len(val), 64)]))
        plan, _ = design.best_plan()
        for kept in ((), ("fc",)):
            with simulated(plan.module, plan.ranges, placement=design.placement, higher=set(kept),
                           grid=GRIDS[args.grid]):
                line(f"INT8 simulated ({plan.method}{', bias corr.' if plan.bias_correction else ''}), "
                     f"{'fc kept float' if kept else 'every layer'}", module_logits(plan.module, val))
        for seed in range(args.seeds):
            with simulated(plan.module, plan.ranges, placement=design.placement, higher={"fc"},
                           grid=GRIDS[args.grid], quantize=rounding_noise(seed)):
                line(f"INT8 simulated, rounding replaced by noise, fc kept float (seed {seed})",
                     module_logits(plan.module, val))
    return 0


if __name__ == "__main__":
    sys.exit(main())
