"""From a loaded model and options to a verified set of artifacts of one target and precision.

A target only builds. This pipeline does the rest, the same way for every target:
INT8 goes through the quantization design and its search for an artifact that meets the
accuracy bar; every artifact is verified through the runtime backend a device uses; the
record, golden samples, companion files and report row are staged and moved in as one set.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..artifact import ArtifactRecord, check_companions, sha256_of, sidecar_path
from ..calibration import CalibrationSet, read_calibration
from ..calibration.folder import DEFAULT_CALIB_SIZE, Progress, no_progress
from ..errors import CalibrationError, EdgeresError, TargetError, VerificationError
from ..golden import GOLDEN_COUNT, golden_record, golden_bytes
from ..logs import set_verbose
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..exporters.onnx_tools import MAX_OPSET, MIN_OPSET
from ..quantization.ranges import METHODS
from ..runtime.base import check_threads
from ..quantization.simulate import logits
from ..targets import REGISTRY, get_target, resolve_target
from ..targets.base import PRECISIONS, Built, BuiltArtifact, ConvertJob, Target
from .measure import EvalSet, artifact_logits, judge
from ..written import mark_written
from .output import OutputSet, scratch_folder
from .verify import compare_logits, enforce, other_modes

# Without calibration images, exports are checked on seeded random images.
RANDOM_REFERENCE_COUNT = 8
MAX_REFERENCE_SAMPLES = 64
MIN_IMGSZ, MAX_IMGSZ = 32, 1024  # above 1024 a ResNet's activations alone outgrow a device's memory
DEFAULT_MIN_AGREEMENT = 0.96
DEFAULT_MAX_DROP = 0.3  # top-1 points, with labelled --val images
DEFAULT_MAX_KEPT = 16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
CALIBRATION_METHODS = ("auto", *METHODS)  # the CLI's help lists the same


@dataclass(frozen=True)
class ConvertOptions:
    target: str = "onnx"
    precision: str = "fp32"
    out_dir: Path = Path("out")
    calib: Path | str | None = None  # folder, video, camera index, .npy/.npz or path list
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_every: int | None = None  # video or camera: every Nth frame
    calib_method: str = "auto"  # how activation ranges are chosen; auto: the best of them, simulated
    bias_correction: bool | None = None  # None: chosen with the range method
    imgsz: int = 224
    dynamic_batch: bool = False
    opset: int = 18
    name: str | None = None
    seed: int = 0
    preset: str | None = None
    verbose: bool = False
    keep: tuple[str, ...] = ()  # INT8: layers kept out of INT8 (conv1, layer3.1.conv2, fc), in the target's higher precision
    val: Path | None = None  # labelled ImageFolder the INT8 bar and the report are measured on
    max_drop: float | None = None  # INT8 bar: top-1 points lost on --val (default DEFAULT_MAX_DROP there)
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # INT8 bar: top-1 agreement with FP32
    max_kept: int = DEFAULT_MAX_KEPT  # INT8: at most this many layers kept out of INT8 by the search
    report: bool = True  # measure latency and write report.json/md/png
    threads: int | None = None  # for the report's latency

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeresError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise EdgeresError(f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                               f"got {self.calib_method!r}")
        if not MIN_IMGSZ <= self.imgsz <= MAX_IMGSZ:
            raise EdgeresError(f"--imgsz must be between {MIN_IMGSZ} and {MAX_IMGSZ} (larger inputs outgrow the "
                               f"memory of the devices edgeres targets), got {self.imgsz}")
        if self.calib_size < 1:
            raise CalibrationError(f"--calib-size must be at least 1, got {self.calib_size}")
        if Path(self.out_dir).is_file():
            raise EdgeresError(f"--out {self.out_dir} is a file; give a folder for the artifacts")
        if self.name is not None:
            check_name(self.name)
        if self.precision != "int8" and (self.keep or self.max_drop is not None):
            raise EdgeresError("--keep-float and --max-drop are for INT8: add --int8 --calib DIR")
        if self.precision == "int8" and self.calib is None:
            raise CalibrationError("--int8 needs calibration images: add --calib DIR (a folder of images, "
                                   "or a video, camera index, .npy/.npz or list of image paths)")
        if self.max_drop is not None and not math.isfinite(self.max_drop):
            raise EdgeresError(f"--max-drop must be a number of percentage points, got {self.max_drop}")
        if not math.isfinite(self.min_agreement):
            raise EdgeresError(f"--min-agreement must be a fraction between 0 and 1, got {self.min_agreement}")
        if self.max_drop is not None and self.max_drop < 0:
            raise EdgeresError(f"--max-drop is in percentage points and cannot be negative, got {self.max_drop:g}")
        if self.max_drop is not None and self.val is None:
            raise EdgeresError("--max-drop needs labelled images to measure the drop: add --val DIR (an ImageFolder)")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise EdgeresError(f"--min-agreement is a fraction between 0 and 1, got {self.min_agreement:g}")
        if self.max_kept < 0:
            raise EdgeresError(f"--max-kept cannot be negative, got {self.max_kept}")
        check_threads(self.threads)
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise EdgeresError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (what this ONNX exporter "
                               f"writes), got {self.opset}")


def check_name(name: str) -> str:
    """An artifact name is one plain file name: no folders, no '..', no leading dot."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise EdgeresError(f"--name {name!r} is not a plain artifact name: use letters, digits, '.', '_', '-' and "
                           "'+' (no '/', no '..', not starting with a dot), e.g. --name resnet18_v2")
    return name


