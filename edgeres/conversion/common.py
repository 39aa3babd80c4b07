"""What every converter shares: tensor names, and keeping converter noise quiet."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


# Loggers of the converters we call; they print progress and warnings of their own.
NOISY_LOGGERS = ("", "torch", "nncf", "onnxruntime", "openvino")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep the exporters' and quantizers' chatter out of the user's terminal."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
