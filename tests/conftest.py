"""Shared fixtures: a ResNet18 trained in seconds on real digit images, and its artifacts;
hard models (a ResNet50 and a ResNet18 trained briefly on package photos) that plain
post-training quantization breaks.

Data sets and trained checkpoints are cached under pytest's cache folder, so only the
first run pays for training (digits about 15 s, the hard models about 2.5 min on 2 cores).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import edgeres.runtime.openvino  # noqa: F401  (imports OpenVINO first, with its telemetry off)
from edgeres.demo import DEMO_IMGSZ, DigitsData, digits_dataset, train_digits_resnet

FIXTURE_VERSION = "v2"  # bump to rebuild the cached data and models


@pytest.fixture(scope="session")
def fixture_cache(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.cache.mkdir(f"edgeres-{FIXTURE_VERSION}"))


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(fixture_cache: Path) -> None:
    """Compiled-model caches (OpenVINO) go under pytest's cache, not the user's home."""
    import os

    os.environ["EDGERES_CACHE_DIR"] = str(fixture_cache / "runtime-cache")


@pytest.fixture(scope="session")
def digits(fixture_cache: Path) -> DigitsData:
    return digits_dataset(fixture_cache / "digits")


@pytest.fixture(scope="session")
def checkpoint(digits: DigitsData, fixture_cache: Path) -> Path:
    path = fixture_cache / "resnet18_digits.pt"
    train_digits_resnet(digits, path, imgsz=DEMO_IMGSZ)
    return path


@pytest.fixture(scope="session")
def model(checkpoint: Path, digits: DigitsData):
    from edgeres.models import load_model

    return load_model(checkpoint, "resnet18", labels=digits.labels_file)


@pytest.fixture(scope="session")
def held_out(digits: DigitsData) -> tuple[list[np.ndarray], np.ndarray]:
    """Held-out BGR frames, as cv2.imread gives them, and their true classes."""
    pairs = digits.test_images()
    frames = [cv2.imread(str(path)) for path, _ in pairs]
    return frames, np.array([label for _, label in pairs])


@pytest.fixture(scope="session")
def clip(digits: DigitsData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A short video, 640x480 at 30 FPS: 13 held-out digits, 5 frames each, and each frame's class."""
    from edgeres.demo import write_clip

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    truth = write_clip(digits.test_images()[::37], path, frames_per_image=5)
    return path, truth


@pytest.fixture(scope="session")
def calib_dir(digits: DigitsData) -> Path:
    return digits.train_dir


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


_CONVERTED: dict = {}


@pytest.fixture(scope="session")
def converted(model, calib_dir: Path, artifacts_dir: Path):
    """converted(target, precision, **options) -> ConvertResult, converted once per session."""
    from edgeres.conversion.pipeline import ConvertOptions, convert

    def get(target: str, precision: str, **options):
        key = (target, precision, tuple(sorted(options.items())))
        if key not in _CONVERTED:
            name = "_".join([target, precision, *(f"{k}{v}" for k, v in sorted(options.items()))])
            name = "".join(c if c.isalnum() or c in "._-" else "-" for c in name)
            calib = calib_dir if precision == "int8" else None
            opts = ConvertOptions(target=target, precision=precision, out_dir=artifacts_dir, calib=calib,
                                  calib_size=200, imgsz=DEMO_IMGSZ, name=name, report=False, **options)
            _CONVERTED[key] = convert(model, opts, log=lambda message: None)
        return _CONVERTED[key]

    return get


@pytest.fixture
def photo_bgr() -> np.ndarray:
    """A real photo (scikit-image's astronaut), BGR as OpenCV reads it."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., ::-1])


@pytest.fixture
def copy_artifact(tmp_path: Path):
    """Copy an artifact (and its sidecar) into a fresh folder, to modify it safely."""

    def copy(path: Path, with_sidecar: bool = True) -> Path:
        from edgeres.artifact import sidecar_path

        target = tmp_path / path.name
        shutil.copy(path, target)
        if with_sidecar:
            shutil.copy(sidecar_path(path), sidecar_path(target))
        return target

    return copy


@pytest.fixture(scope="session")
def hard_model(fixture_cache: Path):
    """hard_model(name) -> (LoadedModel, PhotoSet): a model of edgeres.photoset.FIXTURES, trained once (cached)."""
    from edgeres.models import load_model
    from edgeres.photoset import FIXTURES, photo_set, train_photo_resnet

    loaded = {}

    def get(name: str):
        if name not in loaded:
            spec = FIXTURES[name]
            data = photo_set(fixture_cache / spec.data_folder, **spec.data)
            checkpoint = fixture_cache / f"{name}.pt"
            train_photo_resnet(data, checkpoint, spec.recipe)
            loaded[name] = (load_model(checkpoint, spec.recipe.arch, labels=data.labels_file), data)
        return loaded[name]

    return get


# Helpers every CLI test uses: import them from here (tests is a package).
def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`edgeres ARGS...` in this process: (exit code, stdout, stderr)."""
    from edgeres.cli import main

    monkeypatch.setattr(sys, "argv", ["edgeres", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_red_line(code: int, err: str, message: str) -> None:
    """Exit 1 with `message` in one red line at the end, and no traceback."""
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], err
