"""A Triton model repository from a verified artifact set.

    OUT/model_repository/NAME                    ensemble: IMAGE (an encoded image's bytes, UINT8 [-1]) -> LOGITS
    OUT/model_repository/NAME_frame              ensemble: FRAME (BGR uint8 H x W x 3) -> LOGITS, with labels
    OUT/model_repository/NAME_preprocess_image   Python backend: edgeres' Preprocess of decoded images
    OUT/model_repository/NAME_preprocess_frame   Python backend: edgeres' Preprocess of raw frames
    OUT/model_repository/NAME_model              the artifact: in Triton's own backend where it has one for
                                                 the format (onnxruntime, openvino), else edgeres' runtime
                                                 in the Python backend
    OUT/kserve/inferenceservice-{cpu,gpu}.yaml   KServe InferenceServices for the repository
    OUT/edgeres-triton.json                      what was exported, from which set

The set's record (`edgeres.json`) and golden samples (`golden.npz`) travel in `NAME/1/`, so a served
model can be checked against the artifact's own answers (`edgeres triton check`). The export runs the
golden samples through the artifact on this machine first: a set that fails here is not exported.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..artifact import ArtifactRecord, sha256_of, sidecar_path
from ..errors import ServingError
from ..golden import golden_file

MARKER = "edgeres-triton.json"
REPOSITORY = "model_repository"
RECORD_FILE = "edgeres.json"
GOLDEN_FILE = "golden.npz"
LABELS_FILE = "labels.txt"
MODEL_PY = Path(__file__).with_name("triton_model.py")
# Names the protocol clients see, whatever the artifact's own tensor names are
IMAGE, FRAME, LOGITS = "IMAGE", "FRAME", "LOGITS"
PYTHON_IO = ("INPUT", "OUTPUT")  # the tensors of the Python-backend steps
# The two ways in, by the suffix of their models' names: (ensemble input, preprocessing role, type, dims)
ENTRIES = {"image": (IMAGE, "decode", "TYPE_UINT8", [-1]), "frame": (FRAME, "frame", "TYPE_UINT8", [-1, -1, 3])}
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class NativeBackend:
    """A Triton backend that runs an artifact's format itself (it ships in NVIDIA's server image)."""

    name: str
    config_line: str
    write: Callable[[Path, Path], None]  # (artifact, version folder): the files the backend loads
    gpu: Callable[[str], str] | None = None  # precision -> what its config adds on a GPU instance
    batching: str = ""  # what its config adds where it batches


def _onnx_files(artifact: Path, version: Path) -> None:
    shutil.copyfile(artifact, version / "model.onnx")


def _openvino_files(artifact: Path, version: Path) -> None:
    """The IR with its input reshaped to the crop, as edgeres' runtime does at load: Triton's openvino backend
    compares the config's dims with the model's exactly, and edgeres' x86 IRs take the uncropped square."""
    import openvino as ov

    from ..runtime.openvino import _fit_input_to_crop

    model = ov.Core().read_model(str(artifact))
    _fit_input_to_crop(model, artifact)
    ov.save_model(model, str(version / "model.xml"), compress_to_fp16=False)


def _tensorrt_accelerator(precision: str) -> str:
    """ONNX Runtime's TensorRT execution provider in Triton's onnxruntime backend: engines are built on the
    serving GPU at load (a plan is tied to the GPU and TensorRT that built it) and cached across restarts."""
    mode = {"int8": "INT8", "fp16": "FP16"}.get(precision, "FP32")  # INT8: TensorRT takes the QDQ's own scales
    return ("optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            f'  parameters {{ key: "precision_mode" value: "{mode}" }}\n'
            '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            '  parameters { key: "trt_engine_cache_path" value: "/tmp/edgeres-trt-cache" }\n'
            "} ] } }\n")


# By the edgeres runtime class that opens the artifact here: a QNN context model is an .onnx file that
# ONNX Runtime without QNN cannot run, so the choice follows what opens the file, not its suffix.
NATIVE: dict[str, NativeBackend] = {
    "edgeres.runtime.onnxruntime:OnnxRuntimeBackend": NativeBackend(
        "onnxruntime", 'platform: "onnxruntime_onnx"', _onnx_files, gpu=_tensorrt_accelerator),
    "edgeres.runtime.openvino:OpenVinoBackend": NativeBackend(
        # with batching the backend fixes the IR's batch to max_batch_size; padding lets smaller batches run
        "openvino", 'backend: "openvino"', _openvino_files,
        batching='parameters { key: "ENABLE_BATCH_PADDING" value: { string_value: "YES" } }\n'),
}
CHOICES = ("auto", "python", *sorted({native.name for native in NATIVE.values()}))