@dataclass
class ConvertResult:
    path: Path  # the primary artifact, in its set folder
    record: ArtifactRecord
    files: tuple[Path, ...]  # every file of the set
    companions: tuple[Path, ...] = ()  # other artifacts of the same set (mobile: the .ptl)
    rows: list[dict] = field(default_factory=list)  # the report's rows, one per artifact
    search: dict | None = None  # INT8: what the search tried
    met: bool = True  # INT8: whether the accuracy bar was met


class AccuracyBarError(VerificationError):
    """No INT8 artifact met the accuracy bar; the best one was kept and reported."""

    def __init__(self, message: str, result: ConvertResult) -> None:
        super().__init__(message)
        self.result = result


def convert(model: LoadedModel, options: ConvertOptions, *, progress: Progress = no_progress,
            log: Callable[[str], None] = print) -> ConvertResult:
    """Convert `model` for `options.target`, verify it through its runtime, write it as one set."""
    set_verbose(options.verbose)
    if options.report:
        from .report import check_report_files

        check_report_files(Path(options.out_dir))
    target, profile = resolve_target(options.target)
    check_target_options(target, options)
    spec = Preprocess.imagenet(options.imgsz)
    stem = options.name or f"{model.arch}_{profile.name if profile else target.name}_{options.precision}"
    calibration = _calibration(options, spec, progress, log)
    data = evaluation_set(model, options, spec, calibration)
    job = ConvertJob(module=model.module, arch=model.arch, labels=model.labels, preprocess=target.input_spec(spec),
                     model_preprocess=spec, precision=options.precision, stem=stem,
                     calibration=calibration if options.precision == "int8" else None, opset=options.opset,
                     dynamic_batch=options.dynamic_batch, preset=options.preset, log=log)
    context = _Context(model, options, target, profile, spec, calibration, data, job, log)
    with scratch_folder() as scratch, OutputSet(Path(options.out_dir), stem) as output:
        if options.precision == "int8":
            built, search = _search_int8(context, Path(scratch))
        else:
            built, search = target.build(job, None, Path(scratch) / "build"), None
        result = _finish(context, built, search, output)
    if not result.met:
        raise AccuracyBarError(_bar_failure(result, options, data), result)
    return result


