"""Every target's artifacts, FP32 and INT8, in every precision mode each runtime offers on this CPU.

    .venv/bin/python tools/numerics_check.py --cache /tmp/numerics [--json numerics.json] [--markdown]

One converted set of the demo's digits ResNet18 (trained on first use, cached under
--cache): onnx, npu, x86 (OpenVINO), rpi (TFLite/XNNPACK), jetson (its ONNX, through ONNX
Runtime here) and mobile (.pte and .ptl), in fp32, fp16 where the target makes it, and int8.
Each artifact runs through `Classifier`, first in its own mode (what conversion verified),
then in each faster mode its runtime offers (OpenVINO: bf16, fp16); a mode this CPU lacks
is listed as such. Per artifact and mode: top-1 agreement with the PyTorch model and the
largest logit difference, on the held-out digits. The CPU and what each runtime picks on
it (edgeres.numerics) head the table, since these numbers depend on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ARTIFACTS = (("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("npu", "int8"), ("x86", "fp32"),
             ("x86", "fp16"), ("x86", "int8"), ("rpi", "fp32"), ("rpi", "int8"), ("jetson", "fp32"),
             ("jetson", "int8"), ("mobile", "fp32"), ("mobile", "int8"))
CALIBRATION_IMAGES = 200


def converted_set(cache: Path, targets: list[str]) -> tuple[object, list[Path], list[np.ndarray]]:
    """The digits model, its artifacts (each file a runtime opens) and the held-out frames."""
    import cv2

    from edgeres.conversion.pipeline import ConvertOptions, convert
    from edgeres.demo import DEMO_IMGSZ, digits_dataset, train_digits_resnet
    from edgeres.models import load_model

    data = digits_dataset(cache / "digits")
    train_digits_resnet(data, cache / "resnet18_digits.pt")
    model = load_model(cache / "resnet18_digits.pt", "resnet18", labels=data.labels_file)
    paths = []
    for target, precision in ARTIFACTS:
        if target not in targets:
            continue
        print(f"converting {target} {precision}", file=sys.stderr)
        options = ConvertOptions(target=target, precision=precision, out_dir=cache / "artifacts",
                                 calib=data.train_dir if precision == "int8" else None,
                                 calib_size=CALIBRATION_IMAGES, imgsz=DEMO_IMGSZ, report=False)
        result = convert(model, options, log=lambda message: None)
        paths += [result.path, *result.companions]
    frames = [cv2.imread(str(path)) for path, _ in data.test_images()]
    return model, paths, frames


def measure(model, paths: list[Path], frames: list[np.ndarray]) -> list[dict]:
    from edgeres.errors import DeviceError
    from edgeres.metrics import compare_logits
    from edgeres.preprocess import Preprocess
    from edgeres.runtime import backend_class
    from edgeres.runtime.classifier import Classifier

    spec = Preprocess.imagenet(32)
    reference = model.logits(spec.tensors([spec.resize_and_crop(frame) for frame in frames]))
    rows = []
    for path in paths:
        modes = backend_class(path).execution_precisions  # () where the artifact alone decides
        for mode in (None, *modes[1:]):
            row = {"artifact": path.name, "mode": mode, "asked_for": mode is not None}
            try:
                classifier = Classifier(path, precision=mode)
            except DeviceError as error:
                rows.append({**row, "runtime": backend_class(path).name, "precision": "",
                             "skipped": str(error)})
                continue
            found = compare_logits(reference, classifier.logits_batch(frames), "")
            rows.append({**row, "runtime": classifier.backend_name, "precision": classifier.record.precision,
                         "mode": classifier.execution_precision if modes else "as built", "images": len(frames),
                         **{key: found[key] for key in ("top1_agreement", "max_abs_logit_diff",
                                                        "max_rel_logit_diff")}})
    return rows


def table(rows: list[dict], markdown: bool) -> str:
    header = ["artifact", "runtime", "float arithmetic", "top-1 agreement", "max abs logit diff", "of largest logit"]
    widths = (34, 24, 18, 15, 18, 16)
    lines = []
    if markdown:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * 3]
    else:
        lines.append(" ".join(f"{cell:{'<' if i < 3 else '>'}{width}s}" for i, (cell, width) in
                              enumerate(zip(header, widths))))
    for row in rows:
        if "skipped" in row:
            cells = [row["artifact"], row["runtime"], f"{row['mode']} (asked for)", "not on this CPU", "", ""]
        else:
            mode = row["mode"] + (" (asked for)" if row["asked_for"] else "")
            cells = [row["artifact"], row["runtime"], mode, f"{row['top1_agreement']:.2%}",
                     f"{row['max_abs_logit_diff']:.2e}", f"{row['max_rel_logit_diff']:.4%}"]
        lines.append("| " + " | ".join(cells) + " |" if markdown else
                     " ".join(f"{cell:{'<' if i < 3 else '>'}{width}s}" for i, (cell, width) in
                              enumerate(zip(cells, widths))))
    return "\n".join(lines)



def main() -> None:
    from edgeres.numerics import describe, host_numerics

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path(".cache/numerics"),
                        help="where the digits, the model and the artifacts are kept")
    parser.add_argument("--targets", nargs="+", default=sorted({target for target, _ in ARTIFACTS}))
    parser.add_argument("--json", type=Path, help="also write the host and the rows here")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    args = parser.parse_args()
    model, paths, frames = converted_set(args.cache, args.targets)
    rows = measure(model, paths, frames)
    print(describe())
    print(f"{len(frames)} held-out digits; reference: the PyTorch model (fp32) on the same crops")
    print(table(rows, args.markdown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"host": host_numerics(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