@dataclass(frozen=True)
class ExportOptions:
    name: str | None = None  # the served model's name; default: the artifact's stem
    backend: str = "auto"  # auto: Triton's own backend where it has one for the format, else python
    max_batch: int = 8  # 0: no batching (every tensor has its leading 1 in config.pbtxt)
    instances: int = 1
    device: str = "cpu"
    threads: int | None = None  # the Python backend's runtime threads per instance


@dataclass(frozen=True)
class Exported:
    folder: Path
    name: str
    backend: str  # what runs the artifact: onnxruntime, openvino or python (edgeres' runtime)
    max_batch: int

    @property
    def repository(self) -> Path:
        return self.folder / REPOSITORY


def export_repository(artifact: Path, out: Path, options: ExportOptions = ExportOptions(),
                      log: Callable[[str], None] = print) -> Exported:
    """Check the set at `artifact` on this machine, then write its Triton repository to `out` (atomically)."""
    from ..golden import check_golden
    from ..runtime.classifier import Classifier

    _check_options(options)
    _check_out(out)
    classifier = Classifier(artifact, threads=options.threads)
    check = check_golden(classifier)
    if not check.passed:
        raise ServingError(f"{classifier.path.name} fails its golden samples on this machine "
                           f"({'; '.join(check.failures)}); it is not exported: run `edgeres verify` on it")
    _check_labels(classifier.labels)
    runtime = classifier.backend_class  # what opened it, not chosen again (a QNN test reads the whole file)
    native = _native_for(f"{runtime.__module__}:{runtime.__name__}", options, classifier.path)
    name = options.name or _model_name(classifier.path.stem)
    # Triton's own backends refuse a static batch-1 model in a batching config: that repository does not batch
    max_batch = options.max_batch if _batches(classifier.record) or native is None else 0
    exported = Exported(out, name, native.name if native else "python", max_batch)
    log(f"Golden samples pass here ({check.top1_vs_expected:.0%} top-1 as at conversion); writing {name} for "
        f"Triton with {exported.backend} running {classifier.path.name}")
    _write_atomically(out, lambda scratch: _write(scratch, classifier, exported, native, options))
    return exported


def _check_options(options: ExportOptions) -> None:
    if options.backend not in CHOICES:
        raise ServingError(f"--backend must be one of {', '.join(CHOICES)}, got {options.backend!r}")
    if options.device not in DEVICES:
        raise ServingError(f"--device must be cpu or gpu, got {options.device!r}")
    if options.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", options.name):
        raise ServingError(f"--name {options.name!r} is not a model name Triton and URLs take: letters, digits, "
                           "'_', '.' and '-', starting with a letter or digit, at most 64")
    for option, value, low, high in (("--max-batch", options.max_batch, 0, 1024),
                                     ("--instances", options.instances, 1, 64)):
        if not low <= value <= high:
            raise ServingError(f"{option} must be {low} to {high}, got {value}")


def _native_for(runtime: str, options: ExportOptions, artifact: Path) -> NativeBackend | None:
    native = NATIVE.get(runtime)
    if options.backend == "python" or (options.backend == "auto" and native is None):
        if options.device == "gpu":
            raise ServingError(f"{artifact.name} would run in Triton's Python backend with edgeres' CPU runtime; "
                               "a GPU instance gains nothing: export with --device cpu")
        return None
    if options.backend != "auto" and (native is None or native.name != options.backend):
        runs = native.name if native else "none of Triton's own backends (use --backend python)"
        raise ServingError(f"{artifact.name} cannot run in Triton's {options.backend} backend; it runs in {runs}")
    if options.device == "gpu" and not native.gpu:
        raise ServingError(f"Triton's {native.name} backend runs {artifact.name} on the CPU: export with --device cpu")
    return native


def _plain(text: str) -> str:
    """A name written into config.pbtxt as a string: refused where it would need escaping."""
    if any(char in text for char in '"\\') or not text.isprintable():
        raise ServingError(f"{text!r} cannot be written into Triton's config.pbtxt as it is (quotes, backslashes "
                           "or control characters); rename the artifact's files, or convert it with another --name")
    return text


