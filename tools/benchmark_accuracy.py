"""INT8 accuracy, in one run: every INT8 target and its peers, on the hard photo models and the digits model.

    .venv/bin/python tools/benchmark_accuracy.py --json out/bench_accuracy.json
    .venv/bin/python tools/benchmark_accuracy.py --fixtures resnet50-photos-32 --targets npu x86
    .venv/bin/python tools/benchmark_accuracy.py --fixtures resnet18-photos-32 --targets qnn

For each model (trained here and cached, see edgeres.photoset): FP32 top-1 on its held-out
images, then each method's top-1 drop (points) and top-1 agreement with FP32 on the same
images:
- peers, plain post-training quantization with each tool's defaults: torch.ao FX with
  torchvision's x86 recipe (fbgemm/x86 qconfig, per-channel weights, histogram observers),
  ONNX Runtime quantize_static (defaults: QDQ, per-tensor int8, min/max; run unfused, as
  edgeres runs every QDQ model on a CPU without VNNI, so this machine's saturating fused
  kernels count against no one) and NNCF
  (nncf.quantize on the OpenVINO model, defaults);
- edgeres convert --int8 --calib CALIB --val VAL for each target (its default bar: at most
  0.3 points lost and 96% agreement), with the layers it kept out of INT8, how many
  attempts it made, and its wall time (the whole conversion: export, search, verification,
  fine-tuning). Where the search fine-tuned (its last remedy, when no calibration-only
  attempt met the bar), two rows: the best calibration-only attempt, and the fine-tuned one
  with its steps and time (`--finetune-minutes` bounds it, as in convert).
With `--targets qnn`: edgeres' qnn row is judged like the others, on its stand-in (the same QDQ
graph on ONNX Runtime's CPU); then the compiled context model itself and the stand-in, on the
same --emulated-images val images (spread evenly: they are sorted by class), the context model on QNN's HTP emulator (x86-64, not
the chip); and QNN's own recipe as a peer (get_qnn_qdq_config defaults, compiled the same way,
on the emulator).
With `--targets rknn`: edgeres' rknn row is judged on the .rknn itself as a PC runs it, rknn-toolkit2's
simulator (x86-64, not the chip), on every val image; rknn-toolkit2's own quantization (its build
defaults, from the same calib images) runs there as a peer.
With `--targets imx500`: edgeres' imx500 row is judged on its stand-in (MCT's quantized graph lowered to
standard ops, on ONNX Runtime's CPU), then the package itself as a PC runs it, MCT's simulation (its own
quantizer ops, seconds an image), on --emulated-images val images; MCT's own PTQ with its defaults
(mixed precision within the same weight budget, which a ResNet18 needs to fit the sensor) is the peer.
Calibration uses each model's calib/ split (10 images per class), never its val/ split.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeres.calibration.folder import find_images, read_image
from edgeres.demo import DEMO_IMGSZ, DIGIT_LABELS, digits_dataset, train_digits_resnet
from edgeres.metrics import accuracy, agreement
from edgeres.photoset import FIXTURES, photo_set, train_photo_resnet
from edgeres.preprocess import Preprocess

TARGETS = ("npu", "qnn", "rknn", "imx500", "x86", "rpi", "jetson", "mobile")
PEERS = ("torch.ao FX PTQ", "ORT quantize_static", "NNCF defaults")
# qnn and imx500 only when asked: their emulators take seconds an image (and imx500's toolchain minutes a build)
DEFAULT_TARGETS = ("npu", "rknn", "x86", "rpi", "jetson", "mobile")
EMULATED_IMAGES = 160  # val images run on an emulator (qnn: QNN's HTP emulator, about a second each)


@dataclass
class Fixture:
    name: str
    arch: str
    checkpoint: Path
    imgsz: int
    calib_dir: Path
    val_dir: Path
    labels: list[str]


def fixtures(names: list[str], cache: Path) -> list[Fixture]:
    found = []
    for name in names:
        if name == "resnet18-digits":
            data = digits_dataset(cache / "digits")
            train_digits_resnet(data, cache / "resnet18_digits.pt", imgsz=DEMO_IMGSZ)
            calib = cache / "digits-calib"
            _subset(data.train_dir, calib, 16)
            found.append(Fixture(name, "resnet18", cache / "resnet18_digits.pt", DEMO_IMGSZ, calib, data.test_dir,
                                 DIGIT_LABELS))
            continue
        spec = FIXTURES[name]
        data = photo_set(cache / spec.data_folder, **spec.data)
        checkpoint = cache / f"{name}.pt"
        print(f"{name}: training (cached after the first run)", flush=True)
        train_photo_resnet(data, checkpoint, spec.recipe)
        found.append(Fixture(name, spec.recipe.arch, checkpoint, spec.recipe.imgsz, data.calib_dir, data.val_dir,
                             list(data.labels)))
    return found


def _subset(source: Path, target: Path, per_class: int) -> None:
    """The first `per_class` images of each class, as a calibration folder (as the photo sets have)."""
    if target.is_dir():
        return
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for path in find_images(folder)[:per_class]:
            (target / folder.name / path.name).write_bytes(path.read_bytes())


def _load(folder: Path, labels: list[str], spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    paths = find_images(folder)
    return np.stack([spec(read_image(p)) for p in paths]), np.array([labels.index(p.parent.name) for p in paths])


def peers(fixture: Fixture, module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Each peer's logits on the val images, quantized with its own defaults from the calib images."""
    spec = Preprocess.imagenet(fixture.imgsz)
    calib, _ = _load(fixture.calib_dir, fixture.labels, spec)
    val, _ = _load(fixture.val_dir, fixture.labels, spec)
    return {"torch.ao FX PTQ": _fx(module, calib, val), "ORT quantize_static": _ort(module, calib, val, spec),
            "NNCF defaults": _nncf(module, calib, val, spec)}


