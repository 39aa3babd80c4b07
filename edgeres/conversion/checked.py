"""`edgeres convert` end to end: convert (within an accuracy budget if asked), judge, report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..calibration import read_calibration
from ..calibration.folder import Progress, no_progress
from ..errors import EdgeresError
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..targets.base import ConvertResult
from .pipeline import RANDOM_REFERENCE_COUNT, ConvertOptions, convert
from .report import EvalSet, judge, report_row, update_reports


@dataclass
class CheckedConversion:
    result: ConvertResult
    row: dict  # the report's row for this artifact
    reports: list[Path]
    budget_failure: str | None = None  # set when the accuracy budget could not be met
    companion_rows: list[dict] = field(default_factory=list)  # other artifacts of the same conversion


def convert_checked(model: LoadedModel, options: ConvertOptions, *, val: Path | None = None,
                    max_drop: float | None = None, threads: int | None = None, progress: Progress = no_progress,
                    log: Callable[[str], None] = print) -> CheckedConversion:
    """Convert, then measure the artifact against FP32 (on --val, else the calibration images) and its latency."""
    _check_budget_options(options, val, max_drop)
    spec = Preprocess.imagenet(options.imgsz)
    data = eval_set(model, options, val, spec)
    budget = None
    if max_drop is None:
        result = convert(model, options, progress=progress, log=log)
        judged = judge(result.path, model.module, spec, model.labels, data)
    else:
        from .accuracy import meet_budget

        budget = meet_budget(model, options, data, max_drop, progress=progress, log=log)
        result, judged = budget.result, budget.judged
    log(f"Measuring {result.path.name}: accuracy on {judged.images} {data.source} images, latency")
    row = report_row(result.path, result.record, judged, data.source, threads)
    failure = None
    if budget is not None:
        row["budget"] = {"max_drop_points": max_drop, "met": budget.met, "tried": budget.tried,
                         "sensitivity": [[name, kl] for name, kl in budget.sensitivity]}
        if not budget.met:
            failure = (f"no INT8 artifact met the budget of {max_drop:g} points: the best, {result.path.name} "
                       f"(kept as written, {', '.join(budget.kept_float) or 'nothing'} in float), loses "
                       f"{judged.drop_points:.2f} points; raise --max-drop, add calibration images, or use --fp16")
    reports = update_reports(Path(options.out_dir), row)
    companion_rows = []
    for companion in result.companions:
        from ..runtime.classifier import Classifier

        judged = judge(companion, model.module, spec, model.labels, data)
        companion_rows.append(report_row(companion, Classifier(companion).record, judged, data.source, threads))
        update_reports(Path(options.out_dir), companion_rows[-1])
    return CheckedConversion(result, row, reports, failure, companion_rows)


def _check_budget_options(options: ConvertOptions, val: Path | None, max_drop: float | None) -> None:
    if max_drop is None:
        return
    if options.precision != "int8":
        raise EdgeresError("--max-drop is an accuracy budget for INT8: add --int8")
    if val is None:
        raise EdgeresError("--max-drop needs labelled images to measure the drop: add --val DIR (an ImageFolder)")
    if max_drop < 0:
        raise EdgeresError(f"--max-drop is in percentage points and cannot be negative, got {max_drop:g}")
    if options.keep_float:
        raise EdgeresError("give either --keep-float or --max-drop: the budget chooses the layers itself")


def eval_set(model: LoadedModel, options: ConvertOptions, val: Path | None, spec: Preprocess) -> EvalSet:
    """The labelled --val images; else the calibration images (agreement only); else seeded random images."""
    if val is not None:
        return EvalSet.from_val(val, model.labels)
    if options.calib is not None:
        calibration = read_calibration(options.calib, spec, size=options.calib_size, seed=options.seed,
                                       every=options.calib_every)
        return EvalSet(calibration.crops, None, "calibration")
    rng = np.random.default_rng(options.seed)
    frames = [rng.integers(0, 256, (spec.crop, spec.crop, 3), dtype=np.uint8) for _ in range(RANDOM_REFERENCE_COUNT)]
    return EvalSet(frames, None, "random")
