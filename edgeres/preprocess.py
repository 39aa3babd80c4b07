"""The one preprocessing spec, implemented once with numpy and OpenCV.

Calibration, evaluation and every runtime backend call `Preprocess.__call__`, and
every artifact embeds `Preprocess.to_dict()`, so the pixels a model sees on a device
are the pixels it was calibrated and checked with.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import cv2
import numpy as np

from .errors import FrameError, PreprocessError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet eval transform resizes to 256 before a 224 crop.
RESIZE_RATIO = 256 / 224

COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = ("float32", "float16", "uint8", "int8")


@dataclass(frozen=True)
class Preprocess:
    """How a BGR frame becomes a model input.

    resize: length of the shorter side after resizing (aspect ratio kept).
    crop: side of the centre crop taken after resizing.
    mean, std: per channel, in RGB order, on the 0..1 pixel scale.
    color: channel order the model expects.
    layout: NCHW (PyTorch, ONNX) or NHWC (TFLite).
    dtype: element type of the model input.
    input_scale, input_zero_point: for integer inputs, q = round(x / scale) + zero_point,
        where x is the normalised float input.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    input_scale: float | None = None
    input_zero_point: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        _check_spec(self)

    @classmethod
    def imagenet(cls, imgsz: int = 224, **overrides: Any) -> "Preprocess":
        """torchvision's ImageNet eval transform, scaled so that the crop is `imgsz`."""
        return cls(resize=round(imgsz * RESIZE_RATIO), crop=imgsz, **overrides)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of a batch of one."""
        if self.layout == "NCHW":
            return (1, 3, self.crop, self.crop)
        return (1, self.crop, self.crop, 3)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame -> one model input without the batch axis."""
        image = self.resize_and_crop(as_bgr_uint8(frame))
        return self.to_tensor(image)

    def batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self(frame) for frame in frames])

    def tensors(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Model inputs (N, ...) from crops that `resize_and_crop` already made."""
        return np.stack([self.to_tensor(crop) for crop in crops])

    def resize_and_crop(self, frame_bgr: np.ndarray) -> np.ndarray:
        """Resize the shorter side to `resize`, then take the centre `crop` square.

        Only the pixels inside the crop are computed, with the same antialiased
        bilinear filter as torchvision/PIL, so models trained with torchvision see
        the same input here (within one grey level).
        """
        frame_bgr = _box_reduced(frame_bgr, self.resize)
        height, width = frame_bgr.shape[:2]
        return _resampler(height, width, self.resize, self.crop)(frame_bgr)

    def crop_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The part of a height x width frame that the crop shows, as (left, top, right, bottom)
        fractions of the frame: the region to hand a client that resizes whatever region it is
        given (MediaPipe's region of interest) so that it sees what the model sees.

        Not always the centred square: an odd margin cannot be split evenly, and like
        torchvision's CenterCrop the crop then sits half a resized pixel off centre.
        """
        new_h, new_w = _shorter_side_size(height, width, self.resize)
        top, left = _crop_origin(new_h, new_w, self.crop)
        return left / new_w, top / new_h, (left + self.crop) / new_w, (top + self.crop) / new_h

    def multiply_adds(self, height: int, width: int) -> int:
        """Multiply-adds `resize_and_crop` spends on one height x width frame."""
        return _resampler(height, width, self.resize, self.crop).multiply_adds

    def to_tensor(self, image_bgr: np.ndarray) -> np.ndarray:
        """A cropped BGR uint8 image -> normalised input in the spec's order, layout and dtype.

        Each output value depends on one pixel value and its channel only, so a 256-entry
        table per channel (computed once, by the formula below) replaces the arithmetic.
        """
        values = cv2.LUT(image_bgr, self._table)
        if self.color == "RGB":
            values = values[..., ::-1]
        if self.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        values = np.ascontiguousarray(values)
        return values.view(np.int8) if self.dtype == "int8" else values.astype(self.dtype, copy=False)

    @functools.cached_property
    def _table(self) -> np.ndarray:
        """(1, 256, 3): channel c of the table maps a pixel value of BGR channel c to the input value."""
        mean = np.asarray(self.mean[::-1], dtype=np.float32) * 255.0  # BGR order, as the crop
        std = np.asarray(self.std[::-1], dtype=np.float32) * 255.0
        pixels = np.arange(256, dtype=np.float32)[:, None].repeat(3, 1)
        normalised = (pixels - mean) / std
        if self.dtype in ("float32", "float16"):
            return normalised[None].astype(np.float32)  # cv2.LUT has no float16 table; cast after
        info = np.iinfo(self.dtype)
        quantised = np.clip(np.round(normalised / self.input_scale) + self.input_zero_point, info.min, info.max)
        return quantised.astype(self.dtype)[None].view(np.uint8)  # int8 travels as its bytes

    def replace(self, **changes: Any) -> "Preprocess":
        return Preprocess(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Preprocess":
        if not isinstance(record, dict):
            raise PreprocessError(f"the preprocessing record is {type(record).__name__}, not a mapping; convert again")
        known = {f.name for f in fields(cls)}
        unknown = set(record) - known
        if unknown:
            raise PreprocessError(
                f"unknown preprocessing fields {sorted(unknown)}; this edgeres knows {sorted(known)}. "
                "Upgrade edgeres to read this artifact."
            )
        try:
            return cls(**record)
        except (TypeError, ValueError) as error:
            raise PreprocessError(f"the preprocessing record {record} is malformed ({error}); convert again") from None


STAGE_RATIO = 8  # frames whose shorter side is this many times the resize or more are box-averaged first


def _box_reduced(frame: np.ndarray, resize: int) -> np.ndarray:
    """A huge frame averaged over k x k boxes first, so that the exact filter then downscales 4 to 8 times.

    The antialiased filter's taps and window both grow with the downscale, so its cost grows
    with the square of the frame's side times the crop (an 8000 x 8000 frame took 7 s); a box
    average costs one pass over the frame. The box is a coarser low-pass than the triangle,
    but at these ratios each output pixel still averages dozens of source pixels either way.
    The few rows and columns beyond a multiple of k (fewer than k) are left out evenly on
    both sides, so the centre stays where it was.
    """
    height, width = frame.shape[:2]
    factor = min(height, width) // (resize * STAGE_RATIO // 2)
    if min(height, width) < resize * STAGE_RATIO or factor < 2:
        return frame
    top, left = (height % factor) // 2, (width % factor) // 2
    used = frame[top:top + height - height % factor, left:left + width - width % factor]
    return cv2.resize(used, (used.shape[1] // factor, used.shape[0] // factor), interpolation=cv2.INTER_AREA)


def _shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    # Same arithmetic as torchvision.transforms.functional.resize with an int size.
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def _crop_origin(height: int, width: int, crop: int) -> tuple[int, int]:
    # torchvision's CenterCrop: int(round(margin / 2)), so Python's half-to-even rounding
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


class _Resampler:
    """PIL's antialiased bilinear resize of one frame size, computed only inside the crop.

    Separable and sparse: a vertical pass takes, for each output row, its few source rows
    (2 x scale + 1 taps at most) inside the crop's column window; the result is transposed
    so that the horizontal pass is again a pass over rows. Each tap is a row gather and
    a multiply-add with that tap's weight per output row. Weights and buffers are made
    once per frame size and reused: fresh multi-MB temporaries page-fault on every frame.
    """

    def __init__(self, height: int, width: int, resize: int, crop: int) -> None:
        new_h, new_w = _shorter_side_size(height, width, resize)
        top, left = _crop_origin(new_h, new_w, crop)
        row_idx, row_w = _resample_taps(height, new_h, top, crop)
        col_idx, col_w = _resample_taps(width, new_w, left, crop)
        x0, x1 = col_idx.min(), col_idx.max() + 1
        self.columns = slice(x0, x1)
        self.row_taps = [(np.ascontiguousarray(i), np.ascontiguousarray(w[:, None])) for i, w in zip(row_idx.T, row_w.T)]
        self.col_taps = [(np.ascontiguousarray(i - x0), np.ascontiguousarray(w[:, None]))
                         for i, w in zip(col_idx.T, col_w.T)]
        self.gathered = np.empty((crop, x1 - x0, 3), np.uint8)
        self.vertical, self.vertical_term = np.empty((crop, x1 - x0, 3), np.float32), np.empty((crop, x1 - x0, 3), np.float32)
        self.transposed = np.empty((x1 - x0, crop, 3), np.float32)
        self.horizontal, self.horizontal_term = np.empty((crop, crop * 3), np.float32), np.empty((crop, crop * 3), np.float32)
        self.multiply_adds = int(crop * (x1 - x0) * 3 * len(self.row_taps) + crop * crop * 3 * len(self.col_taps))

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        _row_pass(frame_bgr[:, self.columns], self.row_taps, self.gathered, self.vertical, self.vertical_term)
        cv2.transpose(self.vertical, dst=self.transposed)  # (columns, rows, 3): columns become rows
        source = self.transposed.reshape(self.transposed.shape[0], -1)
        _row_pass(source, self.col_taps, self.horizontal_term, self.horizontal, self.horizontal_term)
        crop = self.horizontal.shape[0]
        # Rounded to nearest and saturated, as cv2.convertScaleAbs does (the weights are >= 0).
        transposed_crop = cv2.convertScaleAbs(self.horizontal).reshape(crop, crop, 3)
        return cv2.transpose(transposed_crop)


def _row_pass(source: np.ndarray, taps, gathered: np.ndarray, total: np.ndarray, term: np.ndarray) -> None:
    """total = sum over taps of (source rows of the tap) x (the tap's weight per output row).

    `gathered` holds each tap's rows as they come from `source` (uint8 in the vertical pass;
    in the horizontal pass it may be `term` itself, the product then computed in place).
    """
    for number, (rows, weights) in enumerate(taps):
        np.take(source, rows, axis=0, out=gathered, mode="clip")
        weights = weights.reshape(-1, *([1] * (gathered.ndim - 1)))
        if number == 0:
            np.multiply(gathered, weights, out=total)
        else:
            np.multiply(gathered, weights, out=term)
            np.add(total, term, out=total)


_resamplers = threading.local()  # per thread: a capture thread may preprocess too


def _resampler(height: int, width: int, resize: int, crop: int) -> _Resampler:
    cache = _resamplers.__dict__.setdefault("by_size", {})
    key = (height, width, resize, crop)
    if key not in cache:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = _Resampler(*key)
    return cache[key]


def _resample_taps(src: int, dst: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights for outputs start..start+count of a src->dst resize.

    PIL's antialiased bilinear filter: a triangle whose support widens with the
    downscale factor, so every source pixel contributes (no aliasing).
    """
    scale = src / dst
    support = max(scale, 1.0)
    centers = (np.arange(start, start + count) + 0.5) * scale
    first = np.floor(centers - support + 0.5).astype(np.int64)
    indices = first[:, None] + np.arange(int(np.ceil(support)) * 2 + 1)[None, :]
    weights = np.clip(1 - np.abs((indices + 0.5 - centers[:, None]) / support), 0, None)
    weights[(indices < 0) | (indices >= src)] = 0
    weights /= weights.sum(axis=1, keepdims=True)
    used = weights.any(axis=0)
    return np.clip(indices, 0, src - 1)[:, used], weights[:, used].astype(np.float32)


MAX_SIDE = 4096


def _check_spec(spec: Preprocess) -> None:
    problems = []
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (spec.resize, spec.crop)):
        raise PreprocessError(f"resize and crop must be whole numbers, got resize={spec.resize!r} crop={spec.crop!r}")
    if spec.resize > MAX_SIDE:
        problems.append(f"resize {spec.resize} is above {MAX_SIDE} pixels, far past any classifier's input")
    if spec.crop <= 0 or spec.resize <= 0:
        problems.append(f"resize and crop must be positive, got resize={spec.resize} crop={spec.crop}")
    elif spec.crop > spec.resize:
        problems.append(f"crop {spec.crop} must not exceed resize {spec.resize}")
    if len(spec.mean) != 3 or len(spec.std) != 3:
        problems.append("mean and std need 3 values each (R, G, B)")
    elif not all(math.isfinite(v) for v in (*spec.mean, *spec.std)):
        problems.append(f"mean and std must be finite numbers, got mean {spec.mean}, std {spec.std}")
    elif min(spec.std) <= 0:
        problems.append(f"std values must be positive, got {spec.std}")
    for name, value, allowed in (
        ("color", spec.color, COLOR_ORDERS),
        ("layout", spec.layout, LAYOUTS),
        ("dtype", spec.dtype, DTYPES),
    ):
        if value not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    integer_input = spec.dtype in ("uint8", "int8")
    has_quant = spec.input_scale is not None and spec.input_zero_point is not None
    if integer_input and not has_quant:
        problems.append(f"an {spec.dtype} input needs input_scale and input_zero_point")
    if has_quant and not (math.isfinite(spec.input_scale) and spec.input_scale > 0):
        problems.append(f"input_scale must be a positive finite number, got {spec.input_scale}")
    if has_quant and (not isinstance(spec.input_zero_point, int) or not -128 <= spec.input_zero_point <= 255):
        problems.append(f"input_zero_point must be a whole number in -128..255, got {spec.input_zero_point!r}")
    if problems:
        raise PreprocessError("invalid preprocessing: " + "; ".join(problems))


def as_bgr_uint8(frame: Any) -> np.ndarray:
    """Check a frame and bring it to HxWx3 BGR uint8.

    Conversions done on purpose (documented in the README): a grayscale frame (HxW or
    HxWx1) is repeated to three channels, and a BGRA frame loses its alpha channel.
    Anything else that is not a uint8 image raises FrameError.
    """
    if frame is None:
        raise FrameError(
            "frame is None: the image or video frame could not be read "
            "(cv2.imread returns None for a missing or unreadable file; check the path)"
        )
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"expected a numpy array (as OpenCV returns), got {type(frame).__name__}")
    if frame.size == 0:
        raise FrameError(f"frame is empty (shape {frame.shape})")
    if frame.dtype != np.uint8:
        raise FrameError(
            f"expected a uint8 frame as OpenCV gives it, got {frame.dtype}; "
            "convert a float image in 0..1 with (img * 255).round().astype(np.uint8)"
        )
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise FrameError(
        f"expected an HxWx3 BGR frame (or HxW grayscale, HxWx4 BGRA), got shape {frame.shape}"
    )
