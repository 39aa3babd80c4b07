"""Phones: an ExecuTorch .pte (the recommended artifact) and a TorchScript Lite .ptl (for existing apps).

ExecuTorch: torch.export, PT2E INT8 with the XNNPACK quantizer (per-channel int8 weights),
lowered to the XNNPACK delegate; every op is checked to run inside it. TorchScript Lite:
PyTorch's lite interpreter, deprecated upstream in favour of ExecuTorch but loaded by many
shipped Android/iOS apps; INT8 with FX quantization for QNNPACK, the phones' int8 engine.
`optimize_for_mobile` runs where the torch build has XNNPACK; the record says whether it did.
Both take the model's NCHW float input (the app normalises as the record's preprocess says).
"""

from __future__ import annotations

import copy
import tempfile
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..artifact import (LITE_RECORD_FILE, PTE_RECORD_METHOD, ArtifactRecord, TensorSpec, compact_json,
                        pte_record_placeholder)
from ..exporters.common import INPUT_NAME, OUTPUT_NAME
from ..errors import BackendUnavailableError, ConversionError, install_hint
from ..logs import quiet
from ..preprocess import Preprocess
from ..quantization import executorch_backend
from ..quantization.simulate import ALL_PLACEMENTS
from .base import Built, BuiltArtifact, ConvertJob, TargetBase

LITE_SUFFIX = "_lite"
LITE_DEPRECATION = ("PyTorch's lite interpreter (.ptl) is deprecated upstream; prefer the ExecuTorch .pte "
                    "for new apps, keep the .ptl for apps that already load TorchScript")


class MobileTarget(TargetBase):
    name: ClassVar[str] = "mobile"
    summary: ClassVar[str] = "Phones: ExecuTorch .pte with XNNPACK (recommended) and TorchScript Lite .ptl"
    layout: ClassVar[str] = "NCHW"
    placement: ClassVar[frozenset[str]] = ALL_PLACEMENTS
    higher_precision: ClassVar[str] = "float XNNPACK ops (.pte), float modules (.ptl)"

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        return model_spec

    def activation_grid(self, job: ConvertJob) -> str:
        return "asymmetric"  # XNNPACK's int8 activations have a zero point

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        scratch.mkdir(parents=True, exist_ok=True)
        job.log(LITE_DEPRECATION)
        module = (plan.module if plan else job.module).eval()
        example = torch.zeros(job.preprocess.input_shape)
        calibration = job.preprocess.tensors(job.calibration.crops) if plan else None
        pte, pte_quantization, pte_checks = executorch_program(module, example, plan, job)
        ptl, ptl_quantization, optimized = lite_module(module, example, calibration, plan, job)
        final, lite = scratch / f"{job.stem}.pte", scratch / f"{job.stem}{LITE_SUFFIX}.ptl"
        final.write_bytes(pte)
        lite.write_bytes(ptl)
        inputs = [TensorSpec(INPUT_NAME, list(job.preprocess.input_shape), "float32", "NCHW")]
        outputs = [TensorSpec(OUTPUT_NAME, [1, len(job.labels)], "float32")]
        return Built([
            BuiltArtifact(final, (final,), "pte", job.preprocess, inputs, outputs, pte_quantization, pte_checks),
            BuiltArtifact(lite, (lite,), "ptl", job.preprocess, inputs, outputs, ptl_quantization, [optimized]),
        ])

    def embed_record(self, artifact: BuiltArtifact, record: ArtifactRecord) -> None:
        """.pte: the record fills the constant method reserved at export (same size, so the program is
        unchanged otherwise); .ptl: an extra file, as PyTorch Mobile's loaders read them."""
        if artifact.format == "pte":
            fill_record(artifact.path, compact_json(record), pte_record_placeholder(record.labels))
        else:
            with zipfile.ZipFile(artifact.path) as archive:
                root = archive.namelist()[0].split("/")[0]
            with zipfile.ZipFile(artifact.path, "a", compression=zipfile.ZIP_STORED) as archive:
                archive.writestr(f"{root}/extra/{LITE_RECORD_FILE}", record.to_json())


