"""What `edgeres convert` proves about each artifact it writes: accuracy against FP32, latency, size.

Rows accumulate in the output folder's report.json (one per artifact, replaced when the
artifact is converted again), rendered as report.md and a bar chart, report.png.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import atomic_path
from ..benchmark import artifact_size, benchmark
from ..calibration.folder import read_image
from ..evaluate import metrics, read_labelled_folder
from ..preprocess import Preprocess

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
LATENCY_RUNS = 30
MAX_EVAL_IMAGES = 1000


@dataclass
class EvalSet:
    """Frames an artifact is judged on, with their true classes when known."""

    frames: list[np.ndarray]
    truth: np.ndarray | None
    source: str  # "validation", "calibration" or "random"

    @classmethod
    def from_val(cls, folder: Path, labels: list[str], limit: int = MAX_EVAL_IMAGES) -> "EvalSet":
        images = read_labelled_folder(folder, labels)
        step = max(1, len(images.paths) // limit)  # an even spread over the classes
        paths, truth = images.paths[::step][:limit], images.classes[::step][:limit]
        return cls([read_image(p) for p in paths], truth, "validation")


@dataclass
class Judged:
    """An artifact's logits and PyTorch's on an EvalSet, and what they say."""

    accuracy: float | None
    fp32_accuracy: float | None
    agreement: float
    mean_kl: float
    images: int

    @property
    def drop_points(self) -> float | None:
        """Top-1 accuracy lost against FP32, in percentage points (None without labels)."""
        return None if self.accuracy is None else 100 * (self.fp32_accuracy - self.accuracy)


def judge(artifact: Path, module, model_spec: Preprocess, labels: list[str], data: EvalSet) -> Judged:
    from ..runtime.classifier import Classifier
    from .pipeline import torch_logits

    classifier = Classifier(artifact)
    logits = np.concatenate([classifier.logits_batch(data.frames[i : i + 64]) for i in range(0, len(data.frames), 64)])
    reference = torch_logits(module, model_spec.batch(data.frames))
    truth = data.truth if data.truth is not None else reference.argmax(1)
    judged = metrics(logits, truth, labels, reference)
    labelled = data.truth is not None
    return Judged(accuracy=judged.top1 if labelled else None,
                  fp32_accuracy=float((reference.argmax(1) == truth).mean()) if labelled else None,
                  agreement=judged.agreement, mean_kl=judged.mean_kl, images=len(data.frames))


def report_row(artifact: Path, record, judged: Judged, source: str, threads: int | None = None) -> dict:
    latency = benchmark([artifact], threads=threads, warmup=5, runs=LATENCY_RUNS)[0]
    return {
        "artifact": artifact.name, "target": record.target, "precision": record.precision,
        "size_mb": round(artifact_size(artifact) / 1e6, 3), "eval_images": judged.images, "eval_source": source,
        "accuracy": judged.accuracy, "fp32_accuracy": judged.fp32_accuracy, "agreement": judged.agreement,
        "mean_kl": judged.mean_kl, "latency_p50_ms": round(latency.p50_ms, 3), "fps": round(latency.fps, 1),
        "runtime": latency.runtime, "kept_float": (record.quantization or {}).get("kept_float", []),
    }


def update_reports(out_dir: Path, row: dict) -> list[Path]:
    """Add or replace `row` in out_dir/report.json, then rewrite report.md and report.png."""
    path = out_dir / REPORT_JSON
    rows = json.loads(path.read_text())["artifacts"] if path.is_file() else []
    rows = [r for r in rows if r["artifact"] != row["artifact"]] + [row]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"artifacts": rows}, indent=2) + "\n")
    with atomic_path(out_dir / REPORT_MD) as tmp:
        tmp.write_text(markdown(rows))
    with atomic_path(out_dir / REPORT_PNG) as tmp:
        chart(rows, tmp)
    return [path, out_dir / REPORT_MD, out_dir / REPORT_PNG]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "# edgeres conversion report", "",
        "Accuracy: top-1 on the evaluation images (FP32 = the PyTorch model on the same images); agreement: "
        "top-1 agreement with the PyTorch model; latency: `Classifier.predict` on a 640x480 frame, median, on "
        "the machine that converted.", "",
        "| artifact | precision | MB | images | accuracy | FP32 | agreement | mean KL | p50 ms | FPS | kept in float |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['artifact']} | {r['precision']} | {r['size_mb']:.1f} | {r['eval_images']} {r['eval_source']} | "
            f"{_percent(r['accuracy'])} | {_percent(r['fp32_accuracy'])} | {_percent(r['agreement'])} | "
            f"{r['mean_kl']:.2e} | {r['latency_p50_ms']:.2f} | {r['fps']:.0f} | {', '.join(r['kept_float']) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a build machine
    import matplotlib.pyplot as plt

    names = [r["artifact"] for r in rows]
    quality = [100 * (r["accuracy"] if r["accuracy"] is not None else r["agreement"]) for r in rows]
    figure, (latency_axis, quality_axis) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 1.8))
    latency_axis.barh(names, [r["latency_p50_ms"] for r in rows], color="#4c72b0")
    latency_axis.set_xlabel("latency, ms (median, 640x480 frame)")
    latency_axis.invert_yaxis()
    quality_axis.barh(names, quality, color="#55a868")
    quality_axis.set_xlabel("top-1 accuracy % (agreement with FP32 where unlabelled)")
    quality_axis.set_xlim(max(0.0, min(quality) - 5), 100)
    quality_axis.invert_yaxis()
    quality_axis.set_yticklabels([])
    figure.tight_layout()
    with open(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)
