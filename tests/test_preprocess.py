from __future__ import annotations

import numpy as np
import pytest

from edgeres.errors import FrameError, PreprocessError
from edgeres.preprocess import Preprocess, as_bgr_uint8

# One grey level after normalisation by the smallest ImageNet std (0.224).
ONE_GREY_LEVEL = 1 / 255 / 0.224 + 1e-6
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"]


@pytest.mark.parametrize("photo", PHOTOS)
def test_matches_torchvision_imagenet_eval_transform(photo: str) -> None:
    """Within one grey level of torchvision's Resize(256)+CenterCrop(224)+Normalize, pixel by pixel."""
    import torchvision.transforms as T
    from PIL import Image
    from skimage import data

    rgb = getattr(data, photo)()
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    expected = reference(Image.fromarray(rgb)).numpy()
    ours = Preprocess.imagenet()(np.ascontiguousarray(rgb[..., ::-1]))
    assert ours.shape == expected.shape == (3, 224, 224)
    difference = np.abs(ours - expected)
    assert difference.max() <= ONE_GREY_LEVEL
    assert difference.mean() < 0.01


def test_imgsz_scales_resize_like_torchvision() -> None:
    spec = Preprocess.imagenet(320)
    assert (spec.resize, spec.crop) == (366, 320)
    assert Preprocess.imagenet().resize == 256


def test_upscaling_small_frames(photo_bgr: np.ndarray) -> None:
    small = photo_bgr[::8, ::8]  # 64x64, smaller than the crop
    assert Preprocess.imagenet()(np.ascontiguousarray(small)).shape == (3, 224, 224)


def test_layout_and_colour_order(photo_bgr: np.ndarray) -> None:
    nchw = Preprocess.imagenet(64)(photo_bgr)
    nhwc = Preprocess.imagenet(64, layout="NHWC")(photo_bgr)
    np.testing.assert_array_equal(nchw.transpose(1, 2, 0), nhwc)
    bgr_model = Preprocess.imagenet(64, color="BGR")(photo_bgr)
    np.testing.assert_allclose(bgr_model[::-1], nchw, atol=1e-6)


def test_integer_input_quantization(photo_bgr: np.ndarray) -> None:
    spec = Preprocess.imagenet(64, dtype="int8", input_scale=0.02, input_zero_point=-3)
    floats = Preprocess.imagenet(64)(photo_bgr)
    quantised = spec(photo_bgr)
    assert quantised.dtype == np.int8
    expected = np.clip(np.round(floats / 0.02) - 3, -128, 127)
    np.testing.assert_array_equal(quantised, expected)


def test_round_trip_through_dict() -> None:
    spec = Preprocess.imagenet(96, layout="NHWC", color="BGR")
    assert Preprocess.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("changes, message", [
    ({"crop": 300}, "must not exceed resize"),
    ({"layout": "CHW"}, "layout must be one of"),
    ({"color": "RGBA"}, "color must be one of"),
    ({"dtype": "uint8"}, "needs input_scale"),
    ({"std": (0.2, 0.0, 0.2)}, "std values must be positive"),
])
def test_invalid_specs_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        Preprocess(**{**Preprocess().to_dict(), **changes})


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(PreprocessError, match="unknown preprocessing fields"):
        Preprocess.from_dict({**Preprocess().to_dict(), "letterbox": True})


def test_grayscale_and_bgra_frames_are_converted() -> None:
    gray = np.full((10, 12), 7, np.uint8)
    assert as_bgr_uint8(gray).shape == (10, 12, 3)
    assert as_bgr_uint8(gray[..., None]).shape == (10, 12, 3)
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 3] = 255
    np.testing.assert_array_equal(as_bgr_uint8(bgra), np.zeros((10, 12, 3), np.uint8))


