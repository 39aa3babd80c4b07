"""The Sony IMX500 step, run inside its own environment (edgeres.converter_envs.imx500): imports only what
that environment has (torch, Sony's model-compression-toolkit and imx500-converter, numpy), never edgeres.

    imx500_tool.py quantize WORK       quantize WORK/module.pt by MCT's IMX500 rules on WORK/calib.npy as
                                       WORK/job.json says (and refine its activation thresholds where it
                                       says so), export the quantized graph (MCTQ ONNX), and lower it to
                                       standard ONNX ops (job["lowered"])
    imx500_tool.py convert SRC OUTDIR  compile SRC (an MCTQ ONNX) with imxconv-pt; its memory report
    imx500_tool.py serve SRC           run SRC with MCT's own quantizer ops on ONNX Runtime: float32
                                       batches (N, C, H, W) in, outputs (N, classes) out

It talks to edgeres as every vendor step does (tool_io.py, beside it): JSON lines, float32 batches.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
from typing import NamedTuple

_spec = importlib.util.spec_from_file_location("tool_io", os.path.join(os.path.dirname(__file__), "tool_io.py"))
tool_io = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool_io)  # before the toolkits are imported: they take over stdout

CALIBRATION_BATCH = 16
REFINE_VIEWS = 640  # calibration views the threshold refinement scores (flips and shifts of the images)
REFINE_PIXELS = 2 ** 22  # at most this many input pixels in all: 83 views at 224 px, 640 at 32 px


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _graph_name(layer: str) -> str:
    """MCT names a layer by torch.fx's node name, inside InputNormalised's `model`: dots become underscores
    (ResNet names have none of their own)."""
    return "model_" + layer.replace(".", "_")


def quantize(work: str) -> None:
    import functools

    import numpy as np
    import torch

    # MCT's exporter calls torch.onnx.export the TorchScript way, which torch 2.9+ no longer defaults to
    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
    import model_compression_toolkit as mct
    from model_compression_toolkit.core.common.network_editors import NodeNameFilter

    with open(os.path.join(work, "job.json")) as handle:
        job = json.load(handle)
    module = _with_input_normalisation(torch.load(os.path.join(work, "module.pt"), weights_only=False).eval(),
                                       job["input_gain"], job["input_bias"])
    # the FP32 model the thresholds are refined towards: a fine-tuned module.pt was trained to be quantized, so
    # it is not the one the bar compares with
    reference_path = os.path.join(work, "reference.pt")
    reference = (_with_input_normalisation(torch.load(reference_path, weights_only=False).eval(), job["input_gain"],
                                           job["input_bias"]) if os.path.isfile(reference_path) else None)
    calibration = np.load(os.path.join(work, "calib.npy"))
    torch.manual_seed(0)

    def representative():
        for start in range(0, len(calibration), CALIBRATION_BATCH):
            yield [torch.from_numpy(calibration[start:start + CALIBRATION_BATCH])]

    tpc = mct.get_target_platform_capabilities("pytorch", "imx500", target_platform_version="v1")
    kernels = {name.removeprefix("model."): m.weight.numel() for name, m in module.named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    budget = job.get("weights_budget")
    mixed = budget is not None and sum(kernels.values()) > budget  # 8-bit weights would not fit the chip
    error_method = job.get("activation_error_method") or mct.core.QuantizationConfig().activation_error_method.name
    core = {"quantization_config": mct.core.QuantizationConfig(
        activation_error_method=getattr(mct.core.QuantizationErrorMethod, error_method))}
    config = {"core_config": mct.core.CoreConfig(**core)}
    if mixed:
        bit_widths = mct.core.BitWidthConfig()
        for layer in job.get("kept", []):  # the search keeps a layer: its weights stay 8-bit
            bit_widths.set_manual_weights_bit_width(NodeNameFilter(_graph_name(layer)), 8, "weight")
        config = {"target_resource_utilization": mct.core.ResourceUtilization(weights_memory=float(budget)),
                  "core_config": mct.core.CoreConfig(
                      **core, mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig(
                          num_of_images=int(job.get("mixed_precision_images", 32))),
                      bit_width_config=bit_widths)}
    tool_io.progress(f"quantizing {sum(kernels.values()) / 1e6:.1f} M weights on {len(calibration)} images"
                     + (f", mixed precision within {budget / 2 ** 20:.2f} MiB of weights (minutes)" if mixed else ""))
    quantized, _ = mct.ptq.pytorch_post_training_quantization(module, representative,
                                                               target_platform_capabilities=tpc, **config)
    refined = refine_thresholds(quantized, reference or module, calibration) if job.get("refine_thresholds") else None
    tool_io.progress("exporting the quantized graph (MCTQ ONNX)")
    mct.exporter.pytorch_export_model(quantized, save_model_path=job["out"], repr_dataset=representative,
                                      onnx_opset_version=int(job.get("opset", 15)))
    lower(job["out"], job["lowered"])
    bits = _weight_bits(quantized)
    tool_io.say({"mct": _version("model-compression-toolkit"), "mixed_precision": mixed, "thresholds": refined,
                 "activation_error_method": error_method,
                 "weight_bits": bits, "weight_bytes": int(sum(kernels[n] * bits.get(n, 8) for n in kernels) / 8),
                 "weights": int(sum(kernels.values()))})


class Score(NamedTuple):
    wrong: int  # views answered otherwise than by the float network
    kl: float  # how far the scores are from the float network's (breaks ties)


def refine_thresholds(quantized, reference, calibration) -> dict:
    """Each activation threshold MCT chose, halved or doubled (still a power of two, as the sensor requires)
    wherever that makes the quantized network answer fewer calibration views otherwise than `reference` (the
    FP32 model), or as few with scores closer to it (KL), in one pass from input to output. MCT judges each
    threshold by its own tensor's error; this judges it by the network's answers, which the accuracy bar
    compares. The sensor's input (pixels / 256) is left as it is. Top-1 and KL are computed here again: this
    script cannot import edgeres."""
    import torch
    from mct_quantizers import PytorchActivationQuantizationHolder, PytorchPreservingActivationQuantizationHolder
    from mct_quantizers.pytorch.quantizers import ActivationPOTInferableQuantizer

    quantized.eval()
    # MCT moves what it quantizes to its working device (a GPU where one is): the views and the reference follow
    device = next(quantized.parameters()).device
    reference = reference.to(device)
    views = _views(calibration).to(device)
    with torch.no_grad():
        answers = torch.cat([reference(views[i:i + 64]) for i in range(0, len(views), 64)])
    holders = [(name, holder) for name, holder in quantized.named_modules()
               if isinstance(holder, PytorchActivationQuantizationHolder)
               and not isinstance(holder, PytorchPreservingActivationQuantizationHolder)  # copies of another's
               and isinstance(holder.activation_holder_quantizer, ActivationPOTInferableQuantizer)]
    sensor_input = _input_holder(quantized, [holder for _, holder in holders], views[:1])
    best = before = _score(quantized, views, answers)
    changed = {}
    for done, (name, holder) in enumerate(holders):
        if holder is sensor_input:
            continue
        mct_quantizer = candidate = holder.activation_holder_quantizer
        for factor in (0.5, 2.0):
            holder.activation_holder_quantizer = ActivationPOTInferableQuantizer(
                num_bits=mct_quantizer.num_bits, threshold=[float(mct_quantizer.threshold_np) * factor],
                signed=mct_quantizer.signed)
            score = _score(quantized, views, answers)
            if score < best:
                best, candidate = score, holder.activation_holder_quantizer
        holder.activation_holder_quantizer = candidate
        if candidate is not mct_quantizer:
            changed[name.removesuffix("_activation_holder_quantizer")] = {
                "mct": float(mct_quantizer.threshold_np), "refined": float(candidate.threshold_np)}
        if (done + 1) % max(1, len(holders) // 4) == 0 or done + 1 == len(holders):
            tool_io.progress(f"refining activation thresholds: {done + 1}/{len(holders)}, agreement with the float "
                             f"model on {len(views)} calibration views {1 - best.wrong / len(views):.2%}")
    return {"calibration_views": len(views), "thresholds_considered": len(holders) - 1, "changed": changed,
            "calibration_view_agreement_mct": round(1 - before.wrong / len(views), 5),
            "calibration_view_agreement_refined": round(1 - best.wrong / len(views), 5)}


def _views(calibration):
    """Views of the calibration images (each as it is, flipped, shifted an eighth of the side up-left or
    down-right): more answers to judge a threshold by than the images alone; at most REFINE_VIEWS of them
    and REFINE_PIXELS pixels, drawn before any is made."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    count, _, height, width = calibration.shape
    most = max(CALIBRATION_BATCH, min(REFINE_VIEWS, REFINE_PIXELS // (height * width)))
    drawn = np.random.default_rng(0).permutation(4 * count)[:most]
    pad = max(1, width // 8)
    views = []
    for index in drawn:
        image = torch.from_numpy(calibration[index % count])
        kind = index // count
        if kind == 1:
            image = image.flip(2)
        elif kind > 1:
            padded = F.pad(image[None], (pad,) * 4, mode="reflect")[0]
            offset = 0 if kind == 2 else 2 * pad
            image = padded[:, offset:offset + height, offset:offset + width]
        views.append(image)
    return torch.stack(views)


def _score(quantized, views, reference) -> Score:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = torch.cat([quantized(views[i:i + 64]) for i in range(0, len(views), 64)])
    wrong = int((logits.argmax(1) != reference.argmax(1)).sum())
    return Score(wrong, float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True,
                                       reduction="batchmean")))


def _input_holder(quantized, holders, example):
    """The holder that quantizes the network's input itself: on the sensor that is its pixels, fixed. Not found
    (an MCT that copies its input), the refinement stops rather than change what the sensor gives."""
    import torch

    found = []
    hooks = [holder.register_forward_pre_hook(lambda module, args: found.append(module) if args[0] is example
                                              else None) for holder in holders]
    try:
        with torch.no_grad():
            quantized(example)
    finally:
        for hook in hooks:
            hook.remove()
    if len(found) != 1:
        raise RuntimeError(f"found {len(found)} quantizers of the network's input where one was expected: the "
                           "activation thresholds cannot be refined without changing the sensor's input")
    return found[0]


def _with_input_normalisation(module, gain: list[float], bias: list[float]):
    """`module` taking the sensor's input (x * gain + bias per channel is what it was trained on): the IMX500
    has no normalisation step of its own, so it is the graph's first op, which MCT quantizes like any other."""
    import torch

    class InputNormalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.register_buffer("bias", torch.tensor(bias, dtype=torch.float32).reshape(1, -1, 1, 1))
            self.model = module

        def forward(self, x):
            return self.model(x * self.gain + self.bias)

    return InputNormalised().eval()


def _weight_bits(quantized) -> dict[str, int]:
    """Each layer's kernel bit width as MCT chose it, by the module's own layer names."""
    from mct_quantizers import PytorchQuantizationWrapper

    bits = {}
    for name, wrapper in quantized.named_modules():
        if isinstance(wrapper, PytorchQuantizationWrapper) and "weight" in wrapper.weights_quantizers:
            bits[name.removeprefix("model_").replace("_", ".")] = int(wrapper.weights_quantizers["weight"].num_bits)
    return bits


def lower(source: str, out: str) -> None:
    """The MCTQ graph at `source` in standard ONNX ops, which any ONNX Runtime runs at its full speed (MCT's own
    quantizer ops are Python callbacks, seconds per image): each weight quantizer's output, computed once by
    MCT's own op, becomes a constant; each power-of-two activation quantizer becomes MCT's own arithmetic in
    float ops, round(clip(x, low, high) / scale) * scale. Not QuantizeLinear/DequantizeLinear: ONNX Runtime
    fuses those with the ops between them into integer kernels that round otherwise (measured: 17.5% of
    images gave MCT's logits exactly that way)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(source)
    graph = model.graph
    weights = _quantized_weights(model)
    nodes = []
    for node in graph.node:
        if node.domain != "mct_quantizers":
            nodes.append(node)
        elif node.op_type.startswith("Weights"):
            graph.initializer.append(numpy_helper.from_array(weights[node.output[0]], node.output[0]))
        elif node.op_type == "ActivationPOTQuantizer":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            signed, bits = bool(attrs["signed"]), int(attrs["num_bits"])
            scale = attrs["threshold"] / 2 ** (bits - signed)
            low, high = (-attrs["threshold"] if signed else 0.0), attrs["threshold"] - scale
            names = [f"{node.output[0]}_{suffix}" for suffix in ("low", "high", "scale", "clipped", "steps",
                                                                    "rounded")]
            graph.initializer.extend(numpy_helper.from_array(np.array(value, np.float32), name)
                                     for value, name in zip((low, high, scale), names))
            nodes += [helper.make_node("Clip", [node.input[0], names[0], names[1]], [names[3]]),
                      helper.make_node("Div", [names[3], names[2]], [names[4]]),
                      helper.make_node("Round", [names[4]], [names[5]]),
                      helper.make_node("Mul", [names[5], names[2]], [node.output[0]])]
        else:
            raise RuntimeError(f"MCT's {node.op_type} is not lowered here")
    used = {name for node in nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    standard = [op for op in model.opset_import if op.domain != "mct_quantizers"]
    del model.opset_import[:]
    model.opset_import.extend(standard)
    onnx.checker.check_model(model)
    onnx.save(model, out)


def _quantized_weights(model) -> dict:
    """Every weight quantizer's output, as MCT's own op computes it (its ONNX Runtime custom op)."""
    import onnx
    import onnxruntime as ort
    from mct_quantizers import get_ort_session_options

    graph = model.graph
    quantizers = [n for n in graph.node if n.domain == "mct_quantizers" and n.op_type.startswith("Weights")]
    needed = {name for n in quantizers for name in n.input}
    constants = [n for n in graph.node if n.op_type == "Constant" and n.output[0] in needed]
    outputs = [onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None) for n in quantizers]
    weights_only = onnx.helper.make_graph([*constants, *quantizers], "weights", [], outputs,
                                          [i for i in graph.initializer if i.name in needed])
    sub = onnx.helper.make_model(weights_only, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    session = ort.InferenceSession(sub.SerializeToString(), get_ort_session_options(),
                                   providers=["CPUExecutionProvider"])
    return dict(zip([n.output[0] for n in quantizers], session.run(None, {})))


def convert(source: str, out: str) -> None:
    import shutil

    if shutil.which("java") is None:  # its compiler (sdspconv) is a Java program
        raise RuntimeError("imxconv-pt needs Java 17 or newer on PATH (Debian, Ubuntu: apt install "
                           "openjdk-17-jre-headless)")
    tool_io.progress(f"imxconv-pt {_version('imx500-converter')} compiling (minutes)")
    # its console script, not bin/imxconv-pt: the environment was renamed into place after it was built, and a
    # script's first line still names the folder it was installed in
    converter = [sys.executable, "-c", "import sys; from imx500_converter.main_pt import main; "
                 "sys.argv[0] = 'imxconv-pt'; sys.exit(main())"]
    done = subprocess.run([*converter, "-i", source, "-o", out, "--overwrite-output"], capture_output=True,
                          text=True)
    sys.stderr.write(done.stdout + done.stderr)  # its log, which the caller keeps for the reason of a failure
    reports = sorted(glob.glob(os.path.join(out, "*MemoryReport*.json")))
    report = None
    if reports:
        with open(reports[0]) as handle:
            report = json.load(handle)
    # a network too large writes no report, only this line: "Not enough memory, available: 8.00MB , required: 8.87MB"
    short = re.search(r"Not enough memory, available: *([0-9.]+[KMG]?B) *, *required: *([0-9.]+[KMG]?B)",
                      done.stdout + done.stderr)
    packed = os.path.join(out, "packerOut.zip")
    if done.returncode != 0 and report is None and short is None:
        said = [line for line in (done.stdout + done.stderr).strip().splitlines() if line.strip()][-3:]
        raise RuntimeError(f"imxconv-pt stopped with status {done.returncode}: {' | '.join(said)[-600:]}")
    tool_io.say({"converter": _version("imx500-converter"), "status": done.returncode, "report": report,
                 "not_enough": list(short.groups()) if short else None,
                 "packed": packed if os.path.isfile(packed) else None})


def serve(source: str) -> None:
    import numpy as np
    import onnxruntime as ort
    from mct_quantizers import get_ort_session_options

    session = ort.InferenceSession(source, get_ort_session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    tool_io.say({"ready": True, "mct_quantizers": _version("mct-quantizers"), "onnxruntime": ort.__version__})
    for batch in tool_io.batches():
        rows = [session.run(None, {name: batch[i:i + 1]})[0] for i in range(len(batch))]
        tool_io.send(np.concatenate(rows).astype(np.float32).reshape(len(batch), -1))


if __name__ == "__main__":
    sys.exit(tool_io.main({"quantize": quantize, "convert": convert, "serve": serve}, sys.argv[1:]))