def _fx(module, calib: np.ndarray, val: np.ndarray) -> np.ndarray:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping("x86"),
                          (torch.from_numpy(calib[:1]),))
    with torch.inference_mode():
        prepared(torch.from_numpy(calib))
        return convert_fx(prepared)(torch.from_numpy(val)).numpy()


def _ort(module, calib: np.ndarray, val: np.ndarray, spec: Preprocess) -> np.ndarray:
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeres.exporters.onnx_tools import export_fp32

    with tempfile.TemporaryDirectory() as scratch:
        fp32, prepared, int8 = (Path(scratch) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        export_fp32(module, spec.input_shape, fp32, opset=18, dynamic_batch=False)
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(int8), _reader(calib))
        options = ort.SessionOptions()
        # the Q/DQ graph as quantized, without x86's saturating fused kernels (see edgeres.runtime.onnxruntime)
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": item[None]})[0] for item in val])


def _reader(calib: np.ndarray):
    """ONNX Runtime's calibration reader over the calibration images, one at a time (batch 1 graphs)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"input": item[None]}

    return Reader()


def _nncf(module, calib: np.ndarray, val: np.ndarray, spec: Preprocess) -> np.ndarray:
    import nncf
    import openvino as ov

    model = ov.convert_model(copy.deepcopy(module).eval(), example_input=torch.zeros(spec.input_shape))
    quantized = nncf.quantize(model, nncf.Dataset([item[None] for item in calib]), subset_size=len(calib))
    compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: item[None]})[0] for item in val])


def spread(total: int, count: int) -> np.ndarray:
    """`count` indices evenly over `total` val images (they are sorted by class: the first ones are one class)."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def qnn_peer(fixture: Fixture, module: torch.nn.Module, chosen: np.ndarray) -> np.ndarray:
    """QNN's own recipe (ONNX Runtime's get_qnn_qdq_config defaults: uint8 activations and weights, per-tensor,
    min/max) compiled for the HTP like edgeres' qnn artifact; its logits on the `chosen` val images, run on
    QNN's HTP emulator."""
    from onnxruntime.quantization import quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    from edgeres.conversion.measure import artifact_logits
    from edgeres.exporters.onnx_tools import export_fp32
    from edgeres.targets.qnn import DEFAULT_SOC, compile_context

    spec = Preprocess.imagenet(fixture.imgsz)
    calib, _ = _load(fixture.calib_dir, fixture.labels, spec)

    with tempfile.TemporaryDirectory() as scratch:
        fp32, prepared, qdq, context = (Path(scratch) / n for n in ("fp32.onnx", "pre.onnx", "qdq.onnx", "ctx.onnx"))
        export_fp32(module, spec.input_shape, fp32, opset=18, dynamic_batch=False)
        source = prepared if qnn_preprocess_model(str(fp32), str(prepared)) else fp32
        quantize(str(source), str(qdq), get_qnn_qdq_config(str(source), _reader(calib)))
        compile_context(qdq, context, DEFAULT_SOC)
        crops = _crops(fixture, spec)
        return artifact_logits(context, spec, [crops[i] for i in chosen])


