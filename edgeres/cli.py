"""The `edgeres` command line: it parses, calls the module that does the work, and prints (edgeres.console).

Heavy modules (torch, converters) are imported inside the commands that need them,
so `edgeres predict` and `edgeres info` run on a device with only the runtime. Help texts,
choices and defaults come from the modules that own them.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import console
from .architectures import ARCHITECTURES
from .calibration import DEFAULT_CALIB_SIZE
from .conversion.options import (CALIBRATION_METHODS, DEFAULT_FINETUNE_MINUTES, DEFAULT_IMGSZ, DEFAULT_MAX_DROP,
                                 DEFAULT_MAX_KEPT, DEFAULT_MIN_AGREEMENT, DEFAULT_OPSET, MAX_IMGSZ, MIN_IMGSZ)
from .errors import EdgeresError, import_failure
from .logs import set_verbose
from .termination import Terminated, terminate, watch_for_sigterm
from .version import __version__
from .targets.registry import REGISTRY, accepting

app = typer.Typer(
    name="edgeres",
    help="Take a trained ResNet18/50 classifier to the edge: convert it per device, run every artifact the same way.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PRECISION_HELP = ("A faster float mode the runtime and CPU offer: bf16 (OpenVINO on AVX512-BF16 or AMX CPUs), fp16 "
                  "(OpenVINO where the CPU computes in fp16). Default: the mode the artifact was verified in (fp32 "
                  "arithmetic), whatever the CPU would pick; a mode this machine lacks is an error naming those it has.")
# The options several commands share, declared once.
Verbose = Annotated[bool, typer.Option("--verbose", help="Let other libraries' warnings and native logs through, "
                                       "and show the traceback of a failure.")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for the runtime (default: the runtime's choice).")]
Device = Annotated[Optional[str], typer.Option(help="Inference device (OpenVINO: CPU, GPU, AUTO, ...); default: "
                                               "the best here.")]
Precision = Annotated[Optional[str], typer.Option(help=PRECISION_HELP)]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ArtifactArg = Annotated[Path, typer.Argument(help="An artifact made by `edgeres convert`.")]
ArtifactsArg = Annotated[list[Path], typer.Argument(help="Artifacts made by `edgeres convert` (any mix of formats).")]


def _target_help() -> str:
    from .devices import profile_names

    return (f"Where the artifact will run: a target ({', '.join(REGISTRY)}) or a device profile "
            f"({', '.join(profile_names())}), which also records the device's defaults.")


def _presets_help() -> str:
    targets = accepting("presets")
    presets = " or ".join(f"'{p}'" for name in targets for p in REGISTRY[name].accepts.presets)
    return (f"INT8 on {', '.join(targets)} only: NNCF preset {presets} (the first, symmetric activations, is the "
            "fastest and the default).")


@app.command()
def convert(
    checkpoint: Annotated[Optional[Path], typer.Argument(
        help="Trained model: a state_dict .pth/.pt (also nested or DataParallel) or a TorchScript file. "
        "Leave out with --weights imagenet.")] = None,
    arch: Annotated[str, typer.Option(help=f"Architecture: {', '.join(ARCHITECTURES)}.")] = "resnet18",
    target: Annotated[str, typer.Option(help=_target_help())] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Static INT8 quantization; needs --calib.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 weights and compute.")] = False,
    calib: Annotated[Optional[str], typer.Option(
        help="Calibration images: a folder (searched recursively; an ImageFolder is sampled class-balanced), "
        "a video file or camera index (every Nth frame), a .npy/.npz of uint8 BGR images, or a .txt list of "
        "paths.")] = None,
    calib_size: Annotated[int, typer.Option(help="How many calibration images to sample (deterministic).")
                          ] = DEFAULT_CALIB_SIZE,
    calib_every: Annotated[Optional[int], typer.Option(
        help="Video or camera: take every Nth frame (default: spread over a file; 10 for a camera).")] = None,
    calib_method: Annotated[str, typer.Option(
        help=f"How each activation's INT8 range is chosen ({', '.join(CALIBRATION_METHODS)}); auto simulates "
        "them all and takes the one closest to FP32.")] = "auto",
    bias_correction: Annotated[Optional[bool], typer.Option(
        "--bias-correction/--no-bias-correction", help="Correct each layer's bias for the shift INT8 causes "
        "(default: chosen with the range method).")] = None,
    imgsz: Annotated[int, typer.Option(help=f"Input size (crop), {MIN_IMGSZ} to {MAX_IMGSZ}; the resize scales "
                                       "with it as in torchvision (256 for 224).")] = DEFAULT_IMGSZ,
    labels: Annotated[Optional[Path], typer.Option(
        help="Text file, one label per line; default class_0, class_1, ...")] = None,
    out: Annotated[Path, typer.Option(help="Output folder; each conversion writes its own set OUT/NAME/.")
                   ] = Path("out"),
    name: Annotated[Optional[str], typer.Option(
        help="Artifact name (a plain file name without suffix); default ARCH_TARGET_PRECISION.")] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="'imagenet' for torchvision's pretrained weights instead of a checkpoint.")] = None,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help=f"Allow any batch size (default: static batch 1); targets "
        f"{', '.join(accepting('dynamic_batch'))}.")] = False,
    opset: Annotated[Optional[int], typer.Option(
        help=f"ONNX opset, {DEFAULT_OPSET} or newer (default {DEFAULT_OPSET}); targets made from an ONNX export: "
        f"{', '.join(accepting('opset'))}.")] = None,
    preset: Annotated[Optional[str], typer.Option(help=_presets_help())] = None,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Allow a checkpoint that pickles a whole model. Unpickling can run code: "
        "only for files you trust.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for sampling calibration images.")] = 0,
    val: Annotated[Optional[Path], typer.Option(
        help="Labelled ImageFolder (DIR/<class>/images) that INT8 is judged on: the accuracy bar and the report "
        "(default: agreement with FP32 on a quarter of the calibration images, held back from quantization).")
                                 ] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        help=f"INT8 bar: at most this many top-1 percentage points lost on --val (default {DEFAULT_MAX_DROP:g} "
        "with --val).")] = None,
    min_agreement: Annotated[float, typer.Option(
        help="INT8 bar: top-1 agreement with FP32 of at least this fraction.")] = DEFAULT_MIN_AGREEMENT,
    max_kept: Annotated[int, typer.Option(
        help="INT8: keep at most this many layers out of INT8 while searching for an artifact that meets the "
        "bar.")] = DEFAULT_MAX_KEPT,
    keep_float: Annotated[Optional[list[str]], typer.Option(
        "--keep-float", "--keep", help="INT8: keep this layer out of INT8 (repeatable), e.g. --keep fc: float "
        "where the target runs float, 16-bit activations on npu.")] = None,
    finetune: Annotated[Optional[bool], typer.Option(
        "--finetune/--no-finetune", help="INT8: quantization-aware fine-tuning (distillation from FP32 on the "
        "calibration images, no labels needed). Default: only when no calibration-only attempt meets the bar; "
        "--finetune: in any case; --no-finetune: never.")] = None,
    finetune_minutes: Annotated[float, typer.Option(
        help="INT8: time budget of the fine-tuning; the best state so far is kept (Ctrl-C too).")
                                ] = DEFAULT_FINETUNE_MINUTES,
    finetune_steps: Annotated[Optional[int], typer.Option(
        help="INT8: fine-tuning steps of 32 images (default: 120 passes over the training images, at most 2000; "
        "fewer where they would not fit the time budget: the schedule is fitted to it as the run goes).")] = None,
    train: Annotated[Optional[Path], typer.Option(
        help="INT8: labelled ImageFolder (DIR/<class>/images) the fine-tuning learns from, adding the task loss "
        "to distillation (default: the calibration images, unlabelled).")] = None,
    verbose: Verbose = False,
) -> None:
    """Convert a trained ResNet into a verified artifact for one target, and prove it.

    INT8 is searched until it meets the bar (--min-agreement, --max-drop): ranges chosen in
    simulation, then the most sensitive layers kept out of INT8, each attempt measured for
    real; if none meets it, the closest is fine-tuned (quantization-aware) and measured
    again. Without --val, a quarter of the calibration images is held back to judge on. If
    no attempt meets the bar, the best is kept, reported, and the command exits 1.

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
        finetune={None: "auto", True: "always", False: "never"}[finetune], finetune_minutes=finetune_minutes,
        finetune_steps=finetune_steps, train=train,
    )
    source = checkpoint.name if checkpoint is not None else f"torchvision's {weights} weights" if weights else None
    if source is None:
        raise EdgeresError("give a checkpoint (edgeres convert model.pth ...) or --weights imagenet")
    try:
        with console.steps(f"Loading {source}") as steps:
            model = load_model(checkpoint, arch, weights=weights, labels=labels, trust_checkpoint=trust_checkpoint)
            result = run_conversion(model, options, progress=steps.track, log=steps.log)
    except AccuracyBarError as error:
        console.conversion(error.result, out)
        raise
    console.conversion(result, out)