@dataclass
class _Context:
    model: LoadedModel
    options: ConvertOptions
    target: Target
    profile: object
    spec: Preprocess
    calibration: CalibrationSet | None
    data: EvalSet
    job: ConvertJob
    log: Callable[[str], None]

    @property
    def reference(self) -> np.ndarray:
        """FP32 logits on the evaluation crops."""
        if not hasattr(self, "_reference"):
            self._reference = torch_logits(self.model.module, self.spec.tensors(self.data.crops))
        return self._reference


def _calibration(options: ConvertOptions, spec: Preprocess, progress: Progress, log) -> CalibrationSet | None:
    if options.calib is None:
        return None
    calibration = read_calibration(options.calib, spec, size=options.calib_size, seed=options.seed,
                                   every=options.calib_every, progress=progress)
    summary = calibration.summary
    log(f"Read {summary['used']} images from {options.calib} ({summary['skipped']} unreadable, skipped)")
    return calibration


def evaluation_set(model: LoadedModel, options: ConvertOptions, spec: Preprocess,
                   calibration: CalibrationSet | None) -> EvalSet:
    """The labelled --val images; else the calibration images (agreement only); else seeded random images."""
    from ..evaluate import read_labelled_folder
    from ..errors import EvaluationError
    from ..images import ImageError, decode_image

    if options.val is not None:
        images = read_labelled_folder(options.val, model.labels)
        step = max(1, len(images.paths) // MAX_EVAL_IMAGES)  # an even spread over the classes
        crops, truth = [], []
        for path, label in zip(images.paths[::step][:MAX_EVAL_IMAGES], images.classes[::step][:MAX_EVAL_IMAGES]):
            try:
                image = decode_image(path)
            except ImageError as error:
                raise EvaluationError(f"--val: {error}; remove it or replace it") from None
            crops.append(spec.resize_and_crop(image))
            truth.append(label)
        return EvalSet(crops, np.array(truth), "validation")
    if calibration is not None:
        return EvalSet(calibration.crops, None, "calibration")
    return EvalSet(_random_crops(spec, options.seed), None, "random")


MAX_EVAL_IMAGES = 1000


def _random_crops(spec: Preprocess, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (spec.crop, spec.crop, 3), dtype=np.uint8) for _ in range(RANDOM_REFERENCE_COUNT)]


def _bar(options: ConvertOptions, data: EvalSet):
    from ..quantization.search import Bar

    max_drop = options.max_drop
    if max_drop is None and data.truth is not None:
        max_drop = DEFAULT_MAX_DROP
    return Bar(options.min_agreement, max_drop)


def _search_int8(context: _Context, scratch: Path) -> tuple[Built, dict]:
    from ..quantization.design import QuantizationDesign
    from ..quantization.search import Measured, search

    options, target, job, data = context.options, context.target, context.job, context.data
    context.log(f"Collecting activation statistics on {len(context.calibration)} calibration images")
    design = QuantizationDesign(context.model.module, context.spec.tensors(context.calibration.crops),
                                context.spec.tensors(data.crops), data.truth, target.placement,
                                target.activation_grid(job))
    _check_layers(options.keep, design.layer_names)
    count = iter(range(1000))

    def attempt(plan):
        built = target.build(job, plan, scratch / f"attempt-{next(count)}")
        primary = built.artifacts[0]
        logits = artifact_logits(primary.path, primary.preprocess, data.crops)
        judged = judge(logits, context.reference, data.truth)
        size = sum(f.stat().st_size for f in primary.files) / 1e6
        return Measured(judged.agreement, judged.accuracy, judged.fp32_accuracy, judged.mean_kl, size), built

    method = None if options.calib_method == "auto" else options.calib_method
    bar = _bar(options, data)
    context.log(f"Accuracy bar: {bar.describe()} on {len(data.crops)} {data.source} images")
    result = search(design, attempt, bar, method=method, bias_correction=options.bias_correction,
                    keep=tuple(options.keep), max_kept=options.max_kept, log=context.log)
    summary = {
        "bar": asdict(bar), "evaluated_on": f"{len(data.crops)} {data.source} images", "met": result.met,
        "attempts": [a.row() for a in result.attempts], "simulated_choices": result.simulated,
        "sensitivity_top": [[name, gain] for name, gain in result.sensitivity[:10]],
        "chosen": result.attempts.index(result.best),
    }
    return result.best.built, {"summary": summary, "plan": result.best.plan, "met": result.met,
                               "first": result.attempts[0]}


