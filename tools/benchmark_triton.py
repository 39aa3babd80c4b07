"""A served set under load: Triton (the real tritonserver) on loopback, concurrent clients, p50/p99.

    .venv/bin/python tools/benchmark_triton.py --arch resnet18 --imgsz 224 --requests 300 --json out/triton.json

Each artifact is converted (seeded random weights, as tools/benchmark_cpu.py; latency does not depend on
the values), exported with `edgeres triton export --backend python` and served by `tritonserver` on
127.0.0.1. Clients send 640x480 JPEG camera frames, one per request, over HTTP and over gRPC; every answer
is compared with the artifact's own logits for that frame (computed here, in process, from the same
bytes), so a wrong answer is counted, never timed. For each protocol and client count: requests per
second, p50 and p99 latency, failed and wrong answers. In the same run the same frames are classified in
process by `Classifier` (decode, preprocess, infer), so `served / in process` is a ratio of one run.

Then the kill-and-restart run: clients that resend what the server never answered, while the server is
killed (SIGKILL) halfway and started again on the same ports. Every request must end answered, rightly.
Server and clients share this machine's cores: the figures are for one box, loopback, no network.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from benchmark_cpu import int8_bar

from edgeres.demo import photo_crops

ARTIFACTS = (("onnx", "int8", "dynamic"), ("x86", "int8"))
CLIENTS = (1, 4, 8)


def camera_frames(folder: Path, count: int = 16) -> list[bytes]:
    crops = sorted(photo_crops(folder, count).glob("*.png"))
    return [cv2.imencode(".jpg", cv2.resize(cv2.imread(str(path)), (640, 480)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
            .tobytes() for path in crops]


def convert_set(arch: str, imgsz: int, target: str, precision: str, dynamic: bool, scratch: Path) -> Path:
    import torch
    import torchvision

    from edgeres.conversion.pipeline import ConvertOptions, convert
    from edgeres.models import LoadedModel

    torch.manual_seed(0)
    module = getattr(torchvision.models, arch)(weights=None).eval()
    model = LoadedModel(module, arch, [f"class_{i}" for i in range(1000)], {"checkpoint": "random init, seed 0"})
    options = ConvertOptions(target=target, precision=precision, out_dir=scratch, calib=photo_crops(scratch / "calib",
                             64), calib_size=64, imgsz=imgsz, name=f"{arch}_{target}_{precision}", report=False,
                             dynamic_batch=dynamic, **(int8_bar(None) if precision == "int8" else {}))
    return convert(model, options, log=lambda message: None).path


def in_process(artifact: Path, images: list[bytes], requests: int) -> tuple[np.ndarray, float]:
    """The artifact's logits for each image, and images per second classified here in one thread."""
    from edgeres.runtime.classifier import Classifier

    classifier = Classifier(artifact)
    decode = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in images]
    expected = classifier.logits_batch(decode)
    start = time.perf_counter()
    for index in range(requests):
        classifier.logits(cv2.imdecode(np.frombuffer(images[index % len(images)], np.uint8), cv2.IMREAD_COLOR))
    return expected, requests / (time.perf_counter() - start)


def bench_set(artifact: Path, images: list[bytes], args, scratch: Path) -> dict:
    from edgeres.serving.load import run_load
    from edgeres.serving.repository import ExportOptions, export_repository
    from edgeres.serving.server import TritonServer

    expected, local_rate = in_process(artifact, images, args.requests // 2)
    exported = export_repository(artifact, scratch / "served", ExportOptions(
        backend="python", max_batch=8, instances=args.instances), log=lambda message: None)
    server = TritonServer(exported.repository, log_path=scratch / "tritonserver.log").start()
    rows, restart = [], {}
    try:
        for protocol in ("http", "grpc"):
            url = server.http_url if protocol == "http" else server.grpc_url
            run_load(url, exported.name, images, expected, protocol=protocol, clients=2, requests=20)  # warm-up
            for clients in args.clients:
                result = run_load(url, exported.name, images, expected, protocol=protocol, clients=clients,
                                  requests=args.requests, seconds=args.seconds)
                rows.append({**result.summary(), "vs_in_process": round(result.throughput / local_rate, 2)})
                print(f"  {protocol:4s} {clients:2d} clients: {rows[-1]}")

            def kill_and_restart():
                began = time.perf_counter()
                server.kill()
                server.start()
                restart[protocol] = round(time.perf_counter() - began, 2)

            result = run_load(url, exported.name, images, expected, protocol=protocol, clients=4,
                              requests=args.requests, seconds=args.seconds * 2, retries=400,
                              during=kill_and_restart)
            rows.append({**result.summary(), "killed_and_restarted_s": restart.get(protocol)})
            print(f"  {protocol:4s} kill+restart: {rows[-1]}")
    finally:
        server.stop()
    return {"artifact": artifact.name, "in_process_per_s": round(local_rate, 1), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--requests", type=int, default=300, help="requests per run (fixed count)")
    parser.add_argument("--seconds", type=float, default=120.0, help="time limit per run")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances per step")
    parser.add_argument("--targets", nargs="+", help="e.g. 'onnx int8 dynamic' 'x86 int8' 'rpi int8'")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    artifacts = [tuple(name.split()) for name in args.targets] if args.targets else ARTIFACTS
    report = {"arch": args.arch, "imgsz": args.imgsz, "frames": "640x480 JPEG q90, one per request",
              "requests": args.requests, "instances": args.instances, "results": []}
    with tempfile.TemporaryDirectory() as scratch:
        images = camera_frames(Path(scratch) / "frames")
        for target, precision, *batch in artifacts:
            folder = Path(scratch) / f"{target}_{precision}_{'_'.join(batch)}"
            print(f"{args.arch} {target} {precision} {' '.join(batch)}")
            artifact = convert_set(args.arch, args.imgsz, target, precision, batch == ["dynamic"], folder)
            report["results"].append({"target": " ".join((target, precision, *batch)),
                                      **bench_set(artifact, images, args, folder)})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
