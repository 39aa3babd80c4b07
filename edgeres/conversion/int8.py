"""INT8 by search: the quantization design's plans, each built by the target and judged for real."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..calibration.folder import MIN_TO_HOLD_OUT, CalibrationSet, Progress, no_progress
from ..errors import EdgeresError
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..quantization.design import QuantizationDesign, QuantizationPlan
from ..quantization.search import Attempt, Bar, Measured, SearchResult, search
from ..targets.base import Built, ConvertJob, Target
from .measure import EvalSet, artifact_logits, fp32_stability
from .options import DEFAULT_MAX_DROP, ConvertOptions


@dataclass
class Int8Outcome:
    """What the search tried and the attempt it kept."""

    result: SearchResult
    bar: Bar
    evaluated_on: str
    finetune: dict | None = None  # what the search's fine-tuning did (its attempt kept or not), if it ran
    fp32_stability: dict | None = None  # where the bar was missed: measure.fp32_stability on its images

    @property
    def best(self) -> Attempt:
        return self.result.best

    @property
    def first(self) -> Attempt:
        return self.result.attempts[0]

    @property
    def built(self) -> Built:
        return self.best.built

    @property
    def plan(self) -> QuantizationPlan:
        return self.best.plan

    @property
    def met(self) -> bool:
        return self.result.met

    def summary(self) -> dict:
        """The search as the record and the report keep it."""
        result = self.result
        return {"bar": asdict(self.bar), "evaluated_on": self.evaluated_on, "met": result.met,
                "finetune": self.finetune, "fp32_stability": self.fp32_stability,
                "attempts": [attempt.row() for attempt in result.attempts], "simulated_choices": result.simulated,
                "sensitivity_top": [[name, gain] for name, gain in result.sensitivity[:10]],
                "chosen": result.attempts.index(result.best),
                **({"refused": result.refused} if result.refused else {})}


def search_int8(model: LoadedModel, options: ConvertOptions, target: Target, job: ConvertJob, spec: Preprocess,
                calibration: CalibrationSet, data: EvalSet, scratch: Path, log: Callable[[str], None],
                track: Progress = no_progress) -> Int8Outcome:
    log(f"Collecting activation statistics on {len(calibration)} calibration images")
    design = QuantizationDesign(model.module, spec.tensors(calibration.crops), spec.tensors(data.crops), data.truth,
                                target.placement, target.activation_grid(job), reference=data.reference)
    _check_layers(options.keep, design.layer_names)
    count = iter(range(1000))

    def attempt(plan: QuantizationPlan) -> tuple[Measured, Built]:
        built = target.build(job, plan, scratch / f"attempt-{next(count)}")
        primary = built.artifacts[0]
        judged_on = built.stand_in or primary
        judged = data.judge(artifact_logits(judged_on.path, judged_on.preprocess, data.crops))
        size_mb = sum(path.stat().st_size for path in primary.files) / 1e6
        return Measured(**asdict(judged), size_mb=size_mb), built

    bar = accuracy_bar(options, data)
    log(f"Accuracy bar: {bar.describe()} on {data.describe()}")
    method = None if options.calib_method == "auto" else options.calib_method
    remedy = _finetuner(design, options, spec, model, data, track, log)
    result = search(design, attempt, bar, method=method, bias_correction=options.bias_correction,
                    keep=tuple(options.keep), max_kept=options.max_kept, log=log, finetune=remedy,
                    always_finetune=options.finetune == "always")
    judged = data.describe()
    if result.best.built.stand_in is not None:
        judged += f" (through {result.best.built.stand_in.path.name}, the same graph on ONNX Runtime's CPU)"
    return Int8Outcome(result, bar, judged, finetune=remedy.run if remedy else None,
                       fp32_stability=None if result.met else _stability(data, bar, options.seed, log))


def _stability(data: EvalSet, bar: Bar, seed: int, log: Callable[[str], None]) -> dict:
    """Where the bar was missed, whether the bar is within this model's own steadiness (an FP32 pass)."""
    stability = fp32_stability(data, seed)
    stability["note"] = fragility_note(stability, bar, labelled=data.truth is not None)
    log(stability["note"] or f"FP32 keeps its own answer on {stability['agreement']:.1%} of {stability['images']} "
        "of these images when every pixel moves by one grey level")
    return stability


