"""The Python-backend model of an edgeres Triton repository (written into it as `1/model.py`).

One file, three roles, named by the `edgeres_role` parameter of each model's config.pbtxt:
- `decode`: encoded images (JPEG, PNG, ... as UINT8 [-1], the file's bytes) to the artifact's input tensor;
- `frame`: raw BGR uint8 frames (H, W, 3) to the artifact's input tensor;
- `classify`: the artifact's input tensor to logits, run by edgeres' own runtime, for artifact formats
  Triton has no backend for (TFLite, .rknn, ExecuTorch, QNN context binaries) or by choice.
Preprocessing is edgeres' `Preprocess` from the set's record (`edgeres.json` beside this file), so a
served model sees the pixels it was calibrated and verified with. The server's Python needs edgeres
from its wheel with the artifact's runtime extra (`[onnx]`, `[x86]`, `[rpi]`, ...; kserve/Dockerfile does it).

Tensors cross the stub by DLPack, not `as_numpy()`/`Tensor(name, array)`: the stub of Triton 2.51's Python
backend reads numpy 2 arrays wrongly (measured: a [1, 2, 3] input arrived as [1, 1, 1], outputs came back
empty), DLPack is right with numpy 1 and 2.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

ROLES = ("decode", "frame", "classify")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.role = parameters.get("edgeres_role")
        if self.role not in ROLES:
            raise pb_utils.TritonModelException(f"config.pbtxt sets edgeres_role {self.role!r}; one of {ROLES}")
        here = Path(args["model_repository"]) / args["model_version"]
        try:
            from edgeres.artifact import read_record_file
            from edgeres.preprocess import Preprocess
            from edgeres.runtime.classifier import Classifier
        except ImportError as error:
            raise pb_utils.TritonModelException(
                f"edgeres does not import in Triton's Python ({error}): install edgeres' wheel with the artifact's "
                "runtime extra in the server's environment (the export's kserve/Dockerfile shows how)") from None
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        if self.role == "classify":
            threads = int(parameters.get("threads") or 0) or None
            self.classifier = Classifier(here / parameters["artifact"], threads=threads)
        else:
            self.preprocess = Preprocess.from_dict(read_record_file(here / "edgeres.json").preprocess)

    def execute(self, requests):
        if self.role == "classify":
            return self._classify(requests)
        return [self._respond(request, self._preprocessed) for request in requests]

    def _classify(self, requests):
        """One run for the well-formed requests Triton batched together, split back per request. A request
        whose tensor is not one the preprocessing step makes (NaN, inf) fails alone; where the batched run
        fails, each request runs alone, so one client's input never fails another's request."""
        inputs = [_input(request, self.input_name) for request in requests]
        refused = [self._refused(batch) for batch in inputs]
        kept = [i for i, reason in enumerate(refused) if reason is None]
        try:
            logits = self._logits(np.concatenate([inputs[i] for i in kept])) if kept else None
        except Exception:  # edgeres' FrameError or ArtifactError, or the runtime's own: find whose input it was
            return [_failed(reason) if reason else self._respond(request, self._logits)
                    for request, reason in zip(requests, refused)]
        responses, row = [], 0
        for batch, reason in zip(inputs, refused):
            if reason:
                responses.append(_failed(reason))
                continue
            responses.append(pb_utils.InferenceResponse([_output(self.output_name, logits[row : row + len(batch)])]))
            row += len(batch)
        return responses

    def _logits(self, inputs):
        return self.classifier.logits_of_inputs(inputs).astype(np.float32)  # LOGITS is TYPE_FP32 (fp16 sets too)

    def _refused(self, batch):
        if batch.dtype.kind == "f" and not np.isfinite(batch).all():
            return f"{self.input_name} holds NaN or inf values; send the tensor the preprocessing step makes"
        return None

    def _respond(self, request, work):
        try:
            tensor = work(_input(request, self.input_name))
        except Exception as error:  # a frame that is no image: that request fails, with why, not the others
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
        return pb_utils.InferenceResponse([_output(self.output_name, tensor)])

    def _preprocessed(self, batch):
        frames = [_decoded(item) for item in batch] if self.role == "decode" else list(batch)
        return self.preprocess.batch(frames)


def _failed(reason):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(reason))


def _input(request, name):
    return np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name))


def _output(name, array):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _decoded(item):
    import cv2

    buffer = np.ascontiguousarray(item, np.uint8).reshape(-1)
    frame = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if frame is None:
        raise ValueError(f"a {buffer.size}-byte IMAGE is not an image OpenCV can decode (JPEG, PNG, BMP, WebP, ...)")
    return frame
