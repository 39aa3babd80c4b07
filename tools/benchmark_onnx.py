"""Latency of PyTorch eager vs the ONNX artifacts, in one run on the same weights.

    .venv/bin/python tools/benchmark_onnx.py --arch resnet18 resnet50 --threads 2 --json out/bench.json

Weights are torchvision's random initialisation unless --weights imagenet finds the
ImageNet file on disk: latency does not depend on the values. INT8 is calibrated on
crops of scikit-image's sample photos. Reported: median ms per batch-1 inference, and
for `Classifier.predict` on a 640x480 BGR frame, preprocessing included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
import torchvision

from edgeres.calibration import CalibrationSet
from edgeres.conversion import onnx_tools
from edgeres.conversion.pipeline import ConvertOptions, convert
from edgeres.models import LoadedModel
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier


def median_ms(run: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def photo_crops(count: int, spec: Preprocess) -> CalibrationSet:
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [np.ascontiguousarray(getattr(data, n)()[..., ::-1]) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    samples = []
    for index in range(count):
        photo = photos[index % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        samples.append(spec(np.ascontiguousarray(photo[top : top + side, left : left + side])))
    return CalibrationSet(samples, {"source": "scikit-image photo crops", "used": count})


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_arch(arch: str, threads: int, warmup: int, runs: int, scratch: Path) -> dict:
    torch.set_num_threads(threads)
    module = getattr(torchvision.models, arch)(weights=None).eval()
    spec = Preprocess.imagenet()
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
    fp32, int8 = scratch / f"{arch}_fp32.onnx", scratch / f"{arch}_int8.onnx"
    onnx_tools.export_fp32(module, spec.input_shape, fp32, opset=18, dynamic_batch=False)
    onnx_tools.quantize_int8(fp32, int8, photo_crops(32, spec), method="minmax")
    model = LoadedModel(module, arch, [f"class_{i}" for i in range(1000)], {"checkpoint": "random init"})
    artifact = convert(model, ConvertOptions(out_dir=scratch, name=f"{arch}_artifact"), log=lambda m: None).path
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    classifier = Classifier(artifact, threads=threads)
    with torch.inference_mode():
        tensor = torch.from_numpy(x)
        results = {"pytorch_eager_fp32": median_ms(lambda: module(tensor), warmup, runs)}
    for name, path in (("onnxruntime_fp32", fp32), ("onnxruntime_int8", int8)):
        sess = session(path, threads)
        results[name] = median_ms(lambda: sess.run(None, {"input": x}), warmup, runs)
    results["preprocess_640x480"] = median_ms(lambda: spec(frame), warmup, runs)
    results["classifier_predict_fp32_640x480"] = median_ms(lambda: classifier.predict(frame), warmup, runs)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report = {"threads": args.threads, "runs": args.runs, "onnxruntime": ort.__version__,
              "torch": torch.__version__, "results": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for arch in args.arch:
            report["results"][arch] = bench_arch(arch, args.threads, args.warmup, args.runs, Path(scratch))
    print(f"median ms, batch 1, 224x224, {args.threads} threads ({args.runs} runs)")
    for arch, results in report["results"].items():
        eager = results["pytorch_eager_fp32"]
        for name, ms in results.items():
            ratio = "" if name.startswith("preprocess") else f"  {eager / ms:.2f}x eager"
            print(f"{arch:10s} {name:34s} {ms:8.2f}{ratio}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