@app.command()
def predict(
    artifact: ArtifactArg,
    images: Annotated[list[Path], typer.Argument(
        help="Image files, or folders whose images (searched recursively) are classified.")],
    topk: Annotated[int, typer.Option(help="How many classes to show per image.")] = 5,
    threads: Threads = None, device: Device = None, precision: Precision = None, as_json: AsJson = False,
    verbose: Verbose = False,
) -> None:
    """Classify image files with an artifact, the way a device would."""
    set_verbose(verbose)
    from .calibration.folder import expand_folders
    from .images import decode_image
    from .runtime.classifier import Classifier

    classifier = Classifier(artifact, threads=threads, device=device, precision=precision)
    results = {str(path): classifier.predict(decode_image(path), topk=topk) for path in expand_folders(images)}
    if as_json:
        console.show_json({k: [p.__dict__ for p in v] for k, v in results.items()})
    else:
        console.predictions(results)


@app.command()
def info(artifact: ArtifactArg, as_json: Annotated[bool, typer.Option(
             "--json", help="Print the whole edgeres record as JSON.")] = False, verbose: Verbose = False) -> None:
    """Show what an artifact is: model, precision, preprocessing, labels, checks.

    Runs without the artifact's runtime too (on a machine that only converts, say): the
    record is then read from the file itself, or from its sidecar (.engine); with the
    runtime it is also checked against the model.
    """
    set_verbose(verbose)
    from .runtime.record import record_of

    record = record_of(artifact, log=console.log)
    if as_json:
        console.show_json(record.to_json())
    else:
        console.record_info(artifact, record)


