"""Latency, throughput, start-up time and memory of artifacts on this machine.

Each artifact runs in its own process, as it would in an application: its peak memory
is its own, and one runtime's threads or caches cannot slow another's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import EdgeresError

FRAME_SHAPE = (480, 640, 3)  # a VGA camera frame
MAX_RUNS = 100_000  # a few minutes for a ResNet18 on a Pi; more is a typo


@dataclass
class BenchmarkResult:
    artifact: str
    runtime: str
    precision: str
    size_mb: float  # every file of the artifact, sidecar and golden samples excluded
    first_inference_ms: float  # load + compile + the first predict
    p50_ms: float
    p90_ms: float
    p99_ms: float
    fps: float  # 1000 / mean latency, one frame at a time
    peak_rss_mb: float
    runs: int
    threads: int | None
    execution_precision: str  # the mode its float layers ran in (OpenVINO: fp32 unless asked for bf16 or fp16)


def benchmark(artifacts: Sequence[Path], *, threads: int | None = None, warmup: int = 10, runs: int = 100,
              progress=None, precision: str | None = None) -> list[BenchmarkResult]:
    """Classifier.predict on a 640x480 BGR frame (preprocessing included), per artifact, each in its own process."""
    if not (0 <= warmup <= MAX_RUNS and 1 <= runs <= MAX_RUNS):
        raise EdgeresError(f"--warmup must be 0 to {MAX_RUNS} and --runs 1 to {MAX_RUNS}, got {warmup} and {runs}")
    from .runtime import backend_class, check_precision, resolve_artifact

    artifacts = [resolve_artifact(Path(path)) for path in artifacts]
    for path in artifacts:
        if not Path(path).is_file():
            raise EdgeresError(f"artifact {path} does not exist")
        check_precision(backend_class(Path(path)), Path(path), precision)  # here, not in each worker
    items = progress(artifacts, "Benchmarking", len(artifacts)) if progress else artifacts
    return [_run_worker(Path(path), threads, warmup, runs, precision) for path in items]


def _run_worker(path: Path, threads: int | None, warmup: int, runs: int, precision: str | None) -> BenchmarkResult:
    code = (f"from edgeres.benchmark import worker; "
            f"worker({str(path)!r}, {threads!r}, {warmup}, {runs}, {precision!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if last.startswith("edgeres.errors."):  # our own error: its message is the part worth showing
            last = last.split(": ", 1)[-1]
        raise EdgeresError(f"benchmarking {path.name} failed: {last}")
    return BenchmarkResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def worker(path: str, threads: int | None, warmup: int, runs: int, precision: str | None = None) -> None:
    """Runs in the child process; prints one JSON line."""
    import resource
    import time

    import numpy as np

    from .runtime.classifier import Classifier

    frame = np.random.default_rng(0).integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
    start = time.perf_counter()
    classifier = Classifier(path, threads=threads, precision=precision)
    classifier.predict(frame)
    first = time.perf_counter() - start
    for _ in range(warmup):
        classifier.predict(frame)
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        classifier.predict(frame)
        times.append(time.perf_counter() - tick)
    ms = 1e3 * np.array(times)
    result = BenchmarkResult(
        artifact=Path(path).name, runtime=classifier.backend_name, precision=classifier.record.precision,
        size_mb=artifact_size(Path(path)) / 1e6, first_inference_ms=1e3 * first,
        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)), p99_ms=float(np.percentile(ms, 99)),
        fps=float(1e3 / ms.mean()), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        runs=runs, threads=threads, execution_precision=classifier.execution_precision,
    )
    print(json.dumps(result.__dict__))


def artifact_size(path: Path) -> int:
    """Bytes of the model itself: the file, plus OpenVINO's .bin weights beside an .xml."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)
