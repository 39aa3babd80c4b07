"""The rknn-toolkit2 step, run inside its own environment (edgeres.converter_envs.rknn): imports only
what that environment has (rknn-toolkit2, numpy), never edgeres.

    rknn_tool.py build SRC.onnx PLATFORM OUT.rknn   compile SRC (a QDQ ONNX, already quantized) for PLATFORM
    rknn_tool.py serve SRC.onnx PLATFORM [DATASET]  compile it again and run it on the toolkit's simulator:
                                                    read float32 batches (N, C, H, W) on stdin, answer
                                                    each with the outputs (N, classes) on stdout; with
                                                    DATASET (the toolkit's list of .npy inputs, NCHW) SRC is
                                                    a float ONNX that the toolkit quantizes by its defaults

It talks to edgeres as every vendor step does (tool_io.py, beside it): JSON lines, float32 batches.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# this file's folder holds edgeres' own rknn.py, which must not stand for the toolkit's rknn package (the
# caller also starts it with -I); sys.path[0] is that folder when the file is run as a script
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

_spec = importlib.util.spec_from_file_location("tool_io", os.path.join(os.path.dirname(__file__), "tool_io.py"))
tool_io = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool_io)  # before the toolkit is imported: it takes over stdout


def _compiled(source: str, platform: str, dataset: str | None = None):
    from rknn.api import RKNN

    rknn = RKNN(verbose=False)
    # a QDQ graph carries its own scales: the toolkit compiles them as they are (do_quantization=False), and
    # layers left in float run in float16 on the NPU. With a dataset: the toolkit's own quantization (a peer)
    steps = [("config", lambda: rknn.config(target_platform=platform)),
             ("load_onnx", lambda: rknn.load_onnx(model=source)),
             ("build", lambda: rknn.build(do_quantization=dataset is not None, dataset=dataset))]
    for step, call in steps:
        if call() != 0:
            raise RuntimeError(f"rknn-toolkit2's {step} failed for {platform} (its log above says why)")
    return rknn


def _version() -> str:
    from importlib.metadata import version

    return version("rknn-toolkit2")


def build(source: str, platform: str, out: str) -> None:
    rknn = _compiled(source, platform)
    if rknn.export_rknn(out) != 0:
        raise RuntimeError(f"rknn-toolkit2 could not write {out}")
    tool_io.say({"version": _version(), "platform": platform})


def serve(source: str, platform: str, dataset: str | None = None) -> None:
    import numpy as np

    rknn = _compiled(source, platform, dataset)
    if rknn.init_runtime() != 0:  # no target: the toolkit's simulator on this PC
        raise RuntimeError("rknn-toolkit2's simulator did not start")
    tool_io.say({"version": _version(), "platform": platform, "ready": True})
    for batch in tool_io.batches():
        rows = [rknn.inference(inputs=[batch[i:i + 1]], data_format="nchw")[0] for i in range(len(batch))]
        tool_io.send(np.concatenate(rows).astype(np.float32))


if __name__ == "__main__":
    sys.exit(tool_io.main({"build": build, "serve": serve}, sys.argv[1:]))