@app.command("eval")
def evaluate(
    artifacts: ArtifactsArg,
    data: Annotated[Path, typer.Option(
        help="Labelled ImageFolder: DIR/<class>/images, folders named after the labels.")],
    reference: Annotated[Optional[Path], typer.Option(
        help="What agreement and KL are measured against: an artifact or the PyTorch checkpoint (default: the "
        "first FP32 artifact given).")] = None,
    precision: Annotated[Optional[str], typer.Option(help=PRECISION_HELP + " The reference runs in its own mode.")
                         ] = None,
    as_json: AsJson = False, verbose: Verbose = False,
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

    results, reference_name, mapping = evaluate_artifacts(artifacts, data, reference, progress=console.progress,
                                                          precision=precision)
    if as_json:
        console.show_json({"data": str(data), "classes_matched": mapping, "reference": reference_name,
                           "artifacts": {name: asdict(m) for name, m in results.items()}})
    else:
        console.evaluation(data, results, reference_name, mapping)


@app.command("benchmark")
def benchmark_command(
    artifacts: ArtifactsArg, threads: Threads = None, precision: Precision = None,
    warmup: Annotated[int, typer.Option(help="Untimed predictions before timing.")] = 10,
    runs: Annotated[int, typer.Option(help="Timed predictions.")] = 100,
    as_json: AsJson = False, verbose: Verbose = False,
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

    results = benchmark(artifacts, threads=threads, warmup=warmup, runs=runs, progress=console.progress,
                        precision=precision)
    if as_json:
        console.show_json([asdict(r) for r in results])
    else:
        console.benchmarks(results, runs, threads)


@app.command("build-engine")
def build_engine_command(
    onnx_model: Annotated[Path, typer.Argument(help="An ONNX artifact made by `edgeres convert --target jetson`.")],
    out: Annotated[Optional[Path], typer.Option(help="Engine file (default: MODEL_trt.engine beside the ONNX).")
                   ] = None,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT's workspace limit in MiB.")] = 1024,
    dla_core: Annotated[Optional[int], typer.Option(
        help="Run on this DLA core (Xavier/Orin), with GPU fallback.")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(
        help="TensorRT timing cache file, read and updated: rebuilds take seconds instead of minutes.")] = None,
    verbose: Verbose = False,
) -> None:
    """On the Jetson: build a TensorRT engine from a jetson ONNX artifact (FP16/INT8 flags from its record).

    The engine is specific to this GPU and TensorRT version; its record goes into a sidecar.

    Example:\n
      edgeres build-engine resnet18_jetson_int8.onnx --timing-cache trt.cache
    """
    set_verbose(verbose)
    from .engine import build_engine

    engine = build_engine(onnx_model, out, workspace_mb=workspace_mb, dla_core=dla_core, timing_cache=timing_cache,
                          log=console.log)
    console.say(f"Wrote {engine} ({engine.stat().st_size / 1e6:.1f} MB)")


@app.command()
def verify(
    artifact: Annotated[Path, typer.Argument(
        help="An artifact made by `edgeres convert`, with its .golden.npz beside it.")],
    threads: Threads = None, device: Device = None,
    precision: Annotated[Optional[str], typer.Option(
        help=PRECISION_HELP + " Checks what the mode costs on this device: a float artifact run in bf16 or fp16 is "
        "held to fp16's rule.")] = None,
    as_json: AsJson = False, verbose: Verbose = False,
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
        console.show_json({**asdict(check), "passed": check.passed, "runtime": classifier.backend_name,
                           "execution_precision": classifier.execution_precision})
    else:
        console.golden_check(artifact, check, classifier)
    if not check.passed:
        raise EdgeresError(f"{artifact.name} failed on this device: " + "; ".join(check.failures))
    console.passed(artifact.name, f"{classifier.record.precision}, {classifier.backend_name} in "
                   f"{classifier.execution_precision}")


@app.command()
def video(
    artifact: ArtifactArg,
    source: Annotated[list[str], typer.Option(
        help="A V4L2 camera (0, /dev/video0), the Pi camera (picamera, picamera:1; Picamera2), a Jetson CSI camera "
        "(csi:0; GStreamer nvarguscamerasrc), a USB camera decoded by GStreamer (gst-usb:/dev/video0), any "
        "GStreamer pipeline ending in appsink (gst:...), a video file, or a stream URL (rtsp://...). Repeat it to "
        "classify several at once: each keeps its newest frame, the waiting frames are classified as one batch, "
        "the window shows a mosaic, --out gets one folder per stream (stream-1, ...) and streams.json.")] = ["0"],
    headless: Annotated[bool, typer.Option("--headless", help="No window: write results to --out instead.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder for annotated.mp4, frames.csv and frames.json.")
                   ] = None,
    max_frames: Annotated[Optional[int], typer.Option(
        help="Stop after classifying this many frames (of each source, with several).")] = None,
    show_every: Annotated[int, typer.Option(
        help="Draw every Nth classified frame in the window (with several sources: every Nth round of the "
        "mosaic).")] = 1,
    all_frames: Annotated[bool, typer.Option(
        "--all-frames", help="Offline: classify every frame of a file as fast as possible instead of playing it "
        "in real time and dropping frames.")] = False,
    threads: Threads = None, device: Device = None, precision: Precision = None,
    camera_size: Annotated[Optional[str], typer.Option(
        metavar="WxH", help="Capture size to ask a camera for. Default: the smallest common size of the camera's "
        "own aspect ratio that covers the model's resize, e.g. 640x480 or 640x360 for resize 256 (the camera "
        "scales for free, the CPU then resizes less; the field of view stays). The Pi camera and csi: are asked "
        "for the resize itself (their ISP scales to any size).")] = None,
    fourcc: Annotated[Optional[str], typer.Option(
        help="V4L2 pixel format to ask the camera for, e.g. MJPG (USB cameras give their larger sizes at 30 FPS "
        "only in MJPG) or YUYV.")] = None,
    fps: Annotated[Optional[int], typer.Option(
        help="Frame rate to ask a camera for (default: its own; 30 for picamera and GStreamer sources).")] = None,
    verbose: Verbose = False,
) -> None:
    """Classify a camera, a video file or a stream live (or several at once); q, Esc or Ctrl-C ends it with a
    summary.

    Capture runs in its own thread per source and hands over the newest frame: the lag never grows.

    Frames that arrive during inference are dropped and counted (--all-frames keeps them).

    Examples:\n
      edgeres video out/resnet18_x86_int8.xml --source 0 --fourcc MJPG\n
      edgeres video out/resnet18_rpi5_int8.tflite --source picamera\n
      edgeres video out/resnet18_jetson_int8/resnet18_jetson_int8.onnx --source csi:0\n
      edgeres video out/resnet18_x86_int8.xml --source clip.mp4 --headless --out results/\n
      edgeres video out/resnet18_x86_int8.xml --source 0 --source 2 --source rtsp://cam3/stream --out results/
    """
    set_verbose(verbose)
    from .cameras import parse_size
    from .runtime.classifier import Classifier
    from .video import classify_video, no_window_reason, window_show

    if headless and out is None:
        raise EdgeresError("--headless needs --out DIR for the annotated video and per-frame results")
    size = parse_size(camera_size)
    classifier = Classifier(artifact, threads=threads, device=device, precision=precision)
    show = None
    if not headless:
        reason = no_window_reason()
        if reason:
            console.log(f"No window: {reason}; classifying headless" + (
                "" if out else " (add --out DIR for the annotated video and per-frame results)"))
        else:
            show = window_show()
    settings = dict(out_dir=out, max_frames=max_frames, show=show, show_every=show_every, realtime=not all_frames,
                    camera_size=size, fourcc=fourcc, fps=fps)
    if len(source) == 1:
        console.video_summary(artifact, source[0], classify_video(classifier, source[0], **settings))
    else:
        from .streams import classify_streams

        console.streams_summary(artifact, classify_streams(classifier, source, **settings))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder for the data, the model and the artifacts.")
                   ] = Path("edgeres-demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs for the default model.")] = 6,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer calibration images and targets, for a fast check.")
                     ] = False,
    weights: Annotated[Optional[str], typer.Option(
        help="'imagenet': torchvision's ImageNet ResNet18 instead of the digits model (the weights file must be "
        "on disk).")] = None,
    verbose: Verbose = False,
) -> None:
    """The whole job on a built-in default: train a ResNet18 on real digit images, convert it, check it.

    Nothing is downloaded: the images are scikit-learn's handwritten digits.

    Every target is converted (INT8 calibrated on training digits) and scored on held-out digits.

    A 640x480 clip then plays in real time through the x86 INT8 artifact, headless.

    With --weights imagenet (weights file on disk) the same runs on torchvision's ResNet18.
    """
    set_verbose(verbose)
    from .demo import run_demo

    report = run_demo(out, epochs=epochs, quick=quick, weights=weights, progress=console.progress, log=console.log)
    console.demo(report, out, weights)