def _check_labels(labels: list[str]) -> None:
    """One label a line in labels.txt, or Triton's classification answers name the wrong classes."""
    for label in labels:
        if len(label.splitlines()) != 1 or label != label.strip("\r\n"):
            raise ServingError(f"label {label!r} holds a line break; Triton's label file takes one label a line: "
                               "convert the set again with labels without line breaks")


def _model_name(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("_.-") or "model"
    return name[:48]


def _batches(record: ArtifactRecord) -> bool:
    """Whether the artifact takes batches larger than one (converted with --dynamic-batch)."""
    return bool(record.inputs) and not isinstance(record.inputs[0].shape[0], int)


def _check_out(out: Path) -> None:
    if out.is_symlink():
        raise ServingError(f"--out {out} is a symbolic link; give the folder it points to "
                           f"({out.resolve()}) or a new one")
    if out.exists() and not out.is_dir():
        raise ServingError(f"--out {out} is a file; give a folder")
    if out.resolve() == out.resolve().parent:
        raise ServingError(f"--out {out} is the file system's root; give a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ServingError(f"--out {out} holds files that are not an edgeres Triton export; nothing was changed: "
                           "choose an empty or new folder")


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Write into a scratch folder beside `out`, then swap it in. Until the swap `out` is as it was; if the
    swap itself fails, the previous export is put back."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = old = None
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        write(scratch)
        scratch.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            out.rename(old)  # onto the empty folder mkdtemp made: a name nothing else holds
        try:
            scratch.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
                old = None
            raise
        scratch = None
    finally:
        for leftover in (scratch, old):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)


def _write(folder: Path, classifier, exported: Exported, native: NativeBackend | None,
           options: ExportOptions) -> None:
    repository, name, record = folder / REPOSITORY, exported.name, classifier.record
    labels = "".join(f"{label}\n" for label in classifier.labels)
    model_io = _model_io(record, native)
    for kind, (source, role, dtype, dims) in ENTRIES.items():
        ensemble = repository / (name if kind == "image" else f"{name}_{kind}")
        _ensemble(ensemble, name, source, dtype, dims, kind, exported, model_io, labels)
        _write_record(ensemble / "1" / RECORD_FILE, record)  # a version folder with a file survives any copy
        _preprocess_model(repository / f"{name}_preprocess_{kind}", source, role, dtype, dims, classifier, exported,
                          options)
    _artifact_model(repository / f"{name}_model", classifier, exported, native, model_io, labels, options)
    shutil.copyfile(golden_file(classifier.path, record), repository / name / "1" / GOLDEN_FILE)
    from .kserve import write_manifests

    write_manifests(folder / "kserve", exported)
    (folder / MARKER).write_text(json.dumps({
        "name": name, "backend": exported.backend, "max_batch": exported.max_batch, "device": options.device,
        "artifact": classifier.path.name, "artifact_sha256": sha256_of(classifier.path), "target": record.target,
        "precision": record.precision, "models": sorted(p.name for p in repository.iterdir()),
    }, indent=2) + "\n")


def _model_io(record: ArtifactRecord, native: NativeBackend | None) -> tuple[str, str]:
    """The artifact model's input and output tensor names: its own in a native backend, else the Python step's."""
    if native is None:
        return PYTHON_IO
    return record.inputs[0].name, record.outputs[0].name


def _tensor(name: str, dtype: str, dims: list[int], exported: Exported, extra: str = "") -> str:
    """A config tensor; without batching its dims start with the batch of 1 that every request carries."""
    dims = dims if exported.max_batch else [1, *dims]
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{extra} }}'


LABELLED = f' label_filename: "{LABELS_FILE}"'  # Triton's classification extension names classes from it


def _input_dims(classifier) -> tuple[str, list[int]]:
    spec = classifier.preprocess
    return DTYPES[spec.dtype], list(spec.input_shape[1:])


