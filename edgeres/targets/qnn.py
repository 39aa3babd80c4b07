"""Qualcomm Hexagon NPUs (Snapdragon phones and laptops, QCS boards): a QNN context model for one SoC.

The npu target's INT8 QDQ ONNX (a layer the search keeps gets uint16 activations here) is compiled by
QNN's own HTP backend, through ONNX Runtime's QNN execution provider, into an EP context
model: an ONNX file whose one node holds the context binary for the SoC, the file an app
ships. CPU fallback is disabled while compiling, so a node QNN cannot place on the NPU fails
the conversion with QNN's reason. On this PC the binary runs on the HTP emulator that
onnxruntime-qnn's x86-64 wheel carries (about a second per 32 px ResNet18 image), which is
too slow for every image of every attempt: the search judges attempts on the same QDQ graph
on ONNX Runtime's CPU (the stand-in), and the kept artifact is verified on the emulator,
which the record compares with the stand-in image by image.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import onnx

from ..errors import ConversionError
from ..exporters import onnx_tools
from ..quantization import onnx_backend
from .base import Built, BuiltArtifact, ConvertJob
from .npu import NpuTarget


@dataclass(frozen=True)
class Soc:
    name: str
    soc_model: str  # QNN's SoC model number
    htp_arch: str  # Hexagon HTP architecture version


# Without a device profile (--target qnn): the Snapdragon 8 Gen 2, a common HTP v73 phone SoC
DEFAULT_SOC = Soc("SM8550 (Snapdragon 8 Gen 2)", "43", "73")


class QnnTarget(NpuTarget):
    name: ClassVar[str] = "qnn"
    summary: ClassVar[str] = ("Qualcomm Hexagon NPU: INT8 QDQ compiled by QNN into a context model for one SoC "
                              "(profiles snapdragon-8-gen-1 ... snapdragon-8-elite)")
    # Learned from QNN on the hard ResNet18's plan (layer4.0.conv1 kept): with the npu target's int16 activations,
    # or 16-bit ones flowing into layers that are not kept, it leaves the per-channel weight DequantizeLinear
    # standalone and refuses the model ("QNN EP does not support a standalone DQ op with per-channel
    # quantization"); uint16 inside the kept layer, converted from and to int8 at its edges, compiles
    kept_as: ClassVar[str] = onnx_backend.UINT16
    higher_precision: ClassVar[str] = ("uint16 activations inside the layer (converted from and to int8 at its "
                                       "edges), int8 weights")
    emulated: ClassVar[bool] = True  # QNN's HTP emulator on a PC: the kept artifact is checked on the reference crops

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        built = super().build(job, plan, scratch)
        qdq = built.artifacts[0]
        stand_in = scratch / f"{job.stem}.qdq.onnx"
        qdq.path.replace(stand_in)
        context = scratch / f"{job.stem}.onnx"
        soc = soc_of(job)
        job.log(f"Compiling for the Hexagon NPU of {soc.name} with QNN (HTP v{soc.htp_arch}, every node on the NPU)")
        sdk = compile_context(stand_in, context, soc)
        model = onnx.load(str(context))
        inputs, outputs = onnx_tools.tensor_specs(model, self.layout)
        quantization = {**(qdq.quantization or {}), "compiled": {
            "tool": f"onnxruntime-qnn {_qnn_version()} (QNN SDK {sdk}), HTP backend, CPU fallback disabled",
            "soc": soc.name, "soc_model": soc.soc_model, "htp_arch": soc.htp_arch,
            "stand_in": f"{stand_in.name}: the QDQ graph it was compiled from, which the search judged on ONNX "
                        "Runtime's CPU"}}
        artifact = BuiltArtifact(context, (context,), "qnn-context", job.preprocess, inputs, outputs, quantization,
                                 qdq.checks)
        # the QDQ ships too: QNN compiles it for another SoC on the device, and AI Hub takes it
        companions = {**built.companions, stand_in.name: stand_in.read_bytes()}
        return Built([artifact], companions, stand_in=replace(qdq, path=stand_in, files=(stand_in,)))


def soc_of(job: ConvertJob) -> Soc:
    options = job.device.options if job.device else {}
    if "soc_model" not in options or "htp_arch" not in options:
        return DEFAULT_SOC
    return Soc(job.device.cpu.split(";")[0], str(options["soc_model"]), str(options["htp_arch"]))


def compile_context(qdq: Path, context: Path, soc: Soc) -> str:
    """QNN's context binary for `soc`, embedded in an EP context model at `context`; the QNN SDK version."""
    from ..runtime.qnn import htp_devices, htp_session

    htp_devices()  # a missing or broken onnxruntime-qnn says so itself, not as a compile failure
    context.unlink(missing_ok=True)  # QNN refuses to overwrite one
    entries = {"ep.context_enable": "1", "ep.context_embed_mode": "1", "ep.context_file_path": str(context)}
    with tempfile.TemporaryDirectory() as trace:
        # QNN's trace names each node it cannot place on the NPU and why; ONNX Runtime's error does not
        options = {"soc_model": soc.soc_model, "htp_arch": soc.htp_arch, "enable_framework_op_trace": "1",
                   "framework_op_trace_dir": trace}
        try:
            htp_session(qdq, options, entries)
        except Exception as error:  # QNN's reasons come as ONNX Runtime's untyped errors
            raise ConversionError(f"QNN could not compile the model for {soc.name} with every node on the NPU: "
                                  f"{_unplaced(Path(trace)) or str(error).strip()}") from None
    if not context.is_file():
        raise ConversionError(f"QNN compiled the model for {soc.name} but wrote no context model")
    node = onnx.load(str(context)).graph.node
    return next((a.s.decode() for n in node for a in n.attribute if a.name == "ep_sdk_version"), "unknown")


def _unplaced(trace: Path) -> str:
    """The nodes QNN's trace says it could not place on the NPU, with its reasons ('' where there is none)."""
    try:
        nodes = json.loads((trace / "qnn_op_trace.json").read_text()).get("unsupported_nodes", [])
    except (OSError, ValueError, AttributeError):
        return ""
    found = [f"{n.get('op_type')} node {n.get('node_name') or '#' + str(n.get('node_index'))}: {n.get('reason')}"
             for n in nodes if isinstance(n, dict)]
    return "; ".join(found[:5]) + (f" (and {len(found) - 5} more)" if len(found) > 5 else "")


def _qnn_version() -> str:
    from ..runtime.qnn import qnn_module

    return qnn_module().__version__
