"""TFLite's standard model metadata, which MediaPipe Tasks, the TFLite Task Library and
Android Studio's model binding read: the image input (colour space, normalisation, pixel
range) and the scores output with its labels file.

Written from the published schema (tflite-support's `metadata_schema.fbs`, file
identifier "M001") with the flatbuffers builder: the field slots below are that schema's
field order. The metadata library itself (tflite-support) pins a protobuf older than the
converters here, and MediaPipe's copy comes with a second OpenCV. The labels file travels
as a zip archive appended to the model, as the metadata populator writes it; TFLite
interpreters ignore bytes after the flatbuffer.
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers

NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
PARSER_VERSION = "1.0.0"  # the oldest metadata parser that knows every field used here
RGB = 1  # ColorSpaceType
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties union
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union


def build(*, name: str, description: str, version: str, size: int, mean: float, std: float,
          labels: list[str]) -> bytes:
    """The metadata flatbuffer of an RGB image classifier whose input is (pixel - mean) / std."""
    b = flatbuffers.Builder(1024)
    b.ForceDefaults(True)  # write every scalar given, default or not (RGB, sizes), as flatc would for these
    labels_file = _table(b, [(0, b.CreateString(LABELS_FILE)), (1, b.CreateString("class labels, one per line")),
                             (2, ("byte", TENSOR_AXIS_LABELS))])
    image_size = _table(b, [(0, ("uint", size)), (1, ("uint", size))])
    image = _table(b, [(0, ("byte", RGB)), (1, image_size)])
    normalization = _table(b, [(0, _floats(b, [mean])), (1, _floats(b, [std]))])
    unit = _table(b, [(0, ("ubyte", NORMALIZATION_OPTIONS)), (1, normalization)])
    stats = _table(b, [(0, _floats(b, [(255 - mean) / std])), (1, _floats(b, [(0 - mean) / std]))])
    image_content = _table(b, [(0, ("ubyte", IMAGE_PROPERTIES)), (1, image)])
    image_input = _table(b, [(0, b.CreateString("image")),
                             (1, b.CreateString(f"RGB image, {size}x{size}: the frame's centre crop")),
                             (3, image_content), (4, _vector(b, [unit])), (5, stats)])
    scores_content = _table(b, [(0, ("ubyte", FEATURE_PROPERTIES)), (1, _table(b, []))])
    scores = _table(b, [(0, b.CreateString("scores")), (1, b.CreateString("class logits (before softmax)")),
                        (3, scores_content), (6, _vector(b, [labels_file]))])
    subgraph = _table(b, [(0, b.CreateString("image_classifier")), (2, _vector(b, [image_input])),
                          (3, _vector(b, [scores]))])
    root = _table(b, [(0, b.CreateString(name)), (1, b.CreateString(description)), (2, b.CreateString(version)),
                      (3, _vector(b, [subgraph])), (4, b.CreateString("edgeres")),
                      (7, b.CreateString(PARSER_VERSION))])
    b.Finish(root, file_identifier=IDENTIFIER)
    return bytes(b.Output())


def with_labels_file(model_bytes: bytes, labels: list[str]) -> bytes:
    """The model with its labels file appended as a zip archive (stored, as the populator writes it)."""
    archive = io.BytesIO()
    archive.write(model_bytes)
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_STORED) as zipped:
        zipped.writestr(LABELS_FILE, "".join(" ".join(label.splitlines()) + "\n" for label in labels))
    return archive.getvalue()


def labels_file(model_bytes: bytes) -> list[str] | None:
    """The labels file packed after the model, or None when there is none."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zipped:
            return zipped.read(LABELS_FILE).decode().splitlines()
    except (zipfile.BadZipFile, KeyError):
        return None


def _table(b: flatbuffers.Builder, fields: list[tuple[int, object]]) -> int:
    """A table from (slot, value) pairs: an offset made earlier, or a (scalar kind, value) pair."""
    b.StartObject(max((slot for slot, _ in fields), default=-1) + 1)
    for slot, value in fields:
        if isinstance(value, tuple):
            kind, number = value
            {"byte": b.PrependInt8Slot, "ubyte": b.PrependUint8Slot, "uint": b.PrependUint32Slot}[kind](slot, number, 0)
        else:
            b.PrependUOffsetTRelativeSlot(slot, value, 0)
    return b.EndObject()


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        b.PrependUOffsetTRelative(offset)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependFloat32(float(value))
    return b.EndVector()