def fill_record(pte: Path, text: str, placeholder: str) -> None:
    """Write `text` over the .pte's record placeholder, padded with spaces (still valid JSON)."""
    data, reserved = bytearray(pte.read_bytes()), placeholder.encode()
    start = data.find(reserved)
    encoded = text.encode()
    if start < 0 or data.find(reserved, start + 1) >= 0:
        raise ConversionError(f"{pte.name} has no single record placeholder; it was not exported by this edgeres")
    if len(encoded) > len(reserved):
        raise ConversionError(f"the record ({len(encoded)} bytes) is larger than the {len(reserved)} bytes "
                              f"reserved in {pte.name}")
    data[start:start + len(reserved)] = encoded.ljust(len(reserved))
    pte.write_bytes(bytes(data))


def executorch_program(module, example: torch.Tensor, plan, job: ConvertJob) -> tuple[bytes, dict | None, list[dict]]:
    """The .pte bytes: torch.export, PT2E INT8 by the plan if asked, lowered to the XNNPACK delegate."""
    try:
        with quiet():  # its first import logs torch deprecations and native cpuinfo probes
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.devtools.backend_debug import get_delegation_info
            from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise BackendUnavailableError(f"the mobile target needs ExecuTorch: {install_hint('convert')} "
                                      "(executorch 1.5.1 with torch 2.14.1)") from None
    job.log("Exporting to ExecuTorch with the XNNPACK delegate")
    quantization = None
    with quiet():
        program = torch.export.export(module, (example,))
        if plan is not None:
            program, quantization = executorch_backend.pt2e_int8(plan, example)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods={PTE_RECORD_METHOD: pte_record_placeholder(job.labels)})
        info = get_delegation_info(edge.exported_program().graph_module)
        buffer = edge.to_executorch().buffer
    outside = {row["op_type"]: row["occurrences_in_non_delegated_graphs"]
               for row in info.get_operator_delegation_dataframe().to_dict("records")
               if row["op_type"] not in ("Total", "getitem") and row["occurrences_in_non_delegated_graphs"]}
    check = {"rule": "every op inside the XNNPACK delegate", "passed": not outside,
             "detail": f"{info.num_delegated_nodes} nodes delegated" if not outside else f"outside: {outside}"}
    if outside:
        raise ConversionError(f"ops outside the XNNPACK delegate would run on ExecuTorch's slow portable kernels: {outside}")
    return buffer, quantization, [check]


def lite_module(module, example: torch.Tensor, calibration: np.ndarray | None, plan,
                job: ConvertJob) -> tuple[bytes, dict | None, dict]:
    """The .ptl bytes (FX INT8 for QNNPACK if asked), and whether optimize_for_mobile ran."""
    job.log("Saving a TorchScript Lite (.ptl) for the lite interpreter")
    quantization = None
    with quiet():
        if plan is not None:
            module, quantization = _fx_int8(module, example, calibration, plan.higher)
        scripted = torch.jit.trace(module, example)
        try:
            from torch.utils.mobile_optimizer import optimize_for_mobile

            scripted = optimize_for_mobile(scripted)
            optimized = {"rule": "optimize_for_mobile ran", "passed": True, "detail": "yes"}
        except RuntimeError as error:  # this build lacks XNNPACK ("Mobile optimization only available with XNNPACK")
            reason = "XNNPACK is not enabled in this torch build" if "XNNPACK" in str(error) else str(error)[:120]
            optimized = {"rule": "optimize_for_mobile ran", "passed": False, "detail": f"no: {reason}"}
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "m.ptl"
            scripted._save_for_lite_interpreter(str(path))
            return path.read_bytes(), quantization, optimized


def _fx_int8(module, example: torch.Tensor, calibration: np.ndarray, kept: tuple[str, ...]) -> tuple[object, dict]:
    """The plan's corrected model through FX for QNNPACK, with its own observers; kept layers stay float."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "qnnpack"  # the int8 engine of phones' PyTorch builds
    mapping = get_default_qconfig_mapping("qnnpack")
    for name in kept:
        mapping = mapping.set_module_name(name, None)
    prepared = prepare_fx(copy.deepcopy(module), mapping, (example,))
    with torch.no_grad():
        for start in range(0, len(calibration), 32):
            prepared(torch.from_numpy(calibration[start : start + 32]))
    quantization = {"kind": "static", "weights": "int8 per-tensor (qnnpack)", "activations": "uint8 per-tensor",
                    "tool": "torch.ao FX prepare_fx/convert_fx, qnnpack (deprecated upstream); the plan's corrected "
                            "model and kept layers, FX's own observers"}
    return convert_fx(prepared), quantization