def _ensemble(folder: Path, name: str, source: str, dtype: str, dims: list[int], kind: str, exported: Exported,
              model_io: tuple[str, str], labels: str) -> None:
    classes = labels.count("\n")  # one label a line (_check_labels)
    preprocess = f"{name}_preprocess_{kind}"
    config = (f'name: "{folder.name}"\nplatform: "ensemble"\nmax_batch_size: {exported.max_batch}\n'
              f"input [\n{_tensor(source, dtype, dims, exported)}\n]\n"
              f'output [\n{_tensor(LOGITS, "TYPE_FP32", [classes], exported, LABELLED)}\n]\n'
              "ensemble_scheduling {\n  step [\n"
              f'    {{ model_name: "{preprocess}" model_version: -1\n'
              f'      input_map {{ key: "{source}" value: "{source}" }}\n'
              f'      output_map {{ key: "{PYTHON_IO[0]}" value: "preprocessed" }} }},\n'
              f'    {{ model_name: "{name}_model" model_version: -1\n'
              f'      input_map {{ key: "{model_io[0]}" value: "preprocessed" }}\n'
              f'      output_map {{ key: "{model_io[1]}" value: "{LOGITS}" }} }}\n'
              "  ]\n}\n")
    _model_folder(folder, config, {LABELS_FILE: labels})


def _preprocess_model(folder: Path, source: str, role: str, dtype: str, dims: list[int], classifier,
                      exported: Exported, options: ExportOptions) -> None:
    input_dtype, input_dims = _input_dims(classifier)
    config = (f'name: "{folder.name}"\nbackend: "python"\nmax_batch_size: {exported.max_batch}\n'
              f"input [\n{_tensor(source, dtype, dims, exported, _ragged(exported))}\n]\n"
              f"output [\n{_tensor(PYTHON_IO[0], input_dtype, input_dims, exported)}\n]\n"
              f"{_instances('cpu', options.instances)}{_batching(exported)}"
              f'parameters {{ key: "edgeres_role" value: {{ string_value: "{role}" }} }}\n')
    _model_folder(folder, config, {})
    _python_files(folder / "1", classifier)


def _artifact_model(folder: Path, classifier, exported: Exported, native: NativeBackend | None,
                    model_io: tuple[str, str], labels: str, options: ExportOptions) -> None:
    input_dtype, input_dims = _input_dims(classifier)
    classes = len(classifier.labels)
    head = 'backend: "python"' if native is None else native.config_line
    config = (f'name: "{folder.name}"\n{head}\nmax_batch_size: {exported.max_batch}\n'
              f"input [\n{_tensor(model_io[0], input_dtype, input_dims, exported)}\n]\n"
              f'output [\n{_tensor(model_io[1], "TYPE_FP32", [classes], exported, LABELLED)}\n]\n'
              f"{_instances(options.device, options.instances)}{_batching(exported)}")
    if native is None:
        config += (f'parameters {{ key: "edgeres_role" value: {{ string_value: "classify" }} }}\n'
                   f'parameters {{ key: "artifact" value: {{ string_value: "{_plain(classifier.path.name)}" }} }}\n'
                   f'parameters {{ key: "threads" value: {{ string_value: "{options.threads or 0}" }} }}\n')
    else:
        config += (native.gpu(classifier.record.precision) if options.device == "gpu" else "")
        config += native.batching if exported.max_batch else ""
    _model_folder(folder, config, {LABELS_FILE: labels})
    version = folder / "1"
    if native is None:
        _python_files(version, classifier)
        for path in _artifact_files(classifier):
            shutil.copyfile(path, version / path.name)
    else:
        native.write(classifier.path, version)


def _artifact_files(classifier) -> list[Path]:
    """The artifact, the files its record lists beside it, its sidecar and golden file: the whole set."""
    folder, record = classifier.path.parent, classifier.record
    named = [classifier.path, *(folder / name for name in (record.companions or {}))]
    return named + [path for path in (sidecar_path(classifier.path), golden_file(classifier.path, record))
                    if path.is_file()]


def _python_files(version: Path, classifier) -> None:
    shutil.copyfile(MODEL_PY, version / "model.py")
    _write_record(version / RECORD_FILE, classifier.record)


def _write_record(destination: Path, record: ArtifactRecord) -> None:
    """The record the export was checked with (the artifact's own, else its sidecar's), as a file."""
    destination.write_text(record.to_json() + "\n")


def _instances(device: str, count: int) -> str:
    return f"instance_group [ {{ kind: {'KIND_GPU' if device == 'gpu' else 'KIND_CPU'} count: {count} }} ]\n"


def _ragged(exported: Exported) -> str:
    """Images and frames of different sizes may share a batch: each request is preprocessed on its own."""
    return " allow_ragged_batch: true" if exported.max_batch else ""


def _batching(exported: Exported) -> str:
    if exported.max_batch <= 1:
        return ""
    return "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"


def _model_folder(folder: Path, config: str, files: dict[str, str]) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    for name, text in files.items():
        (folder / name).write_text(text)
