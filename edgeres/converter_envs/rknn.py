"""Rockchip's rknn-toolkit2 in its own environment: compiling a QDQ ONNX to .rknn, and its PC simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ConversionError, EdgeresError, PlanRefusedError
from . import ConverterEnv, Install
from .steps import ServedModel, Vendor, run_step

TOOLKIT_VERSION = "2.5.0"
RKNN_TOOLKIT2 = ConverterEnv(
    name=f"rknn-toolkit2-{TOOLKIT_VERSION}",
    installs=(
        # PyPI's torch for Linux is a CUDA build with several GB of NVIDIA libraries; the toolkit needs the CPU
        Install(("torch==2.13.0+cpu", "setuptools==80.9.0"),  # the toolkit imports pkg_resources (gone in 81)
                ("--extra-index-url", "https://download.pytorch.org/whl/cpu")),
        Install(("numpy==1.26.4", "onnx==1.18.0", "onnxruntime==1.26.0", "protobuf==4.25.4", "psutil==7.2.2",
                 "ruamel.yaml==0.19.1", "scipy==1.17.1", "tqdm==4.70.1", "opencv-python-headless==4.11.0.86",
                 "fast-histogram==0.14")),
        # its declared torch<=2.4.0 would fetch that CUDA build: the pins above stand in for its dependencies
        Install((f"rknn-toolkit2=={TOOLKIT_VERSION}",), ("--no-deps",)),
    ),
    imports="rknn.api",
    size="about 1.5 GB",
    tool="rknn",
    note=("rknn-toolkit2 pins numpy 1.x, onnx 1.18 and torch 2.4 or older. It is installed without its declared "
          "dependencies, beside a CPU build of torch 2.13 (from PyTorch's CPU index), which it runs with (measured: "
          "its compile and simulator on the digits and photo ResNet18s)"),
)
TOOL = Path(__file__).with_name("rknn_tool.py")


def _error_line(line: str) -> str | None:
    return line[2:] if line.startswith("E ") else None


# "Unkown op target" and the version line are printed by the toolkit on every build, failed or not
VENDOR = Vendor("rknn-toolkit2", _error_line, noise=("Unkown op target", "rknn-toolkit2 version:", "Traceback"))


def compile_rknn(source: Path, platform: str, out: Path, log: Callable[[str], None] = print) -> dict:
    """rknn-toolkit2 compiles the QDQ ONNX at `source` for `platform` into `out`; its version and platform."""
    # killed by a signal: measured, a segfault on some kept layers; the search tries another plan
    answer = run_step(VENDOR, RKNN_TOOLKIT2, TOOL, ["build", str(source), platform, str(out)], log,
                      doing=f"compiling for {platform}", crashed=PlanRefusedError)
    if not out.is_file():
        raise ConversionError(f"rknn-toolkit2 reported success for {platform} but wrote no {out.name}")
    return answer


class Simulator(ServedModel):
    """rknn-toolkit2's simulator running the QDQ ONNX a .rknn was compiled from (it cannot load a .rknn)."""

    def __init__(self, source: Path, platform: str, log: Callable[[str], None] = print,
                 dataset: Path | None = None, *, build: bool = True,
                 error: type[EdgeresError] = ConversionError) -> None:
        """`dataset` (the toolkit's list of .npy inputs, each (1, C, H, W)): `source` is a float ONNX for the
        toolkit's own default quantization, which the benchmark compares with edgeres' as a peer."""
        arguments = ["serve", str(source), platform, *([str(dataset)] if dataset else [])]
        super().__init__(VENDOR, RKNN_TOOLKIT2, TOOL, arguments, log, build=build, error=error)


if __name__ == "__main__":  # python -m edgeres.converter_envs.rknn: build the environment ahead of time
    from . import ensure

    print(ensure(RKNN_TOOLKIT2))
