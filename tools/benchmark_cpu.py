"""Latency of PyTorch eager and every CPU backend on the same weights, in one run.

    .venv/bin/python tools/benchmark_cpu.py --arch resnet18 resnet50 --threads 2 --json out/bench_cpu.json

Batch 1 at 224x224. OpenVINO's rows come in each float mode the CPU offers: its own (fp32
arithmetic, what edgeres verifies and runs by default) and, where the CPU has them, bf16 and
fp16 (asked for: `--precision bf16`), for the FP32 IR and the INT8 IR's float layers alike.
The CPU and what each runtime picks on it head the table: rows compare only within one run,
on one CPU class. The TFLite rows are a proxy for a Raspberry Pi (this is an x86 CPU):
what transfers is whether every op runs inside XNNPACK, which the table reports. The artifacts are converted once; then each runtime is measured in
its own fresh process, as an application would hold it (several runtimes' thread pools
in one process slow each other down). Inside a process the cases are interleaved: each
round runs bare inference, preprocessing and `Classifier.predict(frame)` on a 640x480
BGR frame (preprocessing, inference and top-5), after a pause and an untimed call.

Weights: torchvision's ImageNet weights when they are on disk (--weights imagenet),
else a seeded random initialisation (latency does not depend on the values). INT8
models are calibrated on crops of scikit-image's sample photos. A random network's
logits are near ties, so INT8 cannot agree with it on the top-1 class; for random
weights this tool lowers the INT8 agreement floor of its own conversions to zero
(FP32 must still match PyTorch). INT8 accuracy is measured on trained models by the
tests and by `edgeres demo`, not here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeres.demo import photo_crops

CALIBRATION_IMAGES = 64
ARTIFACTS = (("onnx", "fp32"), ("onnx", "int8"), ("x86", "fp32"), ("x86", "int8"), ("rpi", "fp32"), ("rpi", "int8"))
RUNTIMES = {"onnx": "onnxruntime", "x86": "openvino", "rpi": "tflite/xnnpack"}


def interleaved_medians(cases: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    for run in cases.values():  # warm-up: first calls compile kernels and fill caches
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            time.sleep(0.05)  # let the previous case's worker threads go idle
            run()
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


def frame_and_input(preprocess) -> tuple[np.ndarray, np.ndarray]:
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return frame, preprocess(frame)[None]


def worker_eager(checkpoint: Path, arch: str, threads: int, rounds: int, per_round: int) -> dict:
    import torch

    from edgeres.models import load_model
    from edgeres.preprocess import Preprocess

    torch.set_num_threads(threads)
    module = load_model(checkpoint, arch).module
    _, x = frame_and_input(Preprocess.imagenet())
    tensor = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            module(tensor)

    return interleaved_medians({"inference": eager}, rounds, per_round)


def worker_artifact(artifact: Path, threads: int, rounds: int, per_round: int, precision: str | None) -> dict:
    import cv2

    from edgeres.runtime.classifier import Classifier

    classifier = Classifier(artifact, threads=threads, precision=precision)
    frame, x = frame_and_input(classifier.preprocess)
    backend = classifier._backend  # the bare runtime call, without edgeres around it
    cases = {
        "inference": lambda: backend.run(x),
        "preprocess": lambda: classifier.preprocess(frame),
        "predict": lambda: classifier.predict(frame),
    }
    row = interleaved_medians(cases, rounds, per_round)
    # Preprocessing alone on one thread, then also without Intel's IPP inside OpenCV: the
    # closest this x86 machine comes to OpenCV on a Pi (no IPP there).
    cv2.setNumThreads(1)
    row["preprocess 1 thread"] = interleaved_medians({"p": cases["preprocess"]}, rounds, per_round)["p"]
    cv2.ipp.setUseIPP(False)
    row["preprocess 1 thread, no IPP"] = interleaved_medians({"p": cases["preprocess"]}, rounds, per_round)["p"]
    row["pil resize+crop 1 thread"] = interleaved_medians({"p": pil_reference(frame, classifier.preprocess)},
                                                          rounds, per_round)["p"]
    row["multiply_adds"] = classifier.preprocess.multiply_adds(*frame.shape[:2])
    return row


def pil_reference(frame: np.ndarray, spec) -> Callable[[], object]:
    """PIL's own resize over the crop box (what torchvision computes), for comparison."""
    from PIL import Image

    height, width = frame.shape[:2]
    scale = min(height, width) / spec.resize
    side = spec.crop * scale
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    return lambda: np.asarray(Image.fromarray(frame).resize((spec.crop, spec.crop), Image.BILINEAR, box=box))