triton = typer.Typer(
    help="Serve a verified set with Triton Inference Server (KServe's v2 protocol, HTTP and gRPC): export a model "
    "repository, serve it, check a served model against the set's golden samples.",
    no_args_is_help=True)
app.add_typer(triton, name="triton")
ExportArg = Annotated[Path, typer.Argument(help="The folder `edgeres triton export` wrote (or its model_repository).")]


@triton.command("export")
def triton_export(
    artifact: Annotated[Path, typer.Argument(help="A verified set: an artifact made by `edgeres convert` (or its "
                                             "folder), with its record and golden samples beside it.")],
    out: Annotated[Path, typer.Option(help="Folder to write: model_repository/, kserve/ and edgeres-triton.json. "
                                      "An existing edgeres export there is replaced; any other content is refused.")],
    name: Annotated[Optional[str], typer.Option(help="The served model's name (default: the artifact's stem).")] = None,
    backend: Annotated[str, typer.Option(help="What runs the artifact: auto (Triton's onnxruntime or openvino "
                                         "backend where it has one for the format, else python), python (edgeres' "
                                         "own runtime in Triton's Python backend: every format, and the only one "
                                         "the tritonserver edgeres installs has), onnxruntime, openvino.")] = "auto",
    max_batch: Annotated[int, typer.Option(help="Largest batch Triton's dynamic batcher forms (0: no batching; a "
                                           "static batch-1 artifact in Triton's own backend gets 0).")] = 8,
    instances: Annotated[int, typer.Option(help="Model instances (Triton's instance_group count).")] = 1,
    device: Annotated[str, typer.Option(help="cpu or gpu instances (gpu: Triton's onnxruntime backend with "
                                        "TensorRT as its accelerator).")] = "cpu",
    threads: Threads = None, verbose: Verbose = False,
) -> None:
    """Write a Triton model repository from a verified set, with KServe manifests.

    Clients send encoded images (model NAME, input IMAGE: the file's bytes as UINT8) or raw BGR frames
    (NAME_frame, input FRAME: UINT8 H x W x 3) and get LOGITS, or top-k labels with Triton's classification
    extension. Preprocessing is edgeres' own, from the set's record; the set's golden samples travel along.
    The set is checked on this machine first: one that fails its golden samples is not exported.
    """
    set_verbose(verbose)
    from .serving.repository import ExportOptions, export_repository

    options = ExportOptions(name=name, backend=backend, max_batch=max_batch, instances=instances, device=device,
                            threads=threads)
    exported = export_repository(artifact, out, options, log=console.log)
    console.say(f"Triton repository: {exported.repository} (models {exported.name}, {exported.name}_frame; "
                f"{exported.backend} runs the artifact); KServe manifests: {out / 'kserve'}")
    console.say(f"Serve it here: edgeres triton serve {out}    then check it: edgeres triton check {out}")


