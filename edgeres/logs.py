"""Keeping other libraries' chatter out of the user's terminal.

Converters print progress bars, warnings and native (C++) logs of their own; edgeres
shows its own progress instead, and `edgeres convert --verbose` lets theirs through.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import warnings
from typing import Callable, Iterator

# Loggers of the libraries we call; they print progress and warnings of their own.
NOISY_LOGGERS = ("", "torch", "nncf", "onnxruntime", "openvino", "absl")

_verbose = False


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def is_verbose() -> bool:
    return _verbose


class _SharedSilence:
    """Process-wide state (sys.stdout, file descriptors, logger levels, warning filters) that
    the first of overlapping blocks enters and the last one leaves, whatever their threads:
    two Classifiers loading at once in two threads must not restore each other's silence."""

    def __init__(self, enter: Callable[[contextlib.ExitStack], None]) -> None:
        self._enter, self._lock, self._depth, self._stack = enter, threading.Lock(), 0, None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if _verbose:
            yield
            return
        with self._lock:
            if self._depth == 0:
                stack = contextlib.ExitStack()
                try:
                    self._enter(stack)
                except BaseException:
                    stack.close()
                    raise
                self._stack = stack
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._stack.close()
                    self._stack = None


def _silence_descriptors(stack: contextlib.ExitStack) -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # pythonw, or a closed descriptor
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # a descriptor is closed: nothing to silence there
        return
    devnull = os.open(os.devnull, os.O_WRONLY)

    def restore() -> None:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)

    stack.callback(restore)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


def _silence_everything(stack: contextlib.ExitStack) -> None:
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    stack.callback(lambda: [logger.setLevel(level) for logger, level in zip(loggers, levels)])
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(native_output_silenced())
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))


# Point file descriptors 1 and 2 at /dev/null for the block: C++ libraries write there directly.
native_output_silenced = _SharedSilence(_silence_descriptors)
# Silence Python logging, warnings, stdout/stderr and native output for the block.
quiet = _SharedSilence(_silence_everything)