def rknn_peer(fixture: Fixture, module: torch.nn.Module, val: np.ndarray) -> np.ndarray:
    """rknn-toolkit2's own quantization (its build defaults: w8a8, 'normal' min/max, per-channel weights) of the
    FP32 ONNX from the calib images, for rk3588; its logits on the val images on the toolkit's simulator."""
    from edgeres.converter_envs.rknn import Simulator
    from edgeres.exporters.onnx_tools import export_fp32

    spec = Preprocess.imagenet(fixture.imgsz)
    calib, _ = _load(fixture.calib_dir, fixture.labels, spec)
    with tempfile.TemporaryDirectory() as scratch:
        fp32, dataset = Path(scratch) / "fp32.onnx", Path(scratch) / "dataset.txt"
        export_fp32(module, spec.input_shape, fp32, opset=18, dynamic_batch=False)
        inputs = []
        for index, tensor in enumerate(calib):  # one .npy per input, in the model's own NCHW (the toolkit says so)
            inputs.append(Path(scratch) / f"calib{index}.npy")
            np.save(inputs[-1], tensor[None])
        dataset.write_text("".join(f"{path}\n" for path in inputs))
        simulator = Simulator(fp32, "rk3588", log=print, dataset=dataset)
        try:
            return simulator.run(val)
        finally:
            simulator.close()


def imx500_peer(fixture: Fixture, module: torch.nn.Module, val_crops_of) -> np.ndarray:
    """MCT's own post-training quantization for the IMX500 (its defaults, TPC v1, mixed precision within the
    same weight budget as edgeres', which a ResNet18 needs to fit) of the user's model as it is (MCT folds its
    BatchNorms), from the calib images; its graph lowered to standard ops, on every val image."""
    from edgeres.conversion.measure import artifact_logits
    from edgeres.converter_envs import imx500
    from edgeres.targets.imx500 import Imx500Target, sized_budget, write_mct_job

    spec = Preprocess.imagenet(fixture.imgsz)
    sensor = Imx500Target().input_spec(spec)
    crops = [spec.resize_and_crop(read_image(p)) for p in find_images(fixture.calib_dir)]
    with tempfile.TemporaryDirectory() as scratch:
        work = write_mct_job(Path(scratch) / "mct", module, sensor, spec, crops, (), sized_budget(spec.crop),
                             Path(scratch) / "peer", refine_thresholds=False)
        imx500.quantize(work, print)
        return artifact_logits(Path(scratch) / "peer.lowered.onnx", sensor, val_crops_of(sensor))


def _stability(fixture: Fixture, model, spec: Preprocess, reference: np.ndarray) -> dict:
    """edgeres.conversion.measure.fp32_stability on the val images (FP32's `reference` logits on them): how
    often FP32 keeps its answer when every pixel moves by one grey level."""
    from edgeres.conversion.measure import EvalSet, fp32_stability

    return fp32_stability(EvalSet(_crops(fixture, spec), None, "validation",
                                  lambda chosen: model.logits(spec.tensors(chosen)), reference), seed=0)


def _crops(fixture: Fixture, spec: Preprocess) -> list[np.ndarray]:
    return [spec.resize_and_crop(read_image(p)) for p in find_images(fixture.val_dir)]