@pytest.mark.parametrize("frame, message", [
    (None, "frame is None"),
    ([[1, 2]], "expected a numpy array"),
    (np.zeros((0, 5, 3), np.uint8), "frame is empty"),
    (np.zeros((5, 5, 3), np.float32), "expected a uint8 frame"),
    (np.zeros((5, 5, 2), np.uint8), "expected an HxWx3 BGR frame"),
    (np.zeros((2, 5, 5, 3), np.uint8), "expected an HxWx3 BGR frame"),
])
def test_bad_frames_raise_frame_error(frame, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        Preprocess.imagenet(32)(frame)


def _pil_resize_and_crop(bgr: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """The reference torchvision uses: PIL's bilinear (antialiased) resize, then a centre crop."""
    from PIL import Image

    height, width = bgr.shape[:2]
    new_h, new_w = (resize, int(resize * width / height)) if height <= width else (int(resize * height / width), resize)
    top, left = int(round((new_h - crop) / 2)), int(round((new_w - crop) / 2))
    resized = np.asarray(Image.fromarray(bgr).resize((new_w, new_h), Image.BILINEAR))
    return resized[top:top + crop, left:left + crop]


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("size", [(480, 640), (1080, 1920), (301, 223), (100, 90)])
def test_resize_and_crop_is_within_one_grey_level_of_pil(photo: str, size: tuple[int, int]) -> None:
    import cv2
    from skimage import data

    rgb = getattr(data, photo)()
    frame = np.ascontiguousarray(cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA)[..., ::-1])
    spec = Preprocess.imagenet()
    difference = np.abs(spec.resize_and_crop(frame).astype(int) - _pil_resize_and_crop(frame, 256, 224))
    assert difference.max() <= 1 and difference.mean() <= 0.2, (difference.max(), difference.mean())


@pytest.mark.parametrize("size, spec", [((48, 48), Preprocess(resize=37, crop=32)),  # the digits model's
                                        ((480, 640), Preprocess.imagenet()), ((301, 223), Preprocess.imagenet())])
def test_crop_box_is_the_region_the_crop_shows(size: tuple[int, int], spec: Preprocess) -> None:
    """PIL resizing just the crop box (as a region-of-interest client does) gives the crop; the
    centred square does not where the margin is odd (37 - 32, and 341 - 224 across 640x480)."""
    import cv2
    from PIL import Image
    from skimage import data

    height, width = size
    frame = np.ascontiguousarray(cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA))
    crop = spec.resize_and_crop(frame).astype(int)

    def region(left: float, top: float, right: float, bottom: float) -> np.ndarray:
        box = (left * width, top * height, right * width, bottom * height)
        return np.asarray(Image.fromarray(frame).resize((spec.crop, spec.crop), Image.BILINEAR, box=box), int)

    assert np.abs(crop - region(*spec.crop_box(height, width))).max() <= 1
    side = min(height, width) * spec.crop / spec.resize
    centred = ((width - side) / 2 / width, (height - side) / 2 / height, (width + side) / 2 / width,
               (height + side) / 2 / height)
    assert np.abs(crop - region(*centred)).max() > 4


def test_resampling_is_sparse() -> None:
    """Only the taps each output needs: a 640x480 frame to 224 costs well under 3 M multiply-adds."""
    spec = Preprocess.imagenet()
    assert spec.multiply_adds(480, 640) <= 3_000_000
    # taps (about 2 x scale) times the window's width (about crop x scale): as PIL's own, ~4.2x here
    assert spec.multiply_adds(1080, 1920) <= 8_000_000


def test_resize_and_crop_returns_a_new_array_each_call(photo_bgr: np.ndarray) -> None:
    spec = Preprocess.imagenet(64)
    first = spec.resize_and_crop(photo_bgr)
    kept = first.copy()
    spec.resize_and_crop(np.ascontiguousarray(photo_bgr[::-1]))
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("overrides", [
    {}, {"color": "BGR", "layout": "NHWC"}, {"dtype": "float16"},
    {"dtype": "int8", "input_scale": 0.0187, "input_zero_point": -14},
    {"dtype": "uint8", "input_scale": 1.0, "input_zero_point": 0, "mean": (0, 0, 0), "std": (1 / 255,) * 3},
])
def test_table_lookup_equals_the_formula(photo_bgr: np.ndarray, overrides: dict) -> None:
    spec = Preprocess.imagenet(64, **overrides)
    crop = spec.resize_and_crop(photo_bgr)
    rgb = crop[..., ::-1] if spec.color == "RGB" else crop
    mean, std = np.float32(255) * np.asarray(spec.mean, np.float32), np.float32(255) * np.asarray(spec.std, np.float32)
    if spec.color == "BGR":
        mean, std = mean[::-1], std[::-1]
    expected = (rgb.astype(np.float32) - mean) / std
    if spec.dtype in ("int8", "uint8"):
        info = np.iinfo(spec.dtype)
        expected = np.clip(np.round(expected / spec.input_scale) + spec.input_zero_point, info.min, info.max)
    if spec.layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    tensor = spec.to_tensor(crop)
    assert tensor.dtype == np.dtype(spec.dtype) and tensor.flags.c_contiguous
    np.testing.assert_array_equal(tensor, expected.astype(spec.dtype))
