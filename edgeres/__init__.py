"""edgeres: a trained ResNet classifier to every edge device, one runtime API for all.

`import edgeres` stays light (numpy, OpenCV): the converter side imports torch only
when it is used, so a device needs just the runtime backend of its artifact. OpenCV comes
with each runtime's extra, or from the system (JetPack's, on a Jetson).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .version import __version__

# Public name -> module that defines it, imported on first use.
_LAZY = {
    "Classifier": "edgeres.runtime.classifier",
    "Prediction": "edgeres.runtime.classifier",
    "Preprocess": "edgeres.preprocess",
    "ArtifactRecord": "edgeres.artifact",
    "load_model": "edgeres.models",
    "LoadedModel": "edgeres.models",
    "convert": "edgeres.conversion.pipeline",
    "ConvertOptions": "edgeres.conversion.pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            module = import_module(_LAZY[name])
        except ModuleNotFoundError as error:
            if error.name != "cv2":
                raise
            from .errors import NO_OPENCV

            raise ModuleNotFoundError(NO_OPENCV, name="cv2") from None
        return getattr(module, name)
    raise AttributeError(f"module 'edgeres' has no attribute {name!r}")