def emulated_rows(fixture: Fixture, artifact: Path, stand_in: Path | None, reference: np.ndarray, truth: np.ndarray,
                  chosen: np.ndarray, name: str) -> dict[str, dict]:
    """The artifact on its emulator and its stand-in (where the set has it) on the CPU, on the same `chosen`
    val images."""
    from edgeres.artifact import read_sidecar
    from edgeres.conversion.measure import artifact_logits

    spec = Preprocess.from_dict(read_sidecar(artifact).preprocess)  # not a Classifier: it would start the emulator
    crops = _crops(fixture, spec)
    crops = [crops[i] for i in chosen]
    rows = {}
    runs = ((f"{name} on the emulator", artifact), (f"{name} stand-in on the CPU", stand_in))
    for label, path in ((label, path) for label, path in runs if path is not None):
        logits = artifact_logits(path, spec, crops)
        rows[f"{label} ({len(crops)} of the val images)"] = _scored(logits, reference[chosen], truth[chosen])
    return rows


def _scored(logits: np.ndarray, reference: np.ndarray, truth: np.ndarray) -> dict:
    return {"drop_points": 100 * (accuracy(reference, truth) - accuracy(logits, truth)),
            "agreement": agreement(reference, logits), "images": len(logits)}


QAT_PEERS = ("NNCF QAT", "PT2E QAT (XNNPACK)")
QAT_BATCH, QAT_LR = 32, 1e-4


def qat_peers(fixture: Fixture, module: torch.nn.Module, minutes: float, steps: int) -> dict[str, np.ndarray]:
    """Quantization-aware training as each peer's documentation shows it: its quantizer, then the user's own
    loop (cross-entropy on the labelled calibration images, flipped, SGD), on the same data and budget as
    edgeres' fine-tuning; logits on the val images."""
    spec = Preprocess.imagenet(fixture.imgsz)
    calib, truth = _load(fixture.calib_dir, fixture.labels, spec)
    val, _ = _load(fixture.val_dir, fixture.labels, spec)
    return {"NNCF QAT": _nncf_qat(module, calib, truth, val, minutes, steps),
            "PT2E QAT (XNNPACK)": _pt2e_qat(module, calib, truth, val, minutes, steps)}


