"""The `edgeres` command line.

Heavy modules (torch, converters) are imported inside the commands that need them,
so `edgeres predict` and `edgeres info` run on a device with only the runtime.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

from . import __version__
from .errors import NO_OPENCV, EdgeresError, install_hint
from .logs import set_verbose

app = typer.Typer(
    name="edgeres",
    help="Take a trained ResNet18/50 classifier to the edge: convert it per device, run every artifact the same way.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
VERBOSE_HELP = "Let other libraries' warnings and native logs through, and show the traceback of a failure."
PRECISION_HELP = ("A faster float mode the runtime and CPU offer: bf16 (OpenVINO on AVX512-BF16 or AMX CPUs), fp16 "
                  "(OpenVINO where the CPU computes in fp16). Default: the mode the artifact was verified in (fp32 "
                  "arithmetic), whatever the CPU would pick; a mode this machine lacks is an error naming those it has.")
console = Console()
err_console = Console(stderr=True)
for _console in (console, err_console):  # piped or redirected: whole lines, not wrapped at 80 columns
    _console.soft_wrap = not _console.is_terminal


def _calibration_methods() -> str:
    from .quantization.ranges import METHODS

    return ", ".join(("auto", *METHODS))


def _progress(items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
    return track(items, description=description, total=total, console=err_console, transient=True)


def _log(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/dim]")


def _show(table: Table) -> None:
    """A table on a terminal; piped or redirected, plain tab-separated lines, so no cell is cut.

    Cells are data (labels, paths, rule details), never markup: a label "one [b]" prints as is.
    """
    from rich.text import Text

    for column in table.columns:
        column._cells = [Text(cell) if isinstance(cell, str) else cell for cell in column._cells]
    if console.is_terminal:
        console.print(table)
        return
    columns = table.columns
    if table.title:
        print(table.title)
    if table.show_header:
        print("\t".join(_plain(column.header) for column in columns))
    for cells in zip(*(column.cells for column in columns)):
        print("\t".join(_plain(cell) for cell in cells))


def _plain(cell: Any) -> str:
    from rich.text import Text

    return cell.plain if isinstance(cell, Text) else str(cell)


class _Steps:
    """One live display for a long command: the current step with a spinner and its time, and a
    bar for each counted loop inside it (rich allows one live display at a time)."""

    def __init__(self, progress) -> None:
        self._progress = progress
        self._step = progress.add_task("", total=None)

    def log(self, message: str) -> None:
        _log(message)
        self._progress.update(self._step, description=escape(message))

    def track(self, items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
        task = self._progress.add_task(escape(description), total=total)
        try:
            for item in items:
                yield item
                self._progress.advance(task)
        finally:
            self._progress.remove_task(task)


@contextlib.contextmanager
def _steps(first: str) -> Iterator[_Steps]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as progress:
        steps = _Steps(progress)
        steps.log(first)
        yield steps


def _target_help() -> str:
    from .devices import profile_names
    from .targets import REGISTRY

    return (f"Where the artifact will run: a target ({', '.join(REGISTRY)}) or a device profile "
            f"({', '.join(profile_names())}), which also records the device's defaults.")


@app.command()
def convert(
    checkpoint: Optional[Path] = typer.Argument(
        None, help="Trained model: a state_dict .pth/.pt (also nested or DataParallel) or a TorchScript file. "
        "Leave out with --weights imagenet."),
    arch: str = typer.Option("resnet18", help="Architecture: resnet18, resnet34, resnet50, resnet101, resnet152."),
    target: str = typer.Option("onnx", help=_target_help()),
    int8: bool = typer.Option(False, "--int8", help="Static INT8 quantization; needs --calib."),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights and compute."),
    calib: Optional[str] = typer.Option(
        None, help="Calibration images: a folder (searched recursively; an ImageFolder is sampled class-balanced), "
        "a video file or camera index (every Nth frame), a .npy/.npz of uint8 BGR images, or a .txt list of paths."),
    calib_size: int = typer.Option(300, help="How many calibration images to sample (deterministic)."),
    calib_every: Optional[int] = typer.Option(
        None, help="Video or camera: take every Nth frame (default: spread over a file; 10 for a camera)."),
    calib_method: str = typer.Option(
        "auto", help=f"How each activation's INT8 range is chosen ({_calibration_methods()}); auto simulates them "
        "all and takes the one closest to FP32."),
    bias_correction: Optional[bool] = typer.Option(
        None, "--bias-correction/--no-bias-correction", help="Correct each layer's bias for the shift INT8 "
        "causes (default: chosen with the range method)."),
    imgsz: int = typer.Option(224, help="Input size (crop), 32 to 1024; the resize scales with it as in "
                              "torchvision (256 for 224)."),
    labels: Optional[Path] = typer.Option(None, help="Text file, one label per line; default class_0, class_1, ..."),
    out: Path = typer.Option(Path("out"), help="Output folder; each conversion writes its own set OUT/NAME/."),
    name: Optional[str] = typer.Option(None, help="Artifact name (a plain file name without suffix); default "
                                       "ARCH_TARGET_PRECISION."),
    weights: Optional[str] = typer.Option(None, help="'imagenet' for torchvision's pretrained weights instead of a checkpoint."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Allow any batch size (default: static batch 1)."),
    opset: int = typer.Option(18, help="ONNX opset (18 or newer)."),
    preset: Optional[str] = typer.Option(
        None, help="x86 INT8 only: NNCF preset 'performance' (symmetric activations, fastest; default) or 'mixed'."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow a checkpoint that pickles a whole model. Unpickling can run code: "
        "only for files you trust."),
    seed: int = typer.Option(0, help="Seed for sampling calibration images."),
    val: Optional[Path] = typer.Option(
        None, help="Labelled ImageFolder (DIR/<class>/images) that INT8 is judged on: the accuracy bar and the "
        "report (default: agreement with FP32 on the calibration images)."),
    max_drop: Optional[float] = typer.Option(
        None, help="INT8 bar: at most this many top-1 percentage points lost on --val (default 0.3 with --val)."),
    min_agreement: float = typer.Option(0.96, help="INT8 bar: top-1 agreement with FP32 of at least this fraction."),
    max_kept: int = typer.Option(16, help="INT8: keep at most this many layers out of INT8 while searching for an "
                                 "artifact that meets the bar."),
    keep_float: Optional[list[str]] = typer.Option(
        None, "--keep-float", "--keep", help="INT8: keep this layer out of INT8 (repeatable), e.g. --keep fc: float "
        "where the target runs float, 16-bit activations on npu."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the converters' own logs and progress, and the traceback of a failure."),
) -> None:
    """Convert a trained ResNet into a verified artifact for one target, and prove it.

    INT8 is searched until it meets the bar (--min-agreement, --max-drop): ranges chosen in
    simulation, then the most sensitive layers kept out of INT8, each attempt measured for
    real. If none meets it, the best is kept, reported, and the command exits 1.

    Ends with each artifact's accuracy against FP32, latency and size on this machine, also
    written to report.json, report.md and report.png in the output folder.

    Examples:\n
      edgeres convert model.pth --arch resnet18 --target onnx\n
      edgeres convert model.pth --arch resnet50 --target npu --int8 --calib calib/ --labels labels.txt\n
      edgeres convert model.pth --target jetson --int8 --calib calib/ --val val/\n
      edgeres convert model.pth --target rpi5 --int8 --calib calib/ --val val/ --max-drop 0.5
    """
    from .conversion.pipeline import AccuracyBarError, ConvertOptions
    from .conversion.pipeline import convert as run_conversion
    from .models import load_model

    if int8 and fp16:
        raise EdgeresError("choose one of --int8 and --fp16 (neither means fp32)")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    options = ConvertOptions(
        target=target, precision=precision, out_dir=out, calib=calib, calib_size=calib_size, calib_every=calib_every,
        calib_method=calib_method, bias_correction=bias_correction, imgsz=imgsz, dynamic_batch=dynamic_batch,
        opset=opset, name=name, seed=seed, preset=preset, verbose=verbose, keep=tuple(keep_float or ()), val=val,
        max_drop=max_drop, min_agreement=min_agreement, max_kept=max_kept,
    )
    source = checkpoint.name if checkpoint is not None else f"torchvision's {weights} weights" if weights else None
    if source is None:
        raise EdgeresError("give a checkpoint (edgeres convert model.pth ...) or --weights imagenet")
    try:
        with _steps(f"Loading {source}") as steps:
            model = load_model(checkpoint, arch, weights=weights, labels=labels, trust_checkpoint=trust_checkpoint)
            result = run_conversion(model, options, progress=steps.track, log=steps.log)
    except AccuracyBarError as error:
        _print_result(error.result, out)
        raise
    _print_result(result, out)


def _print_result(result: Any, out: Path) -> None:
    from .artifact import read_sidecar

    for path in (result.path, *result.companions):
        _print_artifact(path, read_sidecar(path))
    if result.search:
        _print_attempts(result.search)
    for row in result.rows:
        _print_report_row(row)
    if result.rows:
        console.print(f"Report: {', '.join(str(out / n) for n in ('report.json', 'report.md', 'report.png'))}")


def _print_artifact(path: Path, record: Any) -> None:
    from .benchmark import artifact_size

    verification = record.verification
    table = Table(title=f"Wrote {path}", show_header=True)
    for column in ("artifact", "precision", "size", "vs PyTorch: top-1 agree", "max |logit diff|", "checked on"):
        table.add_column(column, no_wrap=column == "artifact")
    table.add_row(
        path.name, record.precision, f"{artifact_size(path) / 1e6:.1f} MB",
        f"{verification['top1_agreement']:.1%}", f"{verification['max_abs_logit_diff']:.2e}",
        f"{verification['samples']} {verification['sample_source']}",
    )
    _show(table)
    _print_checks(record.checks)
    from .conversion.report import mode_lines

    for line in mode_lines(path.name, verification):
        console.print(escape(line))
    profile = record.device_profile
    if profile and profile["recommended_precision"] != record.precision:
        console.print(f"[yellow]{escape(profile['name'])}:[/yellow] "
                      + escape(f"{profile['recommended_precision']} is recommended for this device: {profile['why']}"))
    if profile and profile.get("float_mode", "fp32") != "fp32" and record.precision != "int8":
        console.print(f"[yellow]{escape(profile['name'])}:[/yellow] " + escape(
            f"run float artifacts in {profile['float_mode']} there (--precision {profile['float_mode']}) if its "
            f"cost above is acceptable; where it was not measured, `edgeres verify {path.name} --precision "
            f"{profile['float_mode']}` on the device measures it"))
    for key, value in (profile or {}).get("options", {}).items():
        console.print(escape(f"On {profile['name']} ({key}): {value.replace('MODEL', path.with_suffix('').name)}"))


def _print_attempts(search: dict) -> None:
    table = Table(title=f"INT8 attempts on {search['evaluated_on']}")
    for column in ("#", "ranges", "kept out of INT8", "agreement", "top-1 drop", "bar"):
        table.add_column(column)
    for index, attempt in enumerate(search["attempts"]):
        drop = "n/a" if attempt["drop_points"] is None else f"{attempt['drop_points']:+.2f} pt"
        ranges = attempt["range_method"] + (" + bias corr." if attempt["bias_correction"] else "")
        kept = ", ".join(attempt["kept_higher"]) or "-"
        chosen = " (kept)" if index == search["chosen"] else ""
        table.add_row(str(index), ranges, kept, f"{attempt['agreement']:.2%}", drop,
                      ("met" if attempt["met"] else "missed") + chosen)
    _show(table)


def _print_checks(checks: list[dict]) -> None:
    for check in checks:
        colour, word = ("green", "checked") if check["passed"] else ("yellow", "note")
        console.print(f"[{colour}]{word}[/{colour}] " + escape(f"{check['rule']}: {check['detail']}"))


def _print_report_row(row: dict) -> None:
    accuracy = "" if row["accuracy"] is None else (f"top-1 {row['accuracy']:.2%} (FP32 {row['fp32_accuracy']:.2%}), ")
    console.print(escape(f"{row['artifact']} on {row['eval_images']} {row['eval_source']} images: {accuracy}agreement "
                         f"with FP32 {row['agreement']:.2%}, mean KL {row['mean_kl']:.2e}; {row['latency_p50_ms']:.2f} "
                         f"ms per 640x480 frame ({row['fps']:.0f} FPS) on {row['runtime']}"))
    if row["kept_higher"]:
        console.print(escape(f"Kept out of INT8 ({row['higher_precision']}): {', '.join(row['kept_higher'])}"))
    if row.get("all_int8"):
        base = row["all_int8"]
        console.print(f"Their cost: {row['size_mb'] - base['size_mb']:+.2f} MB, "
                      f"{row['latency_p50_ms'] - base['latency_p50_ms']:+.2f} ms per frame against all-INT8")


def _expand_folders(paths: list[Path], find_images) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            inside = find_images(path)
            if not inside:
                raise EdgeresError(f"folder {path} holds no images (.jpg .jpeg .png .bmp .webp)")
            found += inside
        else:
            found.append(path)
    return found


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="An artifact made by `edgeres convert`."),
    images: list[Path] = typer.Argument(..., help="Image files, or folders whose images (searched recursively) are classified."),
    topk: int = typer.Option(5, help="How many classes to show per image."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the runtime (default: the runtime's choice)."),
    device: Optional[str] = typer.Option(None, help="Inference device, e.g. CPU, GPU, AUTO (OpenVINO); default: the best here."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Classify image files with an artifact, the way a device would."""
    set_verbose(verbose)
    from .calibration.folder import find_images
    from .images import decode_image
    from .runtime.classifier import Classifier

    classifier = Classifier(artifact, threads=threads, device=device, precision=precision)
    results = {}
    for image_path in _expand_folders(images, find_images):
        results[str(image_path)] = classifier.predict(decode_image(image_path), topk=topk)
    if as_json:
        payload = {k: [p.__dict__ for p in v] for k, v in results.items()}
        console.print_json(json.dumps(payload))
        return
    for image_path, predictions in results.items():
        table = Table(title=image_path)
        for column in ("rank", "label", "class", "probability"):
            table.add_column(column)
        for rank, p in enumerate(predictions, 1):
            table.add_row(str(rank), p.label, str(p.index), f"{p.probability:.4f}")
        _show(table)


