"""OpenVINO backend for .xml IR artifacts, with a streaming mode for video."""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import threading
from pathlib import Path
from typing import ClassVar, Iterable, Iterator

import numpy as np

from ..artifact import METADATA_KEY, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError, ModeUnavailableError, install_hint
from ..files import MODEL_LIMIT, RECORD_LIMIT, checked, read_bytes
from .base import PRECISION_MODES, cache_root


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Keep OpenVINO (from its first import) and NNCF from sending usage telemetry.

    Both send it unless the user opted out, except when they see CI=true. Classifying
    or converting someone's model should not phone home, and the sender forks a
    process, which can deadlock one that has loaded JAX (litert-torch does).
    """
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["CI"]
        else:
            os.environ["CI"] = previous


with no_telemetry():
    try:
        import openvino as ov
    except ImportError:  # the runtime is an extra: say how to get it when it is used
        ov = None

VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO")
IR_XML_LIMIT = 4 * RECORD_LIMIT  # the graph's XML (a ResNet50's is under 1 MB) with its record and model_info
MODEL_INFO_KEY = "model_info"  # where OpenVINO Model API looks for how to run an IR
CROP_KEY = "edgeres_crop_inside"  # an IR that takes a larger square and crops it in the graph


# PRECISION_MODES by OpenVINO's names, and what a device lists in OPTIMIZATION_CAPABILITIES for each
OPENVINO_TYPES = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITIES = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}
NEEDED_FOR = {"bf16": "AVX512-BF16, AMX or AVX2-VNNI-INT16 (Intel Xeon 4th gen and later, AMD Zen 4 and later, "
                      "Intel Core Ultra 200)",
              "fp16": "AVX512-FP16 (Intel Xeon 4th gen and later) or an ARM CPU with fp16 arithmetic"}


def compile_config(precision: str | None, threads: int | None, hint: str) -> dict:
    """OpenVINO compile settings for running an IR's float layers in `precision` (one of PRECISION_MODES).

    Unless told, OpenVINO runs float layers in the device's fastest type: bf16 on CPUs with
    AVX512-BF16 or AMX, f16 on ARM. An IR cannot ask for f32 itself (OpenVINO 2026.4 ignores
    its rt_info runtime_options), so the hint is always given: every IR, fp32, fp16 weights
    or int8, runs in the mode it was verified in, whatever the host.
    """
    config = {"PERFORMANCE_HINT": hint}
    if precision in OPENVINO_TYPES:  # None: a device without fp32 (an NPU), left to its own precision
        config["INFERENCE_PRECISION_HINT"] = OPENVINO_TYPES[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def device_precisions(capabilities: Iterable[str]) -> tuple[str, ...]:
    """The PRECISION_MODES a device computes natively, from its OPTIMIZATION_CAPABILITIES, fp32 first."""
    return tuple(mode for mode, capability in CAPABILITIES.items() if capability in set(capabilities))


def host_precisions(device: str | None = None) -> tuple[str, ...]:
    """The modes OpenVINO offers for `device` here (None: the device Classifier would pick)."""
    if ov is None:
        return ()
    core = ov.Core()
    return _precisions_of(core, _resolve_device(core, device))


def _precisions_of(core, device: str) -> tuple[str, ...]:
    physical = "CPU" if device.split(":")[0] in VIRTUAL_DEVICES else device  # AUTO's fallback is the CPU
    return device_precisions(core.get_property(physical, "OPTIMIZATION_CAPABILITIES"))


def cache_dir() -> Path:
    return cache_root() / "openvino"


class OpenVinoBackend:
    name: ClassVar[str] = "openvino"
    execution_precisions: ClassVar[tuple[str, ...]] = PRECISION_MODES

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        if ov is None:
            raise BackendUnavailableError(f"OpenVINO IR artifacts need OpenVINO: {install_hint('x86')}")
        self._core = ov.Core()
        self._model = _read_classifier(self._core, path)
        self._device = _resolve_device(self._core, device)
        self._path = path
        self._threads = threads
        self._precision = _offered(self._core, self._device, precision, path)
        # one compiled-model cache per mode: measured (OpenVINO 2026.4.1, a Xeon with AVX512-FP16), a model compiled
        # in f32 and cached was loaded again for an f16 compile of the same IR, so a mode ran in another's
        self._core.set_property({"CACHE_DIR": str(cache_dir() / (self._precision or "device"))})
        _fit_input_to_crop(self._model, path)
        self._compiled = self._compile("LATENCY")
        # One infer request runs one inference at a time ("Infer Request is busy"), so each
        # caller takes a request from a pool and gives it back: threads never share one.
        self._requests: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self._requests.put(self._compiled.create_infer_request())
        self._throughput = None  # compiled on the first stream()
        self._throughput_lock = threading.Lock()

    @property
    def execution_precision(self) -> str:
        return self._precision

    def _compile(self, hint: str):
        try:
            config = compile_config(self._precision, self._threads, hint)
            compiled = self._core.compile_model(self._model, self._device, config)
        except RuntimeError as error:
            raise DeviceError(f"OpenVINO could not compile {self._path.name} for {self._device}: "
                              f"{_reason(error)}") from None
        compiled_in = _compiled_precision(compiled)
        if self._precision is None:  # a device without fp32 (an NPU): its own precision, as it reports it
            self._precision = compiled_in or f"{self._device}'s own"
        elif compiled_in not in (None, self._precision):  # a plugin that overrides the hint: never run silently
            raise DeviceError(f"OpenVINO compiled {self._path.name} for {self._device} in {compiled_in}, not the "
                              f"{self._precision} asked for; this OpenVINO does not honour the precision hint")
        self._check_layers_run_in(compiled)
        return compiled

    def _check_layers_run_in(self, compiled) -> None:
        """fp16 must be what the layers compute in, not only what the hint says (a guard: on a Xeon with
        AVX512-FP16, OpenVINO 2026.4 reported f16 for a cached f32 model whose convolutions all ran in f32)."""
        wanted = OPENVINO_TYPES.get(self._precision)
        if wanted != "f16":  # bf16 is left to the hint: a bf16 conv may report f32 when its weights stay f32
            return
        found = {name for name in _compute_precisions(compiled) if name.startswith(("f", "bf"))}  # INT8 layers stay
        if found and wanted not in found:
            ran = ", ".join(sorted(found))
            raise ModeUnavailableError(
                f"{self._path.name} cannot run in {self._precision} on {self._device}: OpenVINO took the mode but "
                f"runs its convolutions in {ran} (read from the compiled model); use fp32"
                f"{' or bf16' if 'bf16' in _precisions_of(self._core, self._device) else ''}",
                reason=f"OpenVINO took {self._precision} here but runs the convolutions in {ran}")

    def embedded_record(self) -> ArtifactRecord | None:
        if not self._model.has_rt_info([METADATA_KEY]):
            return None
        return parse_embedded(self._model.get_rt_info([METADATA_KEY]).astype(str), self._path)

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        """From the IR's XML: <rt_info><edgeres value="..."/> at the top level, as OpenVINO writes it."""
        import xml.etree.ElementTree as ElementTree

        try:
            root = ElementTree.fromstring(read_bytes(path, IR_XML_LIMIT, "OpenVINO IR"))
            entry = root.find(f"rt_info/{METADATA_KEY}")
        except ElementTree.ParseError:
            return None
        return None if entry is None or "value" not in entry.attrib else parse_embedded(entry.attrib["value"], path)

    @property
    def max_batch(self) -> int | None:
        batch = self._model.inputs[0].get_partial_shape()[0]
        return batch.get_length() if batch.is_static else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            request = self._requests.get_nowait()
        except queue_module.Empty:  # every request is busy in another thread: one more
            request = self._compiled.create_infer_request()
        try:
            # a copy: the request's output tensor is overwritten by its next inference
            return np.array(request.infer({0: batch}, share_inputs=True)[0], dtype=np.float32, copy=True)
        finally:
            self._requests.put(request)

    def stream(self, inputs: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Several infer requests in flight (THROUGHPUT hint); results come back in input order.

        A feeder thread pulls inputs and starts each on an idle request of this stream's
        own set, so each result is handed out as soon as it is ready: waiting on the input
        iterator (a camera's next frame) would hold back results that are already done.
        The consumer waits on the requests in the order they started, so a failed
        inference raises here, in this stream, after every earlier result.
        """
        with self._throughput_lock:
            if self._throughput is None:
                self._throughput = self._compile("THROUGHPUT")
        feeder = _Feeder(self._throughput, inputs)
        feeder.start()
        try:
            while True:
                started = feeder.started.get()
                if started is _Feeder.DONE:
                    return
                if isinstance(started, BaseException):
                    raise started
                started.wait()
                row = started.get_output_tensor(0).data[0].copy()
                feeder.idle.put(started)
                yield row
        finally:
            feeder.stop()


class _Feeder(threading.Thread):
    """Starts an inference for each input on an idle request of its own set.

    It hands the consumer each started request, in order, then DONE, or the exception
    that stopped it (the input's or OpenVINO's). On its way out it waits for every
    request of its set, so no request is dropped while an inference still runs in it.
    """

    DONE = object()

    def __init__(self, compiled, inputs: Iterable[np.ndarray]) -> None:
        super().__init__(name="edgeres-openvino-feeder", daemon=True)
        depth = max(2, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.requests = [compiled.create_infer_request() for _ in range(depth)]
        self.idle: queue_module.SimpleQueue = queue_module.SimpleQueue()
        for request in self.requests:
            self.idle.put(request)
        self.started: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self.inputs = inputs
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            for item in self.inputs:
                request = self._next_idle()
                if request is None:
                    return
                request.start_async({0: item[None]})
                self.started.put(request)
            self.started.put(self.DONE)
        except BaseException as error:  # raised by the consumer, in its own thread, after the earlier results
            self.started.put(error)
        finally:
            for request in self.requests:
                _settle(request)

    def _next_idle(self):
        while not self.stopping.is_set():
            try:
                return self.idle.get(timeout=0.05)
            except queue_module.Empty:
                continue
        return None

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=0.5)  # a feeder still waiting on its input settles its requests when it ends


def _settle(request) -> None:
    try:
        request.wait()
    except Exception:  # a failed inference the consumer did not take: nobody to tell
        pass


def _read_classifier(core, path: Path):
    weights = path.with_suffix(".bin")
    if not weights.exists() and not weights.is_symlink():
        raise ArtifactError(
            f"{weights.name} is missing beside {path.name}: an OpenVINO IR is two files, copy both together"
        )
    checked(path, IR_XML_LIMIT, "OpenVINO IR")
    checked(weights, MODEL_LIMIT, "OpenVINO weights")
    try:
        model = core.read_model(str(path))
    except RuntimeError as error:
        raise ArtifactError(f"{path} is not a readable OpenVINO IR: {_reason(error)}") from None
    inputs, outputs = model.inputs, model.outputs
    ranks = ([p.get_partial_shape().rank.get_length() for p in inputs],
             [p.get_partial_shape().rank.get_length() for p in outputs])
    if ranks != ([4], [2]):
        raise ArtifactError(
            f"{path.name} is not an image classifier: expected 1 input of rank 4 (an image batch) and "
            f"1 output of rank 2 (class scores), found inputs of ranks {ranks[0]} and outputs of ranks {ranks[1]}"
        )
    return model


def _fit_input_to_crop(model, path: Path) -> None:
    """Reshape an IR that takes the resized frame's centre square to take the crop itself.

    edgeres' x86 IRs crop inside the graph (for OpenVINO Model API, see targets/openvino.py)
    and say the crop's size in rt_info; this runtime feeds crops, like every other, and
    the graph's crop then passes them whole.
    """
    if not model.has_rt_info([CROP_KEY]):
        return
    text = model.get_rt_info([CROP_KEY]).astype(str)
    shape = model.inputs[0].get_partial_shape()
    side = shape[1].get_length() if shape[1].is_static else None
    if not text.isdigit() or side is None or not 0 < int(text) <= side:
        raise ArtifactError(f"{path.name}: its rt_info says it crops {text!r} inside, which its input of shape "
                            f"{shape} cannot take; the file was edited: convert it again")
    try:
        model.reshape({0: ov.PartialShape([shape[0], int(text), int(text), shape[3]])})
    except RuntimeError as error:
        raise ArtifactError(f"{path.name}: OpenVINO cannot reshape its input to the crop {text}: "
                            f"{_reason(error)}; convert it again") from None


def _offered(core, device: str, precision: str | None, path: Path) -> str | None:
    """The mode to compile for: `precision` where the device offers it, else ModeUnavailableError.

    None (the default) is fp32 on every device that computes in fp32; a device that does not (an
    NPU lists FP16 and INT8 only) runs in its own precision, which is read back after compiling.
    """
    offered = _precisions_of(core, device)
    if precision is None:
        return PRECISION_MODES[0] if PRECISION_MODES[0] in offered else None
    if precision in offered:
        return precision
    name = core.get_property("CPU", "FULL_DEVICE_NAME") if device == "CPU" else device
    needs = f"; {precision} needs {NEEDED_FOR[precision]}" if precision in NEEDED_FOR else ""
    raise ModeUnavailableError(f"{path.name} cannot run in {precision} on {name}: OpenVINO offers "
                               f"{', '.join(offered)} here{needs}",
                               reason=f"{name} offers {', '.join(offered)} to OpenVINO{needs}")


COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul")


def _compute_precisions(compiled) -> set[str]:
    """The types the compiled model's convolution and matrix layers run in (its runtime model's own account;
    empty where a device gives none)."""
    try:
        layers = compiled.get_runtime_model().get_ordered_ops()
        info = [op.get_rt_info() for op in layers]
        return {i["runtimePrecision"].astype(str) for i in info
                if "layerType" in i and i["layerType"].astype(str) in COMPUTE_LAYERS and "runtimePrecision" in i}
    except (RuntimeError, AttributeError, KeyError):
        return set()


def _compiled_precision(compiled) -> str | None:
    """The mode OpenVINO says it compiled for. Virtual devices (AUTO, MULTI, HETERO) say it per device
    in DEVICE_PROPERTIES; where devices disagree, the first that differs from the others is returned."""
    try:
        found = [compiled.get_property("INFERENCE_PRECISION_HINT")]
    except RuntimeError:
        try:
            per_device = compiled.get_property("DEVICE_PROPERTIES")
        except RuntimeError:
            return None
        found = [properties.get("INFERENCE_PRECISION_HINT") for properties in per_device.values()
                 if isinstance(properties, dict)]
    names = {value.get_type_name() for value in found if hasattr(value, "get_type_name")}
    if not names:
        return None
    modes = sorted(next((mode for mode, type_name in OPENVINO_TYPES.items() if type_name == name), name)
                   for name in names)
    return modes[0] if len(modes) == 1 else "+".join(modes)


def _reason(error: Exception) -> str:
    """OpenVINO's message without its trace: the last line that says something (AUTO ends with ';')."""
    lines = [line.strip() for line in str(error).strip().splitlines() if len(line.strip(" ;")) > 1]
    return lines[-1] if lines else type(error).__name__


def _resolve_device(core, device: str | None) -> str:
    available = list(core.available_devices)
    if device is None:
        # AUTO only when there is something besides the CPU to choose from.
        return "AUTO" if any(d != "CPU" for d in available) else "CPU"
    if device in available or device.split(":")[0] in VIRTUAL_DEVICES:
        return device
    raise DeviceError(
        f"OpenVINO device {device!r} is not available here; available: {', '.join(available + ['AUTO'])}"
    )