def _train(model, calib: np.ndarray, truth: np.ndarray, minutes: float, steps: int) -> None:
    """The user's loop of the peers' tutorials: SGD with momentum, cross-entropy on labelled images."""
    rng = np.random.default_rng(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=QAT_LR, momentum=0.9)
    start = time.perf_counter()
    for _ in range(steps):
        if time.perf_counter() - start > 60 * minutes:
            break
        chosen = rng.choice(len(calib), min(QAT_BATCH, len(calib)), replace=False)
        x = torch.from_numpy(calib[chosen])
        x = torch.where(torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None, None], x.flip(3), x)
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(truth[chosen]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _nncf_qat(module, calib: np.ndarray, truth: np.ndarray, val: np.ndarray, minutes: float, steps: int):
    import os

    # NNCF compiles its CPU fake-quantize extension on first use; its 60 s limit is too short on 2 loaded cores
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    import nncf

    model = nncf.quantize(copy.deepcopy(module).eval(), nncf.Dataset([torch.from_numpy(calib[i:i + 1])
                                                                         for i in range(len(calib))]),
                          subset_size=len(calib))
    model.train()
    _train(model, calib, truth, minutes, steps)
    model.eval()
    with torch.no_grad():  # NNCF's fake-quantized model: the INT8 model it exports
        return torch.cat([model(torch.from_numpy(val[i:i + 64])) for i in range(0, len(val), 64)]).numpy()


def _pt2e_qat(module, calib: np.ndarray, truth: np.ndarray, val: np.ndarray, minutes: float, steps: int):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    example = torch.from_numpy(calib[:QAT_BATCH])
    exported = torch.export.export(copy.deepcopy(module).train(), (example,)).module()
    prepared = prepare_qat_pt2e(exported, quantizer)
    move_exported_model_to_train(prepared)
    _train(prepared, calib, truth, minutes, steps)
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    rows = []
    with torch.no_grad():  # the exported program's batch is fixed: the last batch is padded, its padding dropped
        for i in range(0, len(val), QAT_BATCH):
            batch = val[i:i + QAT_BATCH]
            padded = np.concatenate([batch, np.repeat(batch[-1:], QAT_BATCH - len(batch), axis=0)])
            rows.append(converted(torch.from_numpy(padded)).numpy()[:len(batch)])
    return np.concatenate(rows)


def edgeres_target(fixture: Fixture, model, target: str, out: Path, finetune_minutes: float,
                   finetune_steps: int | None) -> tuple[dict[str, dict], Path]:
    """The target's row, and where the search fine-tuned, the calibration-only row it started from; the
    artifact."""
    from edgeres.conversion.pipeline import AccuracyBarError, ConvertOptions, convert
    from edgeres.quantization.search import Bar, preference

    options = ConvertOptions(target=target, precision="int8", out_dir=out, calib=fixture.calib_dir,
                             imgsz=fixture.imgsz, val=fixture.val_dir, report=False,
                             finetune_minutes=finetune_minutes, finetune_steps=finetune_steps)
    start = time.perf_counter()
    try:
        result = convert(model, options, log=lambda message: None)
    except AccuracyBarError as error:
        result = error.result
    seconds = time.perf_counter() - start
    search = result.search
    attempts = search["attempts"]
    calibrated = [a for a in attempts if not a["finetuned"]]
    rows = {f"edgeres {target}": _row(attempts[search["chosen"]], len(attempts), seconds)}
    if len(calibrated) < len(attempts):  # it fine-tuned: the best it had before, and the fine-tuned attempt
        bar = Bar(**search["bar"])
        before = max(calibrated, key=lambda a: preference(a["met"], len(a["kept_higher"]), a["agreement"],
                                                          a["drop_points"], bar))  # the search's own rule
        tuned = next(a for a in attempts if a["finetuned"])
        rows = {f"edgeres {target} (calibration only)": _row(before, len(calibrated), None),
                f"edgeres {target} (+ fine-tuning)": {**_row(tuned, len(attempts), seconds),
                                                       "finetune": search["finetune"]}}
    return rows, result.path


def _row(attempt: dict, count: int, seconds: float | None) -> dict:
    row = {"drop_points": attempt["drop_points"], "agreement": attempt["agreement"], "met": attempt["met"],
           "kept": attempt["kept_higher"], "attempts": count,
           "ranges": f"{attempt['range_method']}{' + bias corr.' if attempt['bias_correction'] else ''}"}
    if seconds is not None:
        row["seconds"] = seconds
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", nargs="+", default=[*FIXTURES, "resnet18-digits"],
                        choices=[*FIXTURES, "resnet18-digits"])
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), choices=TARGETS,
                        help="qnn adds its artifact and QNN's own recipe run on QNN's HTP emulator ("
                        "--emulated-images val images, spread over the classes: about a second each)")
    parser.add_argument("--emulated-images", type=_positive, default=EMULATED_IMAGES)
    parser.add_argument("--no-peers", action="store_true", help="Skip the peer tools.")
    parser.add_argument("--cache", type=Path, default=Path(".cache/benchmark_accuracy"))
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--finetune-minutes", type=float, default=10.0,
                        help="Time budget of edgeres' fine-tuning, where the search gets to it, and of each QAT "
                        "peer (default 10).")
    parser.add_argument("--finetune-steps", type=int, help="Step budget of the same (default: edgeres' own).")
    parser.add_argument("--qat-peers", action="store_true",
                        help="Also run NNCF's and PT2E's quantization-aware training on the same budget.")
    args = parser.parse_args(argv)
    from edgeres.models import load_model

    results = []
    for fixture in fixtures(args.fixtures, args.cache):
        model = load_model(fixture.checkpoint, fixture.arch, labels=fixture.labels)
        spec = Preprocess.imagenet(fixture.imgsz)
        val, truth = _load(fixture.val_dir, fixture.labels, spec)
        with torch.inference_mode():
            reference = model.module(torch.from_numpy(val)).numpy()
        fp32 = accuracy(reference, truth)
        row = {"fixture": fixture.name, "fp32_top1": fp32, "val_images": len(val), "methods": {}}
        print(f"{fixture.name}: FP32 top-1 {fp32:.2%} on {len(val)} held-out images", flush=True)
        row["fp32_stability"] = stability = _stability(fixture, model, spec, reference)
        print(f"{fixture.name}: FP32 keeps its own answer on {stability['agreement']:.2%} of "
              f"{stability['images']} of them when every pixel moves by one grey level", flush=True)
        found = {}
        if not args.no_peers:
            found.update(peers(fixture, model.module))
        if args.qat_peers:  # edgeres' budget: its steps (with --val it trains on every calibration image)
            from edgeres.quantization.finetune import planned_steps

            steps = args.finetune_steps or planned_steps(len(find_images(fixture.calib_dir)))
            found.update(qat_peers(fixture, model.module, args.finetune_minutes, steps))
        for name, logits in found.items():
            row["methods"][name] = {"drop_points": 100 * (fp32 - accuracy(logits, truth)),
                                    "agreement": agreement(reference, logits)}
            _print(name, row["methods"][name])
        chosen = spread(len(val), args.emulated_images)
        if "qnn" in args.targets and not args.no_peers:
            name = f"QNN defaults on the emulator ({len(chosen)} of the val images)"
            row["methods"][name] = _scored(qnn_peer(fixture, model.module, chosen), reference[chosen], truth[chosen])
            _print(name, row["methods"][name])
        if "rknn" in args.targets and not args.no_peers:
            name = "rknn-toolkit2 defaults on its simulator"
            row["methods"][name] = _scored(rknn_peer(fixture, model.module, val), reference, truth)
            _print(name, row["methods"][name])
        if "imx500" in args.targets and not args.no_peers:
            name = "MCT defaults (mixed precision in the same budget), lowered graph on the CPU"
            logits = imx500_peer(fixture, model.module, lambda spec: _crops(fixture, spec))
            row["methods"][name] = _scored(logits, reference, truth)
            _print(name, row["methods"][name])
        with tempfile.TemporaryDirectory() as out:
            for target in args.targets:
                measured_rows, artifact = edgeres_target(fixture, model, target, Path(out), args.finetune_minutes,
                                                         args.finetune_steps)
                if target == "qnn":
                    measured_rows.update(emulated_rows(fixture, artifact, artifact.with_name(f"{artifact.stem}.qdq.onnx"),
                                                       reference, truth, chosen, "edgeres qnn"))
                if target == "imx500":  # judged on the lowered graph; MCT's own simulation on fewer images
                    measured_rows.update(emulated_rows(fixture, artifact, None, reference, truth, chosen,
                                                       "edgeres imx500 (MCT's simulation)"))
                for name, measured in measured_rows.items():
                    row["methods"][name] = measured
                    _print(name, measured)
        results.append(row)
    print()
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a count of images, 1 or more, not {text!r}")
    return int(text)


