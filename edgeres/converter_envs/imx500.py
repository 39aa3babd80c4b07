"""Sony's IMX500 toolchain in its own environment: MCT's quantization, imxconv-pt, and MCT's simulation.

The IMX500 (the Raspberry Pi AI Camera's sensor) runs only a network quantized by Sony's
Model Compression Toolkit (MCT) by its IMX500 rules (power-of-two activation thresholds,
per-channel weights of 8, 4 or 2 bits) and compiled by Sony's imx500-converter. Both pin onnx
1.17, onnxruntime 1.21 and an older networkx than this project's, so they run in an environment
of their own, which edgeres builds once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ConversionError, EdgeresError
from . import ConverterEnv, Install
from .steps import ServedModel, Vendor, run_step

MCT_VERSION = "2.5.1"  # the newest MCT whose mct-quantizers (1.6) the converter's uni-pytorch 3.19 accepts
CONVERTER_VERSION = "3.19.2"
IMX500_TOOLCHAIN = ConverterEnv(
    name=f"imx500-converter-{CONVERTER_VERSION}",
    installs=(
        # MCT traces the model with torch and imports torchvision; these are the project's own pins
        Install(("torch==2.14.1", "torchvision==0.29.1")),
        Install((f"model-compression-toolkit=={MCT_VERSION}", "mct-quantizers==1.6.0",
                 f"imx500-converter[pt]=={CONVERTER_VERSION}", "uni-pytorch==3.19.0", "edge-mdt-cl==1.1.1",
                 "onnx==1.17.0", "onnxruntime==1.21.1", "onnxruntime-extensions==0.13.0", "onnxscript==0.7.2",
                 "protobuf==4.25.5", "numpy==2.4.6", "networkx==3.0", "matplotlib==3.9.4",
                 "pydantic==2.11.10")),
    ),
    imports="model_compression_toolkit, uni.pytorch, mct_quantizers",
    size="about 6.5 GB, most of it PyTorch",
    tool="imx500",
    note=("Sony's model-compression-toolkit and imx500-converter pin onnx 1.17, onnxruntime 1.21 and networkx 3.0, "
          "older than this project's"),
)
TOOL = Path(__file__).with_name("imx500_tool.py")


def _error_line(line: str) -> str | None:
    for mark in ("ERROR", "CRITICAL", "Error:"):
        if mark in line:
            return line[line.index(mark):][:300]
    return None


VENDOR = Vendor("Sony's IMX500 toolchain", _error_line)


def quantize(work: Path, log: Callable[[str], None] = print) -> dict:
    """MCT's quantization of WORK/module.pt for the IMX500 (see imx500_tool.py); what it chose."""
    return run_step(VENDOR, IMX500_TOOLCHAIN, TOOL, ["quantize", str(work)], log, doing="quantizing")


def convert(source: Path, out: Path, log: Callable[[str], None] = print) -> dict:
    """imxconv-pt's compile of the MCTQ ONNX at `source` into the folder `out`: its status and memory report."""
    return run_step(VENDOR, IMX500_TOOLCHAIN, TOOL, ["convert", str(source), str(out)], log, doing="compiling")


class Simulator(ServedModel):
    """MCT's simulation of the quantized graph the converter compiles: the MCTQ ONNX with MCT's own quantizer
    ops (mct-quantizers, through onnxruntime-extensions) on ONNX Runtime's CPU."""

    def __init__(self, source: Path, log: Callable[[str], None] = print, *, build: bool = True,
                 error: type[EdgeresError] = ConversionError) -> None:
        super().__init__(VENDOR, IMX500_TOOLCHAIN, TOOL, ["serve", str(source)], log, build=build, error=error)


if __name__ == "__main__":  # python -m edgeres.converter_envs.imx500: build the environment ahead of time
    from . import ensure

    print(ensure(IMX500_TOOLCHAIN))