def _record_of(artifact: Path):
    from .artifact import read_sidecar
    from .errors import BackendUnavailableError
    from .runtime import backend_class, resolve_artifact

    try:
        from .runtime.classifier import Classifier

        return Classifier(artifact).record
    except (BackendUnavailableError, ModuleNotFoundError) as error:
        if isinstance(error, ModuleNotFoundError) and error.name != "cv2":
            raise
        reason = "OpenCV is not installed" if isinstance(error, ModuleNotFoundError) else str(error)  # a record needs none
        path = resolve_artifact(artifact)
        if not path.is_file():
            raise
        for where, read in (("the record inside the file", backend_class(path).read_record),
                            ("the sidecar record", read_sidecar)):
            record = read(path)
            if record is not None:
                _log(f"Read from {where}, without its runtime: not checked against the model ({reason})")
                return record
        raise


@app.command()
def info(
    artifact: Path = typer.Argument(..., help="An artifact made by `edgeres convert`."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole edgeres record as JSON."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Show what an artifact is: model, precision, preprocessing, labels, checks.

    Runs without the artifact's runtime too (on a machine that only converts, say): the
    record is then read from the file itself, or from its sidecar (.engine); with the
    runtime it is also checked against the model.
    """
    set_verbose(verbose)
    record = _record_of(artifact)
    if as_json:
        console.print_json(record.to_json())
        return
    table = Table(title=str(artifact), show_header=False)
    pre = record.preprocess
    rows = {
        "model": f"{record.arch}, {record.num_classes} classes",
        "target / format": f"{record.target} / {record.format}",
        "precision": record.precision,
        "input": ", ".join(f"{t.name} {t.shape} {t.dtype} {t.layout or ''}" for t in record.inputs),
        "output": ", ".join(f"{t.name} {t.shape} {t.dtype}" for t in record.outputs),
        "preprocess": f"resize {pre['resize']}, crop {pre['crop']}, {pre['color']}, mean {pre['mean']}, std {pre['std']}",
        "labels": ", ".join(record.labels[:8]) + (" ..." if len(record.labels) > 8 else ""),
        "source": ", ".join(f"{k}={v}" for k, v in record.source.items()),
        "edgeres": record.edgeres_version,
    }
    if record.device_profile:
        rows["device profile"] = f"{record.device_profile['name']}: {record.device_profile['cpu']}"
        for key, value in record.device_profile.get("options", {}).items():
            rows[f"on the device ({key})"] = value
    if record.quantization:
        rows["quantization"] = ", ".join(f"{k}: {v}" for k, v in record.quantization.items())
    if record.calibration:
        c = record.calibration
        where = c.get("folder") or c.get("video") or c.get("file")
        rows["calibration"] = (f"{c.get('used')} images from {where} ({c.get('source')}), {c.get('skipped')} skipped, "
                               f"{c.get('method')}")
    if record.golden:
        rows["golden samples"] = f"{record.golden['samples']} in {record.golden['file']} (edgeres verify)"
    if record.verification:
        v = record.verification
        rows["verified"] = f"top-1 agreement {v['top1_agreement']:.1%}, max |logit diff| {v['max_abs_logit_diff']:.2e} on {v['samples']} {v['sample_source']}"
    for check in record.checks:
        rows[f"rule: {check['rule']}"] = ("passed: " if check["passed"] else "FAILED: ") + check["detail"]
    for key, value in rows.items():
        table.add_row(key, value)
    _show(table)


@app.command("eval")
def evaluate(
    artifacts: list[Path] = typer.Argument(..., help="Artifacts made by `edgeres convert` (any mix of formats)."),
    data: Path = typer.Option(..., help="Labelled ImageFolder: DIR/<class>/images, folders named after the labels."),
    reference: Optional[Path] = typer.Option(
        None, help="What agreement and KL are measured against: an artifact or the PyTorch checkpoint "
        "(default: the first FP32 artifact given)."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP + " The reference runs in its own mode."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Accuracy of each artifact on labelled images, through the same Classifier a device uses.

    Reports top-1, top-5, top-1 agreement with the reference, mean KL divergence of the
    probabilities from the reference's, and accuracy per class.

    Example:\n
      edgeres eval out/resnet18_onnx_fp32.onnx out/resnet18_x86_int8.xml --data val/
    """
    set_verbose(verbose)
    from dataclasses import asdict

    from .evaluate import evaluate_artifacts

    results, reference_name, mapping = evaluate_artifacts(artifacts, data, reference, progress=_progress,
                                                          precision=precision)
    if as_json:
        console.print_json(json.dumps({"data": str(data), "classes_matched": mapping, "reference": reference_name,
                                       "artifacts": {name: asdict(m) for name, m in results.items()}}))
        return
    table = Table(title=f"{data} ({next(iter(results.values())).images} images; reference: {reference_name or 'none'})")
    for column in ("artifact", "mode", "top-1", "top-5", "agree", "mean KL"):
        table.add_column(column, no_wrap=True)
    for name, m in results.items():
        table.add_row(name, m.execution_precision, f"{m.top1:.2%}", f"{m.top5:.2%}",
                      "-" if m.agreement is None else f"{m.agreement:.2%}", "-" if m.mean_kl is None else f"{m.mean_kl:.2e}")
    _show(table)
    per_class = Table(title="Accuracy per class")
    per_class.add_column("class", no_wrap=True, min_width=5)
    for name in results:
        per_class.add_column(name, no_wrap=True)
    for label in next(iter(results.values())).per_class:
        per_class.add_row(label, *(f"{m.per_class[label]:.1%}" for m in results.values()))
    _show(per_class)
    if mapping != "by label":
        err_console.print(f"[yellow]{escape(f'class folders matched {mapping}')}[/yellow]")


@app.command("benchmark")
def benchmark_command(
    artifacts: list[Path] = typer.Argument(..., help="Artifacts made by `edgeres convert` (any mix of formats)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads per runtime (default: the runtime's own choice)."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    warmup: int = typer.Option(10, help="Untimed predictions before timing."),
    runs: int = typer.Option(100, help="Timed predictions."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Latency p50/p90/p99, FPS, time to first inference, peak memory and size, per artifact.

    Times Classifier.predict on a 640x480 BGR frame, preprocessing included, one frame at a time;
    each artifact runs in its own process, so peak memory is its own.

    Example:\n
      edgeres benchmark out/*.onnx out/*.xml out/*.tflite --threads 4
    """
    set_verbose(verbose)
    from dataclasses import asdict

    from .benchmark import benchmark

    results = benchmark(artifacts, threads=threads, warmup=warmup, runs=runs, progress=_progress, precision=precision)
    if as_json:
        console.print_json(json.dumps([asdict(r) for r in results]))
        return
    table = Table(title=f"Classifier.predict on a 640x480 frame (ms), {runs} runs, threads {threads or 'default'}")
    table.add_column("artifact", overflow="fold")
    table.add_column("runtime", overflow="fold")
    table.add_column("mode", no_wrap=True)
    for column in ("MB", "1st", "p50", "p90", "p99", "FPS", "RSS MB"):
        table.add_column(column, no_wrap=True, justify="right")
    for r in results:
        table.add_row(r.artifact, r.runtime.split(" ")[0], r.execution_precision, f"{r.size_mb:.1f}", f"{r.first_inference_ms:.0f}",
                      f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.fps:.0f}", f"{r.peak_rss_mb:.0f}")
    _show(table)


@app.command("build-engine")
def build_engine_command(
    onnx_model: Path = typer.Argument(..., help="An ONNX artifact made by `edgeres convert --target jetson`."),
    out: Optional[Path] = typer.Option(None, help="Engine file (default: MODEL_trt.engine beside the ONNX)."),
    workspace_mb: int = typer.Option(1024, help="TensorRT's workspace limit in MiB."),
    dla_core: Optional[int] = typer.Option(None, help="Run on this DLA core (Xavier/Orin), with GPU fallback."),
    timing_cache: Optional[Path] = typer.Option(None, help="TensorRT timing cache file, read and updated: "
                                                "rebuilds take seconds instead of minutes."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """On the Jetson: build a TensorRT engine from a jetson ONNX artifact (FP16/INT8 flags from its record).

    The engine is specific to this GPU and TensorRT version; its record goes into a sidecar.

    Example:\n
      edgeres build-engine resnet18_jetson_int8.onnx --timing-cache trt.cache
    """
    set_verbose(verbose)
    from .engine import build_engine

    engine = build_engine(onnx_model, out, workspace_mb=workspace_mb, dla_core=dla_core, timing_cache=timing_cache,
                          log=_log)
    console.print(f"Wrote {engine} ({engine.stat().st_size / 1e6:.1f} MB)")


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="An artifact made by `edgeres convert`, with its .golden.npz beside it."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the runtime."),
    device: Optional[str] = typer.Option(None, help="Inference device (OpenVINO: CPU, GPU, AUTO, ...)."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP + " Checks what the mode costs on this "
                                            "device: a float artifact run in bf16 or fp16 is held to fp16's rule."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """On the device: run the artifact's golden samples through the installed runtime and check them.

    Each artifact carries a few images with the FP32 model's logits and its own logits at conversion.
    A wrong runtime version, a broken delegate or a preprocessing mismatch fails here, with exit code 1.
    """
    set_verbose(verbose)
    from dataclasses import asdict

    from .golden import check_golden
    from .runtime.classifier import Classifier

    classifier = Classifier(artifact, threads=threads, device=device, precision=precision)
    check = check_golden(classifier)
    if as_json:
        console.print_json(json.dumps({**asdict(check), "passed": check.passed, "runtime": classifier.backend_name,
                                       "execution_precision": classifier.execution_precision}))
    else:
        table = Table(title=f"{artifact.name} on {classifier.backend_name} in {classifier.execution_precision}",
                      show_header=False)
        table.add_row("golden samples", str(check.samples))
        table.add_row("vs FP32 reference", f"top-1 {check.top1_vs_reference:.0%}, largest logit error "
                      f"{check.max_abs_vs_reference:.3g} (largest logit {check.scale:.3g})")
        table.add_row("vs this artifact at conversion", f"top-1 {check.top1_vs_expected:.0%}, largest logit "
                      f"difference {check.max_abs_vs_expected:.3g}")
        _show(table)
    if not check.passed:
        raise EdgeresError(f"{artifact.name} failed on this device: " + "; ".join(check.failures))
    console.print(f"[green]{escape(artifact.name)} passed[/green] "
                  + escape(f"({classifier.record.precision}, {classifier.backend_name} in {classifier.execution_precision})"))


@app.command()
def video(
    artifact: Path = typer.Argument(..., help="An artifact made by `edgeres convert`."),
    source: str = typer.Option(
        "0", help="A V4L2 camera (0, /dev/video0), the Pi camera (picamera, picamera:1; Picamera2), a Jetson CSI "
        "camera (csi:0; GStreamer nvarguscamerasrc), a USB camera decoded by GStreamer (gst-usb:/dev/video0), any "
        "GStreamer pipeline ending in appsink (gst:...), a video file, or a stream URL (rtsp://...)."),
    headless: bool = typer.Option(False, "--headless", help="No window: write results to --out instead."),
    out: Optional[Path] = typer.Option(None, help="Folder for annotated.mp4, frames.csv and frames.json."),
    max_frames: Optional[int] = typer.Option(None, help="Stop after classifying this many frames."),
    show_every: int = typer.Option(1, help="Draw every Nth classified frame in the window."),
    all_frames: bool = typer.Option(False, "--all-frames", help="Offline: classify every frame of a file as "
                                    "fast as possible instead of playing it in real time and dropping frames."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the runtime."),
    device: Optional[str] = typer.Option(None, help="Inference device (OpenVINO: CPU, GPU, AUTO, ...)."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    camera_size: Optional[str] = typer.Option(
        None, metavar="WxH", help="Capture size to ask a camera for. Default: the smallest common size of the "
        "camera's own aspect ratio that covers the model's resize, e.g. 640x480 or 640x360 for resize 256 (the "
        "camera scales for free, the CPU then resizes less; the field of view stays). The Pi camera and csi: "
        "are asked for the resize itself (their ISP scales to any size)."),
    fourcc: Optional[str] = typer.Option(None, help="V4L2 pixel format to ask the camera for, e.g. MJPG (USB "
                                         "cameras give their larger sizes at 30 FPS only in MJPG) or YUYV."),
    fps: Optional[int] = typer.Option(None, help="Frame rate to ask a camera for (default: its own; 30 for "
                                      "picamera and GStreamer sources)."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """Classify a camera, a video file or a stream live; q, Esc or Ctrl-C ends it with a summary.

    Capture runs in its own thread and hands over the newest frame: the lag never grows.

    Frames that arrive during inference are dropped and counted (--all-frames keeps them).

    Examples:\n
      edgeres video out/resnet18_x86_int8.xml --source 0 --fourcc MJPG\n
      edgeres video out/resnet18_rpi5_int8.tflite --source picamera\n
      edgeres video out/resnet18_jetson_int8/resnet18_jetson_int8.onnx --source csi:0\n
      edgeres video out/resnet18_x86_int8.xml --source clip.mp4 --headless --out results/
    """
    set_verbose(verbose)
    from .runtime.classifier import Classifier
    from .video import classify_video, no_window_reason, window_show

    if headless and out is None:
        raise EdgeresError("--headless needs --out DIR for the annotated video and per-frame results")
    size = _size(camera_size)  # before the model loads: a typo should cost nothing
    classifier = Classifier(artifact, threads=threads, device=device, precision=precision)
    show = None
    if not headless:
        reason = no_window_reason()
        if reason:
            _log(f"No window: {reason}; classifying headless" + ("" if out else " (add --out DIR for the annotated "
                                                                        "video and per-frame results)"))
        else:
            show = window_show()
    summary = classify_video(classifier, source, out_dir=out, max_frames=max_frames, show=show,
                             show_every=show_every, realtime=not all_frames, camera_size=size, fourcc=fourcc,
                             fps=fps)
    table = Table(title=f"{artifact.name} on {source}", show_header=False)
    rows = {
        "frames read / classified / dropped": f"{summary.frames_read} / {summary.frames_classified} / "
                                               f"{summary.frames_dropped} ({summary.classified_share:.0%} classified)",
        "FPS mean / p5": f"{summary.fps_mean:.1f} / {summary.fps_p5:.1f}",
        "latency capture to result": f"{summary.latency_ms_mean:.1f} ms",
        **{f"wrote {kind}": path for kind, path in summary.outputs.items()},
    }
    for key, value in rows.items():
        table.add_row(key, value)
    _show(table)


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    found = re.fullmatch(r"([0-9]{1,5})[xX]([0-9]{1,5})", text.strip())
    if not found or 0 in (int(found[1]), int(found[2])):
        raise EdgeresError(f"--camera-size must be WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(found[1]), int(found[2])


@app.command()
def demo(
    out: Path = typer.Option(Path("edgeres-demo"), help="Output folder for the data, the model and the artifacts."),
    epochs: int = typer.Option(6, help="Training epochs for the default model."),
    quick: bool = typer.Option(False, "--quick", help="Fewer calibration images and targets, for a fast check."),
    weights: Optional[str] = typer.Option(None, help="'imagenet': torchvision's ImageNet ResNet18 instead of the "
                                          "digits model (the weights file must be on disk)."),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
) -> None:
    """The whole job on a built-in default: train a ResNet18 on real digit images, convert it, check it.

    Nothing is downloaded: the images are scikit-learn's handwritten digits.

    Every target is converted (INT8 calibrated on training digits) and scored on held-out digits.

    A 640x480 clip then plays in real time through the x86 INT8 artifact, headless.

    With --weights imagenet (weights file on disk) the same runs on torchvision's ResNet18.
    """
    set_verbose(verbose)
    from .demo import run_demo

    report = run_demo(out, epochs=epochs, quick=quick, weights=weights, progress=_progress, log=_log)
    rows, video = report["artifacts"], report["video"]
    data_name = "crops of scikit-image's photos" if weights else "held-out digits"
    table = Table(title=f"Artifacts on {data_name} (this machine)")
    for column in ("artifact", "runtime", "MB", "top-1", "agree*", "ms"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(row["artifact"], row["runtime"].split(" ")[0], f"{row['size_mb']:.1f}",
                      "n/a" if row["accuracy"] is None else f"{row['accuracy']:.1%}", f"{row['agreement']:.1%}",
                      f"{row['ms_per_frame']:.2f}")
    _show(table)
    console.print("* top-1 agreement with the first (FP32 ONNX) artifact; ms: Classifier.predict per "
                  f"image, preprocessing included. Report: {out / 'report.json'}")
    console.print(f"Video ({video['artifact']}, real time): {video['frames_classified']}/{video['frames_read']} "
                  f"frames classified, {video['fps_mean']:.1f} FPS mean, {video['fps_p5']:.1f} FPS p5; "
                  f"annotated video: {video['outputs'].get('video')}")


def version_callback(value: bool) -> None:
    if value:
        console.print(f"edgeres {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    pass


class _Terminated(BaseException):
    """SIGTERM, raised where the program is, so every `finally` and `with` cleans up on the way out."""


def _terminate(signum, frame) -> None:
    raise _Terminated


TERMINATE_GRACE_S = 10.0  # after SIGTERM, clean-up time before the process ends regardless


def _watch_for_sigterm() -> None:
    """End the process TERMINATE_GRACE_S after a SIGTERM, even if the main thread is stuck in native code
    (a blocked reader), where the Python handler that raises _Terminated cannot run."""
    import os
    import threading
    import time

    if any(thread.name == "edgeres-sigterm" for thread in threading.enumerate()):
        return  # one watcher per process (tests call main() many times)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)

    def watch() -> None:
        while signal.SIGTERM not in os.read(read_end, 64):
            pass
        time.sleep(TERMINATE_GRACE_S)
        os._exit(143)

    threading.Thread(target=watch, name="edgeres-sigterm", daemon=True).start()


def main() -> None:
    previous = signal.signal(signal.SIGTERM, _terminate)
    _watch_for_sigterm()
    try:
        app()
    except _Terminated:
        err_console.print("[red]terminated[/red]")
        sys.exit(143)
    except EdgeresError as error:
        _fail(f"{error}")
    except ImportError as error:  # a device install has one runtime; converting needs the heavy extras
        package = (error.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(package)
        if extra is None or not isinstance(error, ModuleNotFoundError) or _installed(package):
            _fail(f"unexpected ImportError: {error}. Run again with --verbose for the traceback; installed "
                  "packages that do not import together often mean a version mismatch (see pyproject.toml)")
        if package == "cv2":
            _fail(NO_OPENCV)
        _fail(f"{package} is not installed, and this command needs edgeres' [{extra}] extra: {install_hint(extra)}. "
              "A device that only runs artifacts needs just its runtime's extra")
    except OSError as error:  # disk full, permission denied, ...: the message names the path
        _fail(f"{error}")
    except MemoryError:
        _fail("out of memory; use a smaller --imgsz, --calib-size or batch, or a machine with more memory")
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as error:  # a bug or an unforeseen input: still one line, the traceback on request
        _fail(f"unexpected {type(error).__name__}: {error}. Run again with --verbose for the traceback, "
              "and report it if the input looks right")
    finally:
        signal.signal(signal.SIGTERM, previous)


# The packages only conversion (or the demo's data) needs, and the extra that installs each.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "onnx", "onnxscript", "nncf", "litert_torch", "ai_edge_quantizer",
                     "matplotlib", "executorch"), "convert"),
    "sklearn": "demo", "skimage": "demo", "cv2": "opencv",
}


def _installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _fail(message: str) -> None:
    if "--verbose" in sys.argv:
        raise  # noqa: PLE0704  (inside the handler that called us: the original traceback)
    # escaped: an install hint's [x86] or a path's brackets are text, not rich markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)
    sys.exit(1)