def _check_layers(names: tuple[str, ...], layers: list[str]) -> None:
    unknown = [name for name in names if name not in layers]
    if unknown:
        raise EdgeresError(f"no layer named {', '.join(unknown)} in the model; layers are {', '.join(layers)}")


def _finish(context: _Context, built: Built, search: dict | None, output: OutputSet) -> ConvertResult:
    """Verify each artifact through its runtime, record it, and stage the whole set; then commit it."""
    from .report import folder_summary_files, report_row

    reference_crops = (context.calibration.crops if context.calibration else _random_crops(context.spec,
                       context.options.seed))[:MAX_REFERENCE_SAMPLES]
    reference = torch_logits(context.model.module, context.spec.tensors(reference_crops))
    golden_frames = np.stack(reference_crops[:GOLDEN_COUNT])
    # a device preprocesses the golden frames in full (resize and crop again), so they are new crops
    golden_crops = [context.spec.resize_and_crop(frame) for frame in golden_frames]
    golden_reference = torch_logits(context.model.module, context.spec.tensors(golden_crops))
    records, rows = [], []
    for artifact in built.artifacts:
        # one runtime session for both: the reference crops, then the artifact's own answers on the
        # golden frames (the record's hash covers them too)
        both = artifact_logits(artifact.path, artifact.preprocess, [*reference_crops, *golden_crops])
        logits, expected = both[:len(reference_crops)], both[len(reference_crops):]
        verification = compare_logits(reference, logits, _reference_source(context))
        enforce(verification, context.options.precision, context.target.tolerance, artifact.path.name)
        verification.update(other_modes(artifact.path, artifact.preprocess, reference_crops, reference))
        golden = golden_record(golden_frames, golden_reference, expected, _stem(artifact.path),
                               asdict(context.target.tolerance))
        companions = {path.name: sha256_of(path) for path in artifact.files[1:]}
        record = replace(_record(context, artifact, verification, golden, search), companions=companions or None)
        context.target.embed_record(artifact, record)
        check_companions(artifact.path, record)  # embedding rewrote the IR's .bin: it must be the same bytes
        sidecar = sidecar_path(artifact.path)
        sidecar.write_text(record.to_json() + "\n")
        for path in (*artifact.files, sidecar):
            output.add(path, path.name)
        output.add(golden_bytes(golden_frames, golden_reference, expected), golden["file"])
        records.append(record)
        if context.options.report:
            rows.append(_row(context, artifact, record, search, report_row))
    for name, data in built.companions.items():
        output.add(data, name)
    summary = ()
    if context.options.report:
        from .report import SET_REPORT

        output.add((json.dumps({"artifacts": rows}, indent=2) + "\n").encode(), SET_REPORT)
        summary = folder_summary_files(output.out_dir, output.name, rows)
    final = output.commit(then=summary)
    if summary:
        mark_written(output.out_dir, [Path(path).name for _, path in summary])
    files = tuple(sorted(final.iterdir()))
    paths = [final / artifact.path.name for artifact in built.artifacts]
    met = search is None or search["met"]
    return ConvertResult(paths[0], records[0], files, tuple(paths[1:]), rows,
                         search["summary"] if search else None, met)


def _row(context: _Context, artifact: BuiltArtifact, record: ArtifactRecord, search: dict | None, report_row) -> dict:
    logits = artifact_logits(artifact.path, artifact.preprocess, context.data.crops)
    judged = judge(logits, context.reference, context.data.truth)
    row = report_row(artifact.path, record, judged, context.data.source, context.options.threads)
    if search is not None and artifact.path.suffix == search["first"].built.artifacts[0].path.suffix:
        row["search"] = search["summary"]
        first = search["first"]
        if first.plan.higher != search["plan"].higher:  # what the layers kept out cost
            baseline = first.built.artifacts[0].path
            sidecar_path(baseline).write_text(record.to_json() + "\n")
            latency = benchmark_one(baseline, context.options.threads)
            row["all_int8"] = {"size_mb": first.measured.size_mb, "latency_p50_ms": round(latency, 3)}
    return row


