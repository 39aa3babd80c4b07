"""Does live video reach 30 FPS? A 640x480 clip at 30 FPS played in real time through each artifact.

    .venv/bin/python tools/benchmark_video.py --arch resnet18 resnet50 --seconds 10 --json out/bench_video.json

The clip is played at its own frame rate by the capture thread, as a camera would deliver
it; frames that arrive while inference is busy are dropped, never queued. Reported per
artifact: frames classified per second (mean and the slowest 5% of intervals), the share
of frames classified, and the latency from capture to result. 224x224 inputs, weights as
in tools/benchmark_cpu.py (seeded random unless --weights imagenet; latency does not depend
on the values, and for random weights the INT8 agreement floor is lowered there too).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmark_cpu import int8_bar

from edgeres.demo import photo_crops

ARTIFACTS = (("x86", "int8"), ("x86", "fp32"), ("onnx", "int8"), ("onnx", "fp32"), ("rpi", "int8"))


def make_clip(folder: Path, seconds: float) -> Path:
    from edgeres.demo import write_clip

    crops = sorted(photo_crops(folder / "frames", 10).glob("*.png"))
    frames_per_image = max(1, round(seconds * 30 / len(crops)))
    clip = folder / "clip.mp4"
    write_clip([(path, 0) for path in crops], clip, frames_per_image=frames_per_image)
    return clip


def bench_arch(arch: str, weights: str | None, threads: int, clip: Path, scratch: Path) -> dict:
    import torch
    import torchvision

    from edgeres.conversion.pipeline import ConvertOptions, convert
    from edgeres.models import LoadedModel, load_model
    from edgeres.runtime.classifier import Classifier
    from edgeres.video import classify_video

    if weights:
        model = load_model(arch=arch, weights=weights)
    else:
        torch.manual_seed(0)
        module = getattr(torchvision.models, arch)(weights=None).eval()
        model = LoadedModel(module, arch, [f"class_{i}" for i in range(1000)], {"checkpoint": "random init, seed 0"})
    calib = photo_crops(scratch / "calib", 64)
    results = {}
    for target, precision in ARTIFACTS:
        options = ConvertOptions(target=target, precision=precision, out_dir=scratch, calib=calib, calib_size=64,
                                 name=f"{arch}_{target}_{precision}", report=False,
                                 **(int8_bar(weights) if precision == "int8" else {}))
        path = convert(model, options, log=lambda message: None).path
        summary = classify_video(Classifier(path, threads=threads), str(clip))
        results[f"{target} {precision}"] = {
            "fps_mean": summary.fps_mean, "fps_p5": summary.fps_p5, "classified_share": summary.classified_share,
            "latency_ms_mean": summary.latency_ms_mean, "frames_read": summary.frames_read,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--weights", choices=["imagenet"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = {"threads": args.threads, "clip": f"640x480, 30 FPS, {args.seconds:.0f} s, real time", "results": {}}
    with tempfile.TemporaryDirectory() as scratch:
        clip = make_clip(Path(scratch), args.seconds)
        for arch in args.arch:
            report["results"][arch] = bench_arch(arch, args.weights, args.threads, clip, Path(scratch) / arch)
    print(f"640x480 clip at 30 FPS played in real time, {args.threads} threads, 224x224 input")
    print(f"  {'model':9s} {'artifact':10s} {'FPS mean':>8s} {'FPS p5':>7s} {'classified':>10s} {'latency ms':>10s}")
    for arch, rows in report["results"].items():
        for name, row in rows.items():
            print(f"  {arch:9s} {name:10s} {row['fps_mean']:8.1f} {row['fps_p5']:7.1f} "
                  f"{row['classified_share']:10.0%} {row['latency_ms_mean']:10.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