def _print(name: str, m: dict) -> None:
    extra = ""
    if "attempts" in m:
        seconds = f", {m['seconds']:.0f} s" if "seconds" in m else ""
        tuned = f", {m['finetune']['steps']} steps in {m['finetune']['seconds']:.0f} s" if m.get("finetune") else ""
        extra = (f"  ({'bar met' if m['met'] else 'bar NOT met'}, {m['attempts']} attempts, "
                 f"{len(m['kept'])} kept out{tuned}{seconds})")
    print(f"  {name:24s} drop {m['drop_points']:+.2f} pt  agreement {m['agreement']:.2%}{extra}", flush=True)


def table(results: list[dict]) -> str:
    lines = ["| model (FP32 top-1) | method | top-1 drop (pt) | agreement | kept out of INT8 | time |",
             "|---|---|---:|---:|---|---:|"]
    for row in results:
        for name, m in row["methods"].items():
            kept = ", ".join(m["kept"]) if m.get("kept") else ("-" if "kept" in m else "")
            seconds = f"{m['seconds']:.0f} s" if "seconds" in m else ""
            lines.append(f"| {row['fixture']} ({row['fp32_top1']:.1%}) | {name} | {m['drop_points']:+.2f} | "
                         f"{m['agreement']:.2%} | {kept} | {seconds} |")
        if row.get("fp32_stability"):
            stability = row["fp32_stability"]
            lines.append(f"| {row['fixture']} ({row['fp32_top1']:.1%}) | FP32 itself, every pixel moved by one "
                         f"grey level ({stability['images']} images) | | {stability['agreement']:.2%} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
