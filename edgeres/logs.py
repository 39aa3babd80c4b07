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
import warnings
from typing import Iterator

# Loggers of the libraries we call; they print progress and warnings of their own.
NOISY_LOGGERS = ("", "torch", "nncf", "onnxruntime", "openvino", "absl")

_verbose = False


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def is_verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python logging, warnings, stdout/stderr and native output for the block."""
    if _verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), native_output_silenced():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null: C++ libraries write there directly."""
    if _verbose:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # pythonw, or a closed descriptor
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # a descriptor is closed: nothing to silence there
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
