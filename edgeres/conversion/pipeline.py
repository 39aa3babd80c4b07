"""From a loaded model and options to a verified set of artifacts of one target and precision.

A target only builds. This pipeline does the rest, the same way for every target:
INT8 goes through the quantization design and its search for an artifact that meets the
accuracy bar; every artifact is verified through the runtime backend a device uses; the
record, golden samples, companion files and report row are staged and moved in as one set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..artifact import ArtifactRecord, check_companions, sha256_of, sidecar_path
from ..calibration import CalibrationSet, read_calibration
from ..calibration.folder import Progress, no_progress
from ..devices import DeviceProfile
from ..errors import VerificationError
from ..golden import GOLDEN_COUNT, golden_bytes, golden_record
from ..logs import set_verbose
from ..metrics import Judged, compare_logits
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..runtime import backend_class
from ..targets import resolve_target
from ..targets.base import Built, BuiltArtifact, ConvertJob, Target
from ..written import mark_written
from .int8 import Int8Outcome, search_int8
from .measure import EvalSet, artifact_logits, evaluation_set, random_crops
from .options import DEFAULT_OPSET, ConvertOptions, check_name  # noqa: F401  (check_name: the API's)
from .output import OutputSet, scratch_folder
from .verify import enforce, other_modes

MAX_REFERENCE_SAMPLES = 64  # crops every artifact is verified on against PyTorch
# Where the bar was judged on a stand-in, the top-1 answers the artifact must share with it on those crops: two
# correct INT8 arithmetics of one graph differ on near ties (QNN's fixed point and the CPU's float
# requantization), not on a tenth of the images
MIN_STAND_IN_AGREEMENT = 0.9


@dataclass
class ConvertResult:
    path: Path  # the primary artifact, in its set folder
    record: ArtifactRecord
    files: tuple[Path, ...]  # every file of the set
    companions: tuple[Path, ...] = ()  # other artifacts of the same set (mobile: the .ptl)
    rows: list[dict] = field(default_factory=list)  # the report's rows, one per artifact
    search: dict | None = None  # INT8: what the search tried (Int8Outcome.summary)
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
    spec = Preprocess.imagenet(options.imgsz)
    stem = options.name or f"{model.arch}_{profile.name if profile else target.name}_{options.precision}"
    calibration = _calibration(options, spec, progress, log)
    held = None
    if options.precision == "int8" and options.val is None:
        calibration, held = calibration.held_out()
        log(f"Judging INT8 on {len(held)} calibration images held back from quantization (--val DIR: on labelled "
            "images instead)" if held else f"Judging INT8 on the {len(calibration)} calibration images themselves: "
            "too few to hold some back (give more, or --val DIR)")
    data = evaluation_set(model, spec, options.val, calibration, options.seed, held_out=held)
    job = ConvertJob(module=model.module, arch=model.arch, labels=model.labels, preprocess=target.input_spec(spec),
                     model_preprocess=spec, precision=options.precision, stem=stem,
                     calibration=calibration if options.precision == "int8" else None,
                     opset=options.opset or DEFAULT_OPSET, dynamic_batch=options.dynamic_batch,
                     preset=options.preset, log=log, device=profile,
                     judged_on_calibration=data.source == "calibration")
    context = _Context(model, options, target, profile, spec, calibration, data, job, log)
    with scratch_folder() as scratch, OutputSet(Path(options.out_dir), stem) as output:
        if options.precision == "int8":
            search = search_int8(model, options, target, job, spec, calibration, data, Path(scratch), log, progress)
            built = search.built
        else:
            built, search = target.build(job, None, Path(scratch) / "build"), None
        result = _finish(context, built, search, output)
    if not result.met:
        raise AccuracyBarError(_bar_failure(result, options), result)
    return result


@dataclass
class _Context:
    model: LoadedModel
    options: ConvertOptions
    target: Target
    profile: DeviceProfile | None
    spec: Preprocess
    calibration: CalibrationSet | None
    data: EvalSet
    job: ConvertJob
    log: Callable[[str], None]


def _calibration(options: ConvertOptions, spec: Preprocess, progress: Progress, log) -> CalibrationSet | None:
    if options.calib is None:
        return None
    calibration = read_calibration(options.calib, spec, size=options.calib_size, seed=options.seed,
                                   every=options.calib_every, progress=progress)
    summary = calibration.summary
    log(f"Read {summary['used']} images from {options.calib} ({summary['skipped']} unreadable, skipped)")
    return calibration


def _reference_samples(context: _Context) -> tuple[list[np.ndarray], np.ndarray, str]:
    """The crops every artifact is verified on (calibration images, else seeded random ones), FP32's
    logits on them (the evaluation set's own where they are its crops), and what they are."""
    data = context.data
    source = "calibration images" if context.calibration else "random images"
    if data.source != "validation":
        return data.crops[:MAX_REFERENCE_SAMPLES], data.reference_of(MAX_REFERENCE_SAMPLES), source
    crops = context.calibration.crops if context.calibration else random_crops(context.spec, context.options.seed)
    crops = crops[:MAX_REFERENCE_SAMPLES]
    return crops, context.model.logits(context.spec.tensors(crops)), source


def _finish(context: _Context, built: Built, search: Int8Outcome | None, output: OutputSet) -> ConvertResult:
    """Verify each artifact through its runtime, record it, and stage the whole set; then commit it."""
    reference_crops, reference, reference_source = _reference_samples(context)
    golden_frames = np.stack(reference_crops[:GOLDEN_COUNT])
    # a device preprocesses the golden frames in full (resize and crop again), so they are new crops
    golden_crops = [context.spec.resize_and_crop(frame) for frame in golden_frames]
    golden_reference = context.model.logits(context.spec.tensors(golden_crops))
    summary = search.summary() if search else None
    records, rows = [], []
    for artifact in built.artifacts:
        judged = search.best.measured if search and artifact.path == search.built.artifacts[0].path else None
        evaluated = context.data.crops if context.options.report and judged is None else []
        # one runtime session for all: the reference crops, the golden frames (the record's hash covers the
        # artifact's own answers on them) and, for the report, the evaluation crops the search did not judge
        logits = artifact_logits(artifact.path, artifact.preprocess, [*reference_crops, *golden_crops, *evaluated])
        verified, expected = logits[:len(reference_crops)], logits[len(reference_crops):][:len(golden_crops)]
        verification = compare_logits(reference, verified, reference_source)
        verification["runtime"] = backend_class(artifact.path).name  # where it ran here (a simulator says so)
        enforce(verification, context.options.precision, context.target.tolerance, artifact.path.name)
        verification.update(other_modes(artifact.path, artifact.preprocess, reference_crops, reference))
        if built.stand_in is not None and artifact is built.artifacts[0]:
            verification["stand_in"] = _against_stand_in(built.stand_in, artifact, reference_crops, verified,
                                                         reference, context.log)
        golden = golden_record(golden_frames, golden_reference, expected, _stem(artifact.path),
                               asdict(context.target.tolerance))
        companions = {path.name: sha256_of(path) for path in artifact.files[1:]}
        record = replace(_record(context, artifact, verification, golden, search, summary),
                         companions=companions or None)
        context.target.embed_record(artifact, record)
        check_companions(artifact.path, record)  # embedding rewrote the IR's .bin: it must be the same bytes
        sidecar = sidecar_path(artifact.path)
        sidecar.write_text(record.to_json() + "\n")
        for path in (*artifact.files, sidecar):
            output.add(path, path.name)
        output.add(golden_bytes(golden_frames, golden_reference, expected), golden["file"])
        records.append(record)
        if context.options.report:
            judged = judged or context.data.judge(logits[len(reference_crops) + len(golden_crops):])
            rows.append(_row(context, artifact, record, search, summary, judged))
    return _commit(context, built, output, records, rows, search, summary)


def _against_stand_in(stand_in: BuiltArtifact, artifact: BuiltArtifact, crops: list[np.ndarray],
                      logits: np.ndarray, reference: np.ndarray, log: Callable[[str], None]) -> dict:
    """The artifact on its own runtime here (an emulator) against the stand-in the search judged, image by
    image: what the bar measured on the stand-in is worth for the artifact."""
    theirs = artifact_logits(stand_in.path, stand_in.preprocess, crops)
    where = backend_class(artifact.path).name  # a runtime's name says where it runs (an emulator)
    found = {"runtime": where, "stand_in": f"{stand_in.path.name} on ONNX Runtime's CPU", "images": len(crops),
             "top1_agreement_with_stand_in": float(np.mean(logits.argmax(1) == theirs.argmax(1))),
             "max_abs_logit_diff_to_stand_in": float(np.abs(logits - theirs).max()),
             "top1_agreement_with_fp32": float(np.mean(logits.argmax(1) == reference.argmax(1))),
             "stand_in_top1_agreement_with_fp32": float(np.mean(theirs.argmax(1) == reference.argmax(1)))}
    log(f"On the {where}: {found['top1_agreement_with_stand_in']:.1%} of {len(crops)} images give the stand-in's "
        f"answer (largest logit difference {found['max_abs_logit_diff_to_stand_in']:.3g}); agreement with FP32 "
        f"{found['top1_agreement_with_fp32']:.1%} there, {found['stand_in_top1_agreement_with_fp32']:.1%} on the CPU")
    if found["top1_agreement_with_stand_in"] < MIN_STAND_IN_AGREEMENT:
        raise VerificationError(
            f"{artifact.path.name}: on the {where} it gives the answer of {stand_in.path.name}, which the accuracy bar "
            f"was judged on, for only {found['top1_agreement_with_stand_in']:.1%} of {len(crops)} images; the "
            "compiled model computes something other than the judged one, so the bar says nothing of it; please "
            "report it (--target npu gives the QDQ alone, judged on the CPU)")
    return found


def _commit(context: _Context, built: Built, output: OutputSet, records: list[ArtifactRecord], rows: list[dict],
            search: Int8Outcome | None, summary: dict | None) -> ConvertResult:
    for name, data in built.companions.items():
        output.add(data, name)
    summary_files = ()
    if context.options.report:
        from .report import SET_REPORT, folder_summary_files

        output.add((json.dumps({"artifacts": rows}, indent=2) + "\n").encode(), SET_REPORT)
        summary_files = folder_summary_files(output.out_dir, output.name, rows)
    final = output.commit(then=summary_files)
    if summary_files:
        mark_written(output.out_dir, [Path(path).name for _, path in summary_files])
    files = tuple(sorted(final.iterdir()))
    paths = [final / artifact.path.name for artifact in built.artifacts]
    return ConvertResult(paths[0], records[0], files, tuple(paths[1:]), rows, summary,
                         search is None or search.met)


def _row(context: _Context, artifact: BuiltArtifact, record: ArtifactRecord, search: Int8Outcome | None,
         summary: dict | None, judged: Judged) -> dict:
    from .report import report_row

    row = report_row(artifact.path, record, judged, context.data.source, context.options.threads)
    stand_in = search.built.stand_in if search else None
    if stand_in is not None and artifact.path == search.built.artifacts[0].path:
        # its accuracy is the stand-in's, its latency the emulator's: the row says both
        row["judged_on"] = f"{stand_in.path.name} on ONNX Runtime's CPU (the artifact itself: record's verification)"
    if search is not None and artifact.path.suffix == search.first.built.artifacts[0].path.suffix:
        row["search"] = summary
        first = search.first
        if first.plan.higher != search.plan.higher:  # what the layers kept out cost
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
            search: Int8Outcome | None, summary: dict | None) -> ArtifactRecord:
    job = context.job
    calibration, quantization = None, artifact.quantization
    if search is not None:
        plan = search.plan
        calibration = {**context.calibration.summary, "method": plan.method}
        quantization = {**(artifact.quantization or {}), "design": plan.describe(), "search": summary,
                        "higher_precision": context.target.higher_precision if plan.higher else None}
    return ArtifactRecord(
        arch=job.arch, num_classes=len(job.labels), labels=list(job.labels), preprocess=artifact.preprocess.to_dict(),
        precision=job.precision, target=context.target.name, format=artifact.format, inputs=artifact.inputs,
        outputs=artifact.outputs, source=dict(context.model.source), calibration=calibration,
        quantization=quantization, checks=list(artifact.checks), verification=verification,
        device_profile=context.profile.to_dict() if context.profile else None, golden=golden,
    )


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _bar_failure(result: ConvertResult, options: ConvertOptions) -> str:
    search = result.search
    best = search["attempts"][search["chosen"]]
    drop = "" if best["drop_points"] is None else f", {best['drop_points']:.2f} points of top-1 lost"
    tried = f"{len(search['attempts'])} tried"
    kept = max(len(a["kept_higher"]) for a in search["attempts"])
    advice = []
    refused = search.get("refused")
    if refused:  # keeping more layers is what the target's compiler failed on: more of it cannot help
        tried += f"; the compiler failed keeping {len(refused[0]['kept_higher'])} layers: {refused[0]['why']}"
    elif kept < options.max_kept or options.max_kept == 0:
        advice.append(f"--max-kept above {options.max_kept}")
    calibration = result.record.calibration or {}
    if calibration.get("used", 0) + calibration.get("held_out", 0) < 300:
        advice.append("more calibration images (--calib-size)")
    advice.append("a looser bar (--min-agreement, --max-drop)")
    if options.finetune == "never":
        advice.append("fine-tuning (leave out --no-finetune)")
    elif search.get("finetune") and search["finetune"]["stopped"] in ("time", "steps"):
        advice.append("a longer --finetune-minutes" if search["finetune"]["stopped"] == "time"
                      else "more --finetune-steps")
    advice.append("--fp16")
    # where agreement met the bar (the drop did not), FP32's steadiness is not what stood in the way
    missed_agreement = best["agreement"] < search["bar"]["min_agreement"]
    unstable = (search.get("fp32_stability") or {}).get("note") if missed_agreement else None
    return (f"no INT8 artifact met the bar ({tried}, up to {kept} layers kept out of INT8): the best, "
            f"{result.path.name}, agrees with FP32 on {best['agreement']:.2%}{drop}; it was kept and reported. "
            f"{unstable + '. ' if unstable else ''}Next: {', or '.join(advice)}")
