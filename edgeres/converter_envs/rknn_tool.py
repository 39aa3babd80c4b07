"""The rknn-toolkit2 step, run inside its own environment (edgeres.converter_envs.rknn): imports only
what that environment has (rknn-toolkit2, numpy), never edgeres.

    rknn_tool.py build SRC.onnx PLATFORM OUT.rknn   compile SRC (a QDQ ONNX, already quantized) for PLATFORM
    rknn_tool.py serve SRC.onnx PLATFORM [DATASET]  compile it again and run it on the toolkit's simulator:
                                                    read float32 batches (N, C, H, W) on stdin, answer
                                                    each with the outputs (N, classes) on stdout; with
                                                    DATASET (the toolkit's list of .npy inputs, NCHW) SRC is
                                                    a float ONNX that the toolkit quantizes by its defaults

The toolkit prints its log on stdout; file descriptor 1 is pointed at stderr before it is imported,
and results go out through a private copy of the original stdout: one JSON line, then (serve) one array
per batch, each a JSON line {"shape": [...]} followed by its float32 bytes. An error is a JSON line {"error": ...} and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys

# this file's folder holds edgeres' own rknn.py, which must not stand for the toolkit's rknn package (the
# caller also starts it with -I); sys.path[0] is that folder when the file is run as a script
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

_channel = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # whatever the toolkit prints goes to stderr, which the caller keeps in a file
sys.stdout = sys.stderr


def _say(payload: dict) -> None:
    _channel.write((json.dumps(payload) + "\n").encode())
    _channel.flush()


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
    _say({"version": _version(), "platform": platform})


def serve(source: str, platform: str, dataset: str | None = None) -> None:
    import numpy as np

    rknn = _compiled(source, platform, dataset)
    if rknn.init_runtime() != 0:  # no target: the toolkit's simulator on this PC
        raise RuntimeError("rknn-toolkit2's simulator did not start")
    _say({"version": _version(), "platform": platform, "ready": True})
    stdin = sys.stdin.buffer
    while True:
        header = stdin.readline()
        if not header:
            return
        shape = json.loads(header)["shape"]
        batch = np.frombuffer(_exactly(stdin, 4 * int(np.prod(shape))), np.float32).reshape(shape)
        rows = [rknn.inference(inputs=[batch[i:i + 1]], data_format="nchw")[0] for i in range(len(batch))]
        _send(np.concatenate(rows).astype(np.float32))


def _exactly(stream, count: int) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise EOFError(f"a batch of {count} bytes ended after {len(data)}")
    return data


def _send(array) -> None:
    """One float32 array: a JSON line with its shape, then its bytes (the caller's framing)."""
    _channel.write((json.dumps({"shape": list(array.shape)}) + "\n").encode() + array.tobytes())
    _channel.flush()


def main(arguments: list[str]) -> int:
    try:
        {"build": build, "serve": serve}[arguments[0]](*arguments[1:])
    except Exception as error:  # the caller turns it into edgeres's own error
        # the toolkit's errors carry its own traceback in their message: the reason is the last line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        _say({"error": lines[-1].removeprefix("ValueError: ").removeprefix("RuntimeError: ")})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