def benchmark_one(path: Path, threads: int | None) -> float:
    from ..benchmark import benchmark
    from .report import LATENCY_RUNS

    return benchmark([path], threads=threads, warmup=5, runs=LATENCY_RUNS)[0].p50_ms


def _record(context: _Context, artifact: BuiltArtifact, verification: dict, golden: dict,
            search: dict | None) -> ArtifactRecord:
    job = context.job
    calibration = quantization = None
    if job.precision == "int8":
        calibration = {**context.calibration.summary, "method": search["plan"].method}
        plan = search["plan"]
        quantization = {**(artifact.quantization or {}), "design": plan.describe(), "search": search["summary"],
                        "higher_precision": context.target.higher_precision if plan.higher else None}
    else:
        quantization = artifact.quantization
    return ArtifactRecord(
        arch=job.arch, num_classes=len(job.labels), labels=list(job.labels), preprocess=artifact.preprocess.to_dict(),
        precision=job.precision, target=context.target.name, format=artifact.format, inputs=artifact.inputs,
        outputs=artifact.outputs, source=dict(context.model.source), calibration=calibration,
        quantization=quantization, checks=list(artifact.checks), verification=verification,
        device_profile=context.profile.to_dict() if context.profile else None, golden=golden,
    )


def _reference_source(context: _Context) -> str:
    return "calibration images" if context.calibration else "random images"


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _bar_failure(result: ConvertResult, options: ConvertOptions, data: EvalSet) -> str:
    search = result.search
    best = search["attempts"][search["chosen"]]
    drop = "" if best["drop_points"] is None else f", {best['drop_points']:.2f} points of top-1 lost"
    tried = len(search["attempts"])
    kept = max(len(a["kept_higher"]) for a in search["attempts"])
    advice = []
    if kept < options.max_kept or options.max_kept == 0:
        advice.append(f"--max-kept above {options.max_kept}")
    if len(data.crops) < 300 and data.source == "calibration":
        advice.append("more calibration images (--calib-size)")
    advice.append("a looser bar (--min-agreement, --max-drop)")
    advice.append("--fp16")
    return (f"no INT8 artifact met the bar ({tried} tried, up to {kept} layers kept out of INT8): the best, "
            f"{result.path.name}, agrees with FP32 on {best['agreement']:.2%}{drop}; it was kept and reported. "
            f"Next: {', or '.join(advice)}")


def check_target_options(target: Target, options: ConvertOptions) -> None:
    """What every target declares (precisions, presets), then the target's own rules."""
    if options.precision not in target.precisions:
        hint = ": add --int8 --calib DIR" if target.precisions == ("int8",) else ""
        raise TargetError(f"target {target.name} makes {', '.join(target.precisions)}, not {options.precision}{hint}")
    if options.preset is not None and options.preset not in target.presets:
        if target.presets:
            raise TargetError(f"--preset must be one of {', '.join(target.presets)}, got {options.preset!r}")
        with_presets = [name for name in REGISTRY if get_target(name).presets]
        raise TargetError(f"--preset is for target {', '.join(with_presets)}; target {target.name} has no presets")
    target.check_options(options.precision, dynamic_batch=options.dynamic_batch, opset=options.opset)


def torch_logits(module: torch.nn.Module, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """PyTorch's logits for model inputs (N, 3, H, W), normalised as the model expects; finite, or the
    model itself is broken (finite weights can still overflow), which no export should be blamed for."""
    from ..errors import CheckpointError

    found = logits(module, inputs, batch)
    if not np.isfinite(found).all():
        raise CheckpointError("the PyTorch model itself gives non-finite logits (NaN or inf) on these images: its "
                              "weights overflow float32; it cannot be converted or judged. Check the training")
    return found