def run_worker(args: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmark worker failed: {' '.join(args)}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def int8_bar(weights: str | None) -> dict:
    """Latency only: random weights cannot agree with FP32 on the top-1 class (see above), so no bar."""
    return {} if weights else {"min_agreement": 0.0, "max_kept": 0}


def bench_arch(arch: str, weights: str | None, threads: int, rounds: int, per_round: int, scratch: Path) -> dict:
    import torch
    import torchvision

    from edgeres.conversion.pipeline import ConvertOptions, convert
    from edgeres.models import load_model

    scratch.mkdir(parents=True, exist_ok=True)
    checkpoint = scratch / f"{arch}.pth"
    if weights:
        module = load_model(arch=arch, weights=weights).module
    else:
        torch.manual_seed(0)
        module = getattr(torchvision.models, arch)(weights=None)
    torch.save(module.state_dict(), checkpoint)
    model = load_model(checkpoint, arch)
    calib = photo_crops(scratch / "calib", CALIBRATION_IMAGES)
    common = [str(threads), str(rounds), str(per_round)]
    results = {"pytorch eager fp32": run_worker(["eager", str(checkpoint), arch, *common])}
    for target, precision in ARTIFACTS:
        options = ConvertOptions(target=target, precision=precision, out_dir=scratch, calib=calib,
                                 calib_size=CALIBRATION_IMAGES, name=f"{arch}_{target}_{precision}", report=False,
                                 **(int8_bar(weights) if precision == "int8" else {}))
        result = convert(model, options, log=lambda message: None)
        for mode in (None, *faster_modes(result.path)):
            row = run_worker(["artifact", str(result.path), *common, mode or "own"])
            for check in result.record.checks:
                if "XNNPACK" in check["rule"]:
                    row["xnnpack"] = check["detail"]
            results[f"{RUNTIMES[target]} {precision}" + (f" in {mode}" if mode else "")] = row
    return results


def faster_modes(artifact: Path) -> tuple[str, ...]:
    """The modes besides its own that the artifact's runtime offers on this CPU (OpenVINO: bf16, fp16)."""
    from edgeres.runtime import backend_class
    from edgeres.runtime.openvino import host_precisions

    modes = backend_class(artifact).execution_precisions[1:]
    return tuple(mode for mode in modes if mode in host_precisions())


def print_table(report: dict) -> None:
    print(report["host"])
    print(f"median ms, batch 1, 224x224, {report['threads']} threads, {report['rounds']}x{report['per_round']} runs; "
          "predict = Classifier.predict on a 640x480 frame; x eager = PyTorch eager / predict")
    print(f"  {'model':9s} {'runtime':26s} {'inference':>9s} {'preprocess':>10s} {'predict':>8s} {'predict/inference':>17s} {'x eager':>8s}")
    for arch, results in report["results"].items():
        eager = results["pytorch eager fp32"]["inference"]
        print(f"  {arch:9s} {'pytorch eager fp32':26s} {eager:9.2f}")
        for name, row in results.items():
            if "predict" in row:
                print(f"  {arch:9s} {name:26s} {row['inference']:9.2f} {row['preprocess']:10.2f} {row['predict']:8.2f} "
                      f"{row['predict'] / row['inference']:17.2f} {eager / row['predict']:8.2f}"
                      + (f"  ({row['xnnpack']})" if "xnnpack" in row else ""))
    print("preprocessing of a 640x480 frame alone, median ms: 1 thread | 1 thread without IPP | "
          "PIL resize+crop (1 thread, no normalisation) | multiply-adds of the resize")
    for arch, results in report["results"].items():
        for name, row in results.items():
            if "predict" in row:
                print(f"  {arch:9s} {name:26s} {row['preprocess 1 thread']:6.2f} {row['preprocess 1 thread, no IPP']:6.2f} "
                      f"{row['pil resize+crop 1 thread']:6.2f} {row['multiply_adds'] / 1e6:6.2f} M")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, *rest = sys.argv[2:]
        if kind == "eager":
            checkpoint, arch, threads, rounds, per_round = rest
            result = worker_eager(Path(checkpoint), arch, int(threads), int(rounds), int(per_round))
        else:
            artifact, threads, rounds, per_round, mode = rest
            result = worker_artifact(Path(artifact), int(threads), int(rounds), int(per_round),
                                     None if mode == "own" else mode)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--weights", choices=["imagenet"], help="use torchvision's ImageNet weights from disk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from edgeres.numerics import describe

    report = {"host": describe(), "threads": args.threads, "rounds": args.rounds, "per_round": args.per_round,
              "weights": args.weights or "random init, seed 0", "results": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for arch in args.arch:
            report["results"][arch] = bench_arch(arch, args.weights, args.threads, args.rounds, args.per_round,
                                                 Path(scratch) / arch)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
