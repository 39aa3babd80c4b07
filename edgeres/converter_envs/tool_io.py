"""What every vendor step run in a converter environment shares: how it talks to edgeres.

A step imports only what its environment has (numpy and the vendor's toolkit), never edgeres, and
loads this file by its path (importlib, from its own folder), not as a package. Toolkits print their logs on
stdout: file descriptor 1 is pointed at stderr before they are imported, and answers go out
through a private copy of the original stdout: one JSON line per answer; a served model answers
each float32 batch, read as a JSON line {"shape": [...]} and its bytes, the same way. An error is
a JSON line {"error": ...} and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

_channel = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # whatever a toolkit prints goes to stderr, which the caller keeps in a file
sys.stdout = sys.stderr


def say(payload: dict) -> None:
    _channel.write((json.dumps(payload) + "\n").encode())
    _channel.flush()


def progress(text: str) -> None:
    """Where a long step is, for the caller to show (any number of these come before the answer)."""
    say({"progress": text})


def send(array) -> None:
    """One float32 array: a JSON line with its shape, then its bytes."""
    _channel.write((json.dumps({"shape": list(array.shape)}) + "\n").encode() + array.tobytes())
    _channel.flush()


def batches():
    """The float32 batches the caller sends on stdin, until it closes it."""
    import numpy as np

    stdin = sys.stdin.buffer
    while True:
        header = stdin.readline()
        if not header:
            return
        shape = json.loads(header)["shape"]
        count = 4 * int(np.prod(shape))
        data = stdin.read(count)
        if len(data) != count:
            raise EOFError(f"a batch of {count} bytes ended after {len(data)}")
        yield np.frombuffer(data, np.float32).reshape(shape)


def main(commands: dict[str, Callable[..., None]], arguments: list[str]) -> int:
    try:
        commands[arguments[0]](*arguments[1:])
    except Exception as error:  # the caller turns it into edgeres's own error
        # toolkits' errors carry their own traceback in their message: the reason is the last line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        say({"error": lines[-1].removeprefix("ValueError: ").removeprefix("RuntimeError: ")})
        return 1
    return 0
