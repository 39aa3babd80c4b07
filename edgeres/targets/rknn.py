"""Rockchip NPUs (RK3588, RK3576, RK3566/RK3568 boards): a .rknn compiled by rknn-toolkit2 for one platform.

The INT8 QDQ ONNX of the one quantization design (QDQ around every op; a layer the search
keeps stays in float, which the RKNPU runs in float16) is compiled by Rockchip's
rknn-toolkit2 as it is, its scales kept (no quantization of the toolkit's own). The toolkit
pins numpy, onnx and torch older than this project's, so it runs in its own environment,
which edgeres builds once (edgeres.converter_envs). The QDQ ships beside the .rknn: the
toolkit's PC simulator cannot load a .rknn, so on a PC the artifact runs as the simulator's
build of that same QDQ, with the same toolkit and platform; on the board
rknn-toolkit-lite2 runs the .rknn itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx

from ..artifact import sha256_of
from ..errors import ConversionError
from ..quantization import onnx_backend
from .base import Built, BuiltArtifact, ConvertJob
from .npu import NPU_RULES, NpuTarget, apply_rules

DEFAULT_PLATFORM = "rk3588"  # without a device profile (--target rknn): the most common RKNPU board SoC
PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562")  # RKNPU2 SoCs of boards rknn-toolkit-lite2 runs on


class RknnTarget(NpuTarget):
    name: ClassVar[str] = "rknn"
    summary: ClassVar[str] = ("Rockchip NPU: INT8 QDQ compiled by rknn-toolkit2 into a .rknn for one platform "
                              "(profiles rk3588, rk3568, rk3566)")
    # the toolkit takes a QDQ graph with some layers left in float and runs those in float16 on the NPU
    kept_as: ClassVar[str] = onnx_backend.FLOAT
    higher_precision: ClassVar[str] = "float16 on the NPU (the layer left without Q/DQ)"

    def check_graph(self, model: onnx.ModelProto, job: ConvertJob, plan) -> list[dict]:
        kept = frozenset(plan.higher) if plan else frozenset()
        return apply_rules(NPU_RULES, model, job, "NPU rules", "NPU rule", kept=kept)

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        from ..converter_envs.rknn import compile_rknn

        if job.opset > 19:
            raise ConversionError(f"rknn-toolkit2 reads ONNX opset 19 at most, not {job.opset}: use --opset 18")
        built = super().build(job, plan, scratch)
        qdq = built.artifacts[0]
        source = scratch / f"{job.stem}.qdq.onnx"
        qdq.path.replace(source)
        rknn = scratch / f"{job.stem}.rknn"
        platform = platform_of(job)
        job.log(f"Compiling for the {platform} NPU with rknn-toolkit2 (its own environment)")
        compiled = compile_rknn(source, platform, rknn, job.log)
        quantization = {**(qdq.quantization or {}), "compiled": {
            "tool": f"rknn-toolkit2 {compiled['version']} (do_quantization=False: the QDQ's own scales)",
            "platform": platform, "rknn_sha256": sha256_of(rknn),  # what the simulator's runs are bound to
            "source": f"{source.name}: the QDQ graph it was compiled from; the toolkit's simulator runs it on a PC"}}
        # the .rknn takes and gives what the QDQ it was compiled from does
        artifact = BuiltArtifact(rknn, (rknn, source), "rknn", job.preprocess, qdq.inputs, qdq.outputs,
                                 quantization, qdq.checks)
        return Built([artifact], built.companions)

    def embed_record(self, artifact: BuiltArtifact, record) -> None:
        """A .rknn has no room for it: the record is the sidecar (NAME.edgeres.json)."""


def platform_of(job: ConvertJob) -> str:
    options = job.device.options if job.device else {}
    platform = str(options.get("rknn_platform", DEFAULT_PLATFORM)).lower()
    if platform not in PLATFORMS:
        raise ConversionError(f"rknn-toolkit2 has no platform {platform!r}; it compiles for {', '.join(PLATFORMS)}")
    return platform