@triton.command("serve")
def triton_serve(
    export: ExportArg,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (KServe v2 REST).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    verbose: Verbose = False,
) -> None:
    """Run tritonserver on an exported repository until Ctrl-C (installs Triton's binary once where none is here).

    NVIDIA's Triton image (/opt/tritonserver, or EDGERES_TRITONSERVER naming a Triton folder) is used where it
    is installed; elsewhere the tritonserver binary of the nvidia-pytriton wheel (Linux x86-64, CPU, Python
    backend only: export with --backend python).
    """
    set_verbose(verbose)
    import time

    from .serving.repository import REPOSITORY
    from .serving.server import TritonServer

    repository = export / REPOSITORY if (export / REPOSITORY).is_dir() else export
    server = TritonServer(repository, http_port, grpc_port, metrics_port, host=host, log=console.log)
    with server:
        console.say(f"Serving {repository} with {server.install.source}: HTTP {server.http_url}, gRPC "
                    f"{server.grpc_url}, metrics {host}:{server.metrics_port}; log {server.log_path}. Ctrl-C stops it.")
        while server.process.poll() is None:
            time.sleep(0.5)
    raise EdgeresError(f"tritonserver exited ({server.process.returncode}): {server.problems()}")


@triton.command("check")
def triton_check(
    export: ExportArg,
    url: Annotated[Optional[str], typer.Option(help="The server, host:port (default: 127.0.0.1:8000, with --grpc "
                                               "127.0.0.1:8001: edgeres triton serve's ports).")] = None,
    grpc: Annotated[bool, typer.Option("--grpc", help="Speak gRPC instead of HTTP.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Which model of the export to check, where it holds several "
                                                "(its folder name in model_repository).")] = None,
    as_json: AsJson = False, verbose: Verbose = False,
) -> None:
    """Send the set's golden frames to a served model, raw and as PNG, and judge its answers by the artifact's rule.

    What `edgeres verify` is on a device, over the network: a server running another runtime, preprocessing
    or model than the set's fails here, with exit code 1.
    """
    set_verbose(verbose)
    from dataclasses import asdict

    from .serving.client import check_served

    url = url or ("127.0.0.1:8001" if grpc else "127.0.0.1:8000")
    check = check_served(export, url, "grpc" if grpc else "http", name)
    if as_json:
        console.show_json({"protocol": check.protocol, "frames": asdict(check.frames), "images": asdict(check.images),
                           "passed": not check.failures})
    else:
        console.table(f"Served model at {url} ({check.protocol}) on the golden samples",
                      ["input", "top-1 vs artifact", "max |logit diff| vs artifact", "top-1 vs FP32"],
                      [[path, f"{c.top1_vs_expected:.0%}", f"{c.max_abs_vs_expected:.3g}", f"{c.top1_vs_reference:.0%}"]
                       for path, c in (("frames", check.frames), ("PNG images", check.images))])
    if check.failures:
        raise EdgeresError(f"the served model at {url} answers otherwise than its artifact: "
                           + "; ".join(check.failures))
    console.passed(f"served model at {url}", f"{check.protocol}, {check.frames.samples} golden frames raw and as PNG")


def version_callback(value: bool) -> None:
    if value:
        console.say(f"edgeres {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                help="Show the version and exit.")] = False) -> None:
    pass


def main() -> None:
    previous = signal.signal(signal.SIGTERM, terminate)
    watch_for_sigterm()
    try:
        app()
    except Terminated:
        console.err_console.print("[red]terminated[/red]")
        sys.exit(143)
    except EdgeresError as error:
        _fail(f"{error}")
    except ImportError as error:  # a device install has one runtime; converting needs the heavy extras
        _fail(import_failure(error))
    except OSError as error:  # disk full, permission denied, ...: the message names the path
        _fail(f"{error}")
    except MemoryError:
        _fail("out of memory; use a smaller --imgsz, --calib-size or batch, or a machine with more memory")
    except KeyboardInterrupt:
        console.err_console.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as error:  # a bug or an unforeseen input: still one line, the traceback on request
        _fail(f"unexpected {type(error).__name__}: {error}. Run again with --verbose for the traceback, "
              "and report it if the input looks right")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str) -> None:
    if "--verbose" in sys.argv:
        raise  # noqa: PLE0704  (inside the handler that called us: the original traceback)
    console.fail_line(message)
    sys.exit(1)
