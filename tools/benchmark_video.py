"""Does live video reach 30 FPS? A 640x480 clip at 30 FPS played in real time through each artifact.

    .venv/bin/python tools/benchmark_video.py --arch resnet18 resnet50 --seconds 10 --json out/bench_video.json

The clip is played at its own frame rate by the capture thread, as a camera would deliver
it; frames that arrive while inference is busy are dropped, never queued. Reported per
artifact: frames classified per second (mean and the slowest 5% of intervals), the share
of frames classified, and the latency from capture to result. 224x224 inputs, weights as
in tools/benchmark_cpu.py (seeded random unless --weights imagenet; latency does not depend
on the values, and for random weights the INT8 agreement floor is lowered there too).

With --streams, each artifact is then given N copies of the clip at once (`edgeres video
--source ... --source ...`: each stream keeps its newest frame, the waiting frames are
classified together), N = 1, 2, 3, 4, 6, 8, ... until a stream falls short: below 95% of
its frames classified or below 28.5 results per second (a file whose decoding falls behind
the clock is read late, not dropped, so the rate is checked too). The last N that held is
how many 30 FPS streams this machine sustains with that artifact. Every stream's file is
decoded by its own capture thread, as N cameras' frames would be read, so decoding takes
its share of the same cores. The copies start together (real cameras drift out of phase,
which spreads their frames over time: a figure for in-phase sources).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmark_cpu import int8_bar

from edgeres.demo import photo_crops

ARTIFACTS = (("x86", "int8"), ("x86", "fp32"), ("onnx", "int8"), ("onnx", "fp32"), ("rpi", "int8"))
STREAM_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
SUSTAINED_SHARE = 0.95  # of each stream's frames classified, and of 30 results per second
THROUGHPUT_TRIALS_TO = 4  # streams tried even past the last one sustained: how the total scales with the load


def make_clip(folder: Path, seconds: float) -> Path:
    from edgeres.demo import write_clip

    crops = sorted(photo_crops(folder / "frames", 10).glob("*.png"))
    frames_per_image = max(1, round(seconds * 30 / len(crops)))
    clip = folder / "clip.mp4"
    write_clip([(path, 0) for path in crops], clip, frames_per_image=frames_per_image)
    return clip


def streams_sustained(classifier, clip: Path) -> dict:
    """How many real-time copies of `clip` the classifier keeps up with, and each trial's figures."""
    from edgeres.streams import classify_streams

    trials, sustained = [], 0
    for count in STREAM_COUNTS:
        summary = classify_streams(classifier, [str(clip)] * count)
        worst = min(stream.classified_share for stream in summary.streams)
        slowest = min(stream.fps_mean for stream in summary.streams)
        trials.append({"streams": count, "worst_classified_share": worst, "fps_total": summary.fps_total,
                       "fps_worst_stream": slowest, "frames_per_round": summary.frames_per_round,
                       "how": summary.how,
                       "latency_ms_p95_worst": max(stream.latency_ms_p95 for stream in summary.streams)})
        held = worst >= SUSTAINED_SHARE and slowest >= SUSTAINED_SHARE * 30
        previous = trials[-2]["streams"] if len(trials) > 1 else 0
        if held and sustained == previous:  # sustained: this count and every smaller one held
            sustained = count
        if not held and count >= THROUGHPUT_TRIALS_TO:
            break
    return {"sustained": sustained, "all_held": sustained == STREAM_COUNTS[-1], "trials": trials}


def bench_arch(arch: str, weights: str | None, threads: int, clip: Path, scratch: Path, streams: bool,
               imgsz: int = 224) -> dict:
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
    for target, precision, *batch in ARTIFACTS:
        dynamic = batch == ["dynamic"]  # --dynamic-batch: one call classifies the waiting frames of all streams
        options = ConvertOptions(target=target, precision=precision, out_dir=scratch, calib=calib, calib_size=64,
                                 imgsz=imgsz,
                                 name=f"{arch}_{target}_{precision}{'_dynamic' if dynamic else ''}", report=False,
                                 dynamic_batch=dynamic, **(int8_bar(weights) if precision == "int8" else {}))
        path = convert(model, options, log=lambda message: None).path
        classifier = Classifier(path, threads=threads)
        summary = classify_video(classifier, str(clip))
        name = " ".join((target, precision, *batch))
        results[name] = {
            "fps_mean": summary.fps_mean, "fps_p5": summary.fps_p5, "classified_share": summary.classified_share,
            "latency_ms_mean": summary.latency_ms_mean, "frames_read": summary.frames_read,
        }
        if streams:
            results[name]["streams"] = streams_sustained(classifier, clip)
    return results


def print_streams(report: dict) -> None:
    print(f"30 FPS streams sustained (every stream: >= {SUSTAINED_SHARE:.0%} of its frames classified and "
          f">= {30 * SUSTAINED_SHARE:.1f} results/s); then per trial: streams: results/s of all streams "
          "(frames classified together per round, p95 latency of the worst stream)")
    for arch, rows in report["results"].items():
        for name, row in rows.items():
            found = row["streams"]
            count = f"{'>=' if found['all_held'] else ''}{found['sustained']}"
            trials = "; ".join(f"{t['streams']}: {t['fps_total']:.1f} ({t['frames_per_round']:.2f}, "
                               f"{t['latency_ms_p95_worst']:.0f} ms)" for t in found["trials"])
            print(f"  {arch:9s} {name:18s} {count:>4s}   {trials}   [{found['trials'][-1]['how']}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--weights", choices=["imagenet"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--streams", action="store_true", help="also find how many 30 FPS streams each sustains")
    parser.add_argument("--imgsz", type=int, default=224, help="the model's input side (its crop)")
    parser.add_argument("--targets", nargs="+", help="only these artifacts, e.g. 'x86 int8' 'onnx int8 dynamic' "
                        "(dynamic: converted with --dynamic-batch)")
    args = parser.parse_args()
    if args.targets:
        global ARTIFACTS
        ARTIFACTS = tuple(tuple(name.split()) for name in args.targets)
    report = {"threads": args.threads, "imgsz": args.imgsz, "clip": f"640x480, 30 FPS, {args.seconds:.0f} s, real time", "results": {}}
    with tempfile.TemporaryDirectory() as scratch:
        clip = make_clip(Path(scratch), args.seconds)
        for arch in args.arch:
            report["results"][arch] = bench_arch(arch, args.weights, args.threads, clip, Path(scratch) / arch,
                                                 args.streams, args.imgsz)
    print(f"640x480 clip at 30 FPS played in real time, {args.threads} threads, {args.imgsz}x{args.imgsz} input")
    print(f"  {'model':9s} {'artifact':18s} {'FPS mean':>8s} {'FPS p5':>7s} {'classified':>10s} {'latency ms':>10s}")
    for arch, rows in report["results"].items():
        for name, row in rows.items():
            print(f"  {arch:9s} {name:18s} {row['fps_mean']:8.1f} {row['fps_p5']:7.1f} "
                  f"{row['classified_share']:10.0%} {row['latency_ms_mean']:10.1f}")
    if args.streams:
        print_streams(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
