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
import dataclasses
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..artifact import TensorSpec, sidecar_path, staged_files, write_sidecar
from ..conversion.common import INPUT_NAME, OUTPUT_NAME
from ..conversion.verify import compare_logits, enforce
from ..errors import BackendUnavailableError, ConversionError, TargetError
from ..logs import quiet
from ..preprocess import Preprocess
from .base import ConvertJob, ConvertResult, Tolerance, artifact_record

LITE_SUFFIX = "_lite"
LITE_DEPRECATION = ("PyTorch's lite interpreter (.ptl) is deprecated upstream; prefer the ExecuTorch .pte "
                    "for new apps, keep the .ptl for apps that already load TorchScript")


class MobileTarget:
    name: ClassVar[str] = "mobile"
    summary: ClassVar[str] = "Phones: ExecuTorch .pte with XNNPACK (recommended) and TorchScript Lite .ptl"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "int8")
    layout: ClassVar[str] = "NCHW"
    tolerance: ClassVar[Tolerance] = Tolerance()
    presets: ClassVar[tuple[str, ...]] = ()
    keeps_float: ClassVar[bool] = False

    def check_options(self, precision: str, *, dynamic_batch: bool, opset: int) -> None:
        if dynamic_batch:
            raise TargetError("mobile artifacts take a batch of 1 (a camera frame): drop --dynamic-batch")

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        return model_spec

    def convert(self, job: ConvertJob) -> ConvertResult:
        job.log(LITE_DEPRECATION)
        module = job.module.eval()
        example = torch.from_numpy(job.preprocess.tensors(job.reference_crops[:1]))
        calibration = job.preprocess.tensors(job.calibration.crops) if job.calibration else None
        inputs = job.preprocess.tensors(job.reference_crops)
        pte, pte_quantization, pte_checks = executorch_program(module, example, calibration, job)
        ptl, ptl_quantization, optimized = lite_module(module, example, calibration, job)
        with tempfile.TemporaryDirectory(prefix="edgeres-") as scratch:
            (Path(scratch) / "m.pte").write_bytes(pte)
            pte_logits = run_pte(Path(scratch) / "m.pte", inputs)
            (Path(scratch) / "m.ptl").write_bytes(ptl)
            ptl_logits = run_ptl(Path(scratch) / "m.ptl", inputs)
        final, lite = job.out_dir / f"{job.stem}.pte", job.out_dir / f"{job.stem}{LITE_SUFFIX}.ptl"
        records = []
        for path, logits, quantization, checks, golden_file in (
            (final, pte_logits, pte_quantization, pte_checks, None),
            (lite, ptl_logits, ptl_quantization, [optimized], f"{job.stem}{LITE_SUFFIX}.golden.npz"),
        ):
            verification = compare_logits(job.reference_logits, logits, job.reference_source)
            enforce(verification, job.precision, job.tolerance(self.tolerance), path.name)
            record = artifact_record(job, target=self.name, format=path.suffix[1:], inputs=_inputs(job),
                                     outputs=[TensorSpec(OUTPUT_NAME, [1, len(job.labels)], "float32")],
                                     calibration_method="minmax", quantization=quantization,
                                     verification=verification, checks=checks)
            if golden_file and record.golden:
                record = dataclasses.replace(record, golden={**record.golden, "file": golden_file})
            records.append(record)
        with staged_files(job.out_dir) as stage:
            (stage / final.name).write_bytes(pte)
            (stage / lite.name).write_bytes(ptl)
            write_sidecar(stage / lite.name, records[1])
            write_sidecar(stage / final.name, records[0])
        files = (final, lite, sidecar_path(lite), sidecar_path(final))
        return ConvertResult(final, records[0], files, companions=(lite,))


def _inputs(job: ConvertJob) -> list[TensorSpec]:
    return [TensorSpec(INPUT_NAME, list(job.preprocess.input_shape), "float32", "NCHW")]


def executorch_program(module, example: torch.Tensor, calibration: np.ndarray | None,
                       job: ConvertJob) -> tuple[bytes, dict | None, list[dict]]:
    """The .pte bytes: torch.export, PT2E INT8 if asked, lowered to the XNNPACK delegate."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise BackendUnavailableError("the mobile target needs ExecuTorch: pip install 'edgeres[convert]' "
                                      "(executorch 1.5.1 with torch 2.14.1)") from None
    job.log("Exporting to ExecuTorch with the XNNPACK delegate")
    quantization = None
    with quiet():
        program = torch.export.export(module, (example,))
        if job.precision == "int8":
            program, quantization = _pt2e_int8(module, example, calibration)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
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


def _pt2e_int8(module, example: torch.Tensor, calibration: np.ndarray) -> tuple[object, dict]:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(copy.deepcopy(module), (example,)).module(), quantizer)
    with torch.no_grad():
        for sample in calibration:  # the exported graph has batch 1
            prepared(torch.from_numpy(sample[None]))
    converted = convert_pt2e(prepared)
    quantization = {"kind": "static", "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor",
                    "tool": "PT2E (torchao prepare_pt2e/convert_pt2e) with XNNPACKQuantizer"}
    return torch.export.export(converted, (example,)), quantization


def lite_module(module, example: torch.Tensor, calibration: np.ndarray | None,
                job: ConvertJob) -> tuple[bytes, dict | None, dict]:
    """The .ptl bytes (FX INT8 for QNNPACK if asked), and whether optimize_for_mobile ran."""
    job.log("Saving a TorchScript Lite (.ptl) for the lite interpreter")
    quantization = None
    with quiet():
        if job.precision == "int8":
            module, quantization = _fx_int8(module, example, calibration)
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


def _fx_int8(module, example: torch.Tensor, calibration: np.ndarray) -> tuple[object, dict]:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "qnnpack"  # the int8 engine of phones' PyTorch builds
    prepared = prepare_fx(copy.deepcopy(module), get_default_qconfig_mapping("qnnpack"), (example,))
    with torch.no_grad():
        for start in range(0, len(calibration), 32):
            prepared(torch.from_numpy(calibration[start : start + 32]))
    quantization = {"kind": "static", "weights": "int8 per-tensor (qnnpack)", "activations": "uint8 per-tensor",
                    "tool": "torch.ao FX prepare_fx/convert_fx, qnnpack (deprecated upstream)"}
    return convert_fx(prepared), quantization


def run_pte(path: Path, inputs: np.ndarray) -> np.ndarray:
    from ..runtime.executorch import ExecuTorchBackend

    return ExecuTorchBackend(path, None).run(inputs)


def run_ptl(path: Path, inputs: np.ndarray) -> np.ndarray:
    from ..runtime.torchscript import LiteInterpreterBackend

    return LiteInterpreterBackend(path, None).run(inputs)