MIN_CHANGED = 3  # fewer changed answers say nothing of the model (on 25 images one is 4%)


def fragility_note(stability: dict, bar: Bar, labelled: bool) -> str | None:
    """What to tell the user where FP32 changes a quarter or more of the disagreement the bar allows under
    one grey level: its near-ties are decided by rounding, whatever the quantization does."""
    changed, images = stability["changed"], stability["images"]
    if changed < MIN_CHANGED or changed / images < (1 - bar.min_agreement) / 4:
        return None
    judge = ("--max-drop with a lower --min-agreement" if labelled
             else "--val DIR (labelled images) with --max-drop and a lower --min-agreement")
    return (f"FP32 itself changes {changed} of {images} answers ({changed / images:.1%}) when every pixel moves by "
            "one grey level, about the size of the input's INT8 rounding: on a model this fragile, agreement with "
            f"FP32 is partly decided by rounding on near-ties; top-1 lost says more ({judge})")


class _Finetuner:
    """The search's last remedy: the design's fine-tuning, on the calibration images or --train (read when
    the remedy runs, not before)."""

    def __init__(self, design: QuantizationDesign, options: ConvertOptions, spec: Preprocess, labels: list[str],
                 track, log) -> None:
        self.design, self.options, self.spec, self.labels = design, options, spec, labels
        self.track, self.log = track, log
        self.run: dict | None = None  # what the run did: the search fine-tunes once

    def __call__(self, plan: QuantizationPlan) -> QuantizationPlan | None:
        options = self.options
        train, truth, source = self._training_images()
        budget = f"{options.finetune_steps} steps or " if options.finetune_steps else ""
        self.log(f"Fine-tuning the closest plan (quantization-aware, on {source}; at most {budget}"
                 f"{options.finetune_minutes:g} min; Ctrl-C keeps the best so far)")
        tuned, run = self.design.finetuned(plan, seconds=60 * options.finetune_minutes, steps=options.finetune_steps,
                                           train=train, labels=truth, seed=options.seed, track=self.track,
                                           log=self.log)
        self.run = {**run.describe(), "data": source}
        if tuned is None:
            self.log("Fine-tuning ended before its first step: nothing to build")
        return tuned

    def _training_images(self):
        if self.options.train is None:
            return None, None, f"{len(self.design.calibration)} calibration images, by distillation from FP32"
        from .measure import MAX_EVAL_IMAGES, labelled_crops

        crops, truth = labelled_crops(self.options.train, self.labels, self.spec, "--train")
        return (self.spec.tensors(crops), truth,
                f"{len(crops)} labelled --train images (at most {MAX_EVAL_IMAGES}, spread over the classes), by "
                "distillation from FP32 and their labels")


def _finetuner(design: QuantizationDesign, options: ConvertOptions, spec: Preprocess, model: LoadedModel,
               data: EvalSet, track, log) -> _Finetuner | None:
    """The remedy, where the images INT8 is judged on are not the ones it would train on."""
    if options.finetune == "never":
        return None
    if data.source == "calibration":  # too few images to hold some back: it would fit what it is judged on
        if options.finetune == "always":
            raise EdgeresError("--finetune needs images it does not train on to be judged on: give at least "
                               f"{MIN_TO_HOLD_OUT} calibration images (a quarter is held back) or --val DIR")
        log(f"Fine-tuning left out: with fewer than {MIN_TO_HOLD_OUT} calibration images none are held back, and "
            "it would be judged on the images it trains on (give more, or --val DIR)")
        return None
    return _Finetuner(design, options, spec, model.labels, track, log)


def accuracy_bar(options: ConvertOptions, data: EvalSet) -> Bar:
    max_drop = options.max_drop
    if max_drop is None and data.truth is not None:
        max_drop = DEFAULT_MAX_DROP
    return Bar(options.min_agreement, max_drop)


def _check_layers(names: tuple[str, ...], layers: list[str]) -> None:
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise EdgeresError(f"no layer named {', '.join(unknown)} in the model; layers are {', '.join(layers)}")
