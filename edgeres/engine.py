"""Build a TensorRT engine from a jetson ONNX artifact, on the device that will run it.

An engine is specific to the GPU and the TensorRT version that built it, so it cannot be
made on a PC for a Jetson: `edgeres build-engine model.onnx` runs on the Jetson. The
builder flags come from the artifact's record (FP16, or INT8 for a QDQ graph). The edgeres
record goes into a sidecar, never into the .engine, which trtexec and DeepStream read as is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .artifact import ArtifactRecord, TensorSpec, atomic_path, read_sidecar, sha256_of, sidecar_path, write_sidecar
from .errors import ArtifactError, BackendUnavailableError, ConversionError
from .files import MODEL_LIMIT, read_bytes
from .written import mark_written, refuse_to_overwrite

INSTALL_TENSORRT = (
    "TensorRT is not installed here. On a Jetson it comes with JetPack (sudo apt install python3-libnvinfer, "
    "or nvidia-jetpack); on a PC with an NVIDIA GPU: pip install tensorrt. It needs an NVIDIA GPU: an engine "
    "is built on the device that runs it. Without it, run the .onnx with ONNX Runtime."
)
ENGINE_SUFFIX = "_trt.engine"


def engine_path_for(onnx_path: Path) -> Path:
    """model.onnx -> model_trt.engine: its own name, so its sidecar does not replace the ONNX's."""
    return onnx_path.with_name(onnx_path.stem + ENGINE_SUFFIX)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(INSTALL_TENSORRT) from None
    return tensorrt


def builder_flags(record: ArtifactRecord) -> list[str]:
    """TensorRT builder flags for an artifact: FP16 for fp16; INT8 (and FP16 for what stays float) for QDQ int8."""
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[record.precision]


def build_engine(onnx_path: Path, out: Path | None = None, *, workspace_mb: int = 1024, dla_core: int | None = None,
                 timing_cache: Path | None = None, log=print) -> Path:
    """Build `out` (default model_trt.engine) from a jetson ONNX artifact; returns the engine's path."""
    onnx_path = Path(onnx_path)
    record = _jetson_record(onnx_path)
    out = Path(out) if out else engine_path_for(onnx_path)
    if sidecar_path(out) == sidecar_path(onnx_path):
        raise ArtifactError(f"{out.name} would share {sidecar_path(out).name} with the ONNX; choose another name")
    refuse_to_overwrite(out.parent, (out.name, sidecar_path(out).name), "--out",
                        recognise=lambda path: _an_engine_of_ours(out))
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConversionError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    flags = builder_flags(record)
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU
    cache = _load_timing_cache(trt, config, timing_cache)
    log(f"Building a TensorRT {trt.__version__} engine ({', '.join(flags) or 'FP32'}"
        f"{f', DLA core {dla_core}' if dla_core is not None else ''}); this takes minutes on a Jetson")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(f"TensorRT could not build an engine from {onnx_path.name}; see its log above")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
    if timing_cache is not None:
        with atomic_path(Path(timing_cache)) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    write_sidecar(out, engine_record(record, onnx_path, trt.__version__, flags, workspace_mb, dla_core))
    mark_written(out.parent, (out.name, sidecar_path(out).name))
    return out


def engine_record(record: ArtifactRecord, onnx_path: Path, version: str, flags: list[str], workspace_mb: int,
                  dla_core: int | None) -> ArtifactRecord:
    builder = {"tensorrt": version, "flags": flags, "workspace_mb": workspace_mb, "dla_core": dla_core,
               "onnx": onnx_path.name, "onnx_sha256": sha256_of(onnx_path)}
    inputs = [TensorSpec(t.name, t.shape, "float32", t.layout) for t in record.inputs]
    return dataclasses.replace(record, format="tensorrt", inputs=inputs,
                               quantization={**(record.quantization or {}), "engine": builder},
                               golden=None)  # the ONNX's golden samples check the ONNX; `edgeres verify` it


def _jetson_record(onnx_path: Path) -> ArtifactRecord:
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} does not exist")
    if onnx_path.suffix.lower() != ".onnx":
        raise ArtifactError(f"{onnx_path.name} is not an ONNX file; build engines from `--target jetson` artifacts")
    record = read_sidecar(onnx_path)
    if record is None:
        raise ArtifactError(f"{onnx_path.name} has no {sidecar_path(onnx_path).name}; convert it with "
                            "`edgeres convert --target jetson`")
    if record.target != "jetson":
        raise ArtifactError(f"{onnx_path.name} was made for target {record.target}; convert with --target jetson, "
                            "whose graph follows TensorRT's rules")
    return record


def _an_engine_of_ours(engine: Path) -> bool:
    """An engine edgeres built (before it kept a list of what it writes): its sidecar is an edgeres record
    of a TensorRT engine."""
    from .errors import EdgeresError

    try:
        record = read_sidecar(engine)
    except EdgeresError:
        return False
    return record is not None and record.format == "tensorrt"


def _network_flags(trt) -> int:
    # TensorRT 10 networks are always explicit-batch; TensorRT 8 has to be told.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    return 0 if flag is None or int(trt.__version__.split(".")[0]) >= 10 else 1 << int(flag)


def _load_timing_cache(trt, config, path: Path | None):
    exists = path is not None and (Path(path).exists() or Path(path).is_symlink())
    data = read_bytes(Path(path), MODEL_LIMIT, "TensorRT timing cache", ConversionError) if exists else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache
