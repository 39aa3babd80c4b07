"""The built-in default model: a ResNet trained in minutes on real images shipped in a package.

No weights or datasets can be downloaded on every machine, so the default job (and
the test suite) trains a real ResNet18 on scikit-learn's handwritten digits, rendered
as colour images and written to disk as an ImageFolder, then converts that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from .calibration.folder import find_images, read_image
from .logs import is_verbose
from .preprocess import Preprocess
from .written import mark_written, refuse_to_overwrite

DIGIT_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEMO_IMGSZ = 32
IMAGE_SIDE = 48
TEST_SHARE = 0.25


@dataclass(frozen=True)
class DigitsData:
    root: Path
    train_dir: Path
    test_dir: Path  # ImageFolder layout: test/<label>/<n>.png
    labels_file: Path

    def test_images(self) -> list[tuple[Path, int]]:
        """Held-out images with their class index, in a stable order."""
        return [(path, DIGIT_LABELS.index(path.parent.name)) for path in find_images(self.test_dir)]


def digits_dataset(root: Path) -> DigitsData:
    """Write scikit-learn's 1,797 digits as 48x48 PNGs (train/ and test/), once."""
    data = DigitsData(root, root / "train", root / "test", root / "labels.txt")
    if (root / "done").exists():
        return data
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(indices, test_size=TEST_SHARE, random_state=0, stratify=digits.target)
    rng = np.random.default_rng(0)
    for split, chosen in (("train", train), ("test", test)):
        for index in chosen:
            image = _render(digits.images[index], rng)
            folder = root / split / DIGIT_LABELS[digits.target[index]]
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{index:04d}.png"), image)
    data.labels_file.write_text("\n".join(DIGIT_LABELS) + "\n")
    (root / "done").write_text("ok\n")
    return data


def _render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 digit (0..16) as a 48x48 BGR image: ink and paper in random colours."""
    ink = digit.astype(np.float32) / 16.0
    ink = cv2.resize(ink, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_CUBIC).clip(0, 1)[..., None]
    paper = rng.uniform(150, 255, size=3)
    pen = rng.uniform(0, 100, size=3)
    return (paper * (1 - ink) + pen * ink).round().astype(np.uint8)


def load_split(folder: Path, preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    paths = find_images(folder)
    inputs = np.stack([preprocess(read_image(p)) for p in paths])
    targets = np.array([DIGIT_LABELS.index(p.parent.name) for p in paths])
    return inputs, targets


def train_digits_resnet(data: DigitsData, checkpoint: Path, *, arch: str = "resnet18",
                        imgsz: int = DEMO_IMGSZ, epochs: int = 6, seed: int = 0) -> dict:
    """Train `arch` on the digits, save its state_dict to `checkpoint`; cached by its settings."""
    settings = {"arch": arch, "imgsz": imgsz, "epochs": epochs, "seed": seed}
    info_file = checkpoint.with_suffix(".json")
    if checkpoint.exists() and info_file.exists():
        info = json.loads(info_file.read_text())
        if info.get("settings") == settings:
            return info
    torch.manual_seed(seed)
    preprocess = Preprocess.imagenet(imgsz)
    train_x, train_y = load_split(data.train_dir, preprocess)
    test_x, test_y = load_split(data.test_dir, preprocess)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=len(DIGIT_LABELS))
    fit(model, torch.from_numpy(train_x), torch.from_numpy(train_y), epochs, seed)
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(test_x)).argmax(1).numpy() == test_y).mean())
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    info = {"settings": settings, "test_accuracy": accuracy, "test_images": int(len(test_y))}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return info


def fit(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, epochs: int, seed: int, *,
        lr: float = 2e-3, weight_decay: float = 1e-4, constant_lr: bool = False) -> None:
    """AdamW in batches of 64, one-cycle schedule (or a short warm-up then constant)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(inputs) + 63) // 64)
    if constant_lr:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    else:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


DEMO_ARTIFACTS = (
    ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"), ("npu", "int8"),
    ("x86", "fp32"), ("x86", "int8"), ("rpi5", "fp32"), ("rpi5", "int8"),
)
QUICK_ARTIFACTS = (("onnx", "fp32"), ("npu", "int8"), ("x86", "int8"), ("rpi5", "int8"))


VIDEO_ARTIFACT = ("x86", "int8")  # the fastest path on an x86 machine
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")


@dataclass
class DemoInputs:
    model: object  # LoadedModel
    calib_dir: Path
    images: list[tuple[Path, int | None]]  # evaluation images and their class, None when unknown
    imgsz: int
    pytorch: dict


def run_demo(out: Path, *, epochs: int = 6, quick: bool = False, weights: str | None = None,
             progress=None, log=print) -> dict:
    """Convert for every target, score each artifact, play a clip through the fastest one.

    By default the model is a ResNet18 trained here on scikit-learn's digits (cached);
    with weights="imagenet" it is torchvision's ImageNet ResNet18 (the file must be on
    disk), calibrated and checked on crops of scikit-image's photos.
    Returns {"pytorch": ..., "artifacts": [rows], "video": summary}, also written as report.json.
    """
    out = Path(out)
    refuse_to_overwrite(out, DEMO_OUTPUTS, "--out", recognise=lambda path: _demo_report(out / "report.json"))
    out.mkdir(parents=True, exist_ok=True)
    mark_written(out, DEMO_OUTPUTS)  # claimed before the first write: a killed run's leftovers stay the demo's
    inputs = _pretrained_inputs(out, weights, log) if weights else _digits_inputs(out, epochs, log)
    rows = _score_artifacts(inputs, out, quick, progress, log)
    video = _demo_video(out, inputs.images[:: max(1, len(inputs.images) // 15)], log)
    report = {"pytorch": inputs.pytorch, "artifacts": rows, "video": video}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


DEMO_OUTPUTS = ("data", "photos", "resnet18_digits.pt", "resnet18_digits.json", "artifacts", "video", "report.json")


def _demo_report(path: Path) -> bool:
    """A demo folder written before edgeres kept a list of what it writes: its report says so."""
    from .errors import EdgeresError
    from .files import SMALL_TEXT_LIMIT, read_text

    try:
        return {"pytorch", "artifacts", "video"} <= set(json.loads(read_text(path, SMALL_TEXT_LIMIT, "demo report")))
    except (EdgeresError, ValueError, TypeError):
        return False


def _digits_inputs(out: Path, epochs: int, log) -> DemoInputs:
    from .models import load_model

    log("Preparing scikit-learn's digits as images")
    data = digits_dataset(out / "data")
    log(f"Training the default resnet18 ({epochs} epochs, cached after the first run)")
    info = train_digits_resnet(data, out / "resnet18_digits.pt", epochs=epochs)
    log(f"PyTorch resnet18: {info['test_accuracy']:.2%} top-1 on {info['test_images']} held-out images")
    model = load_model(out / "resnet18_digits.pt", "resnet18", labels=data.labels_file)
    return DemoInputs(model, data.train_dir, data.test_images(), DEMO_IMGSZ, info)


def _pretrained_inputs(out: Path, weights: str, log) -> DemoInputs:
    from .models import load_model

    model = load_model(arch="resnet18", weights=weights)
    log("Using torchvision's ImageNet resnet18; calibrating on crops of scikit-image's photos")
    calib = photo_crops(out / "photos", 64)
    images = [(path, None) for path in sorted(calib.glob("*.png"))]
    return DemoInputs(model, calib, images, 224, {"weights": model.source.get("weights")})


def _score_artifacts(inputs: DemoInputs, out: Path, quick: bool, progress, log) -> list[dict]:
    import time

    from .benchmark import artifact_size
    from .conversion.pipeline import ConvertOptions, convert
    from .runtime.classifier import Classifier

    frames = [read_image(path) for path, _ in inputs.images]
    labelled = all(label is not None for _, label in inputs.images)
    truth = np.array([label for _, label in inputs.images]) if labelled else None
    rows, reference = [], None
    for target, precision in QUICK_ARTIFACTS if quick else DEMO_ARTIFACTS:
        options = ConvertOptions(target=target, precision=precision, out_dir=out / "artifacts",
                                 calib=inputs.calib_dir, calib_size=64 if quick else 300, imgsz=inputs.imgsz,
                                 report=False, verbose=is_verbose())
        kwargs = {"progress": progress} if progress else {}
        result = convert(inputs.model, options, log=log, **kwargs)
        classifier = Classifier(result.path)
        start = time.perf_counter()
        predicted = np.array([classifier.predict(frame, topk=1)[0].index for frame in frames])
        elapsed = time.perf_counter() - start
        reference = predicted if reference is None else reference
        rows.append({
            "artifact": result.path.name, "precision": precision, "runtime": classifier.backend_name,
            "size_mb": artifact_size(result.path) / 1e6,
            "accuracy": float((predicted == truth).mean()) if labelled else None,
            "agreement": float((predicted == reference).mean()),
            "ms_per_frame": 1e3 * elapsed / len(frames),
        })
    return rows


def _demo_video(out: Path, images: list[tuple[Path, int | None]], log) -> dict:
    """Play a 640x480 clip of the evaluation images in real time, headless, through the x86 INT8 artifact."""
    from dataclasses import asdict

    from .runtime.classifier import Classifier
    from .video import VIDEO_OUTPUTS, classify_video

    target, precision = VIDEO_ARTIFACT
    name = f"resnet18_{target}_{precision}"
    artifact = out / "artifacts" / name / f"{name}.xml"
    clip = out / "video" / "clip.mp4"
    clip.parent.mkdir(parents=True, exist_ok=True)
    write_clip(images, clip, frames_per_image=10)
    log(f"Playing {clip.name} (640x480, 30 FPS) through {artifact.name}")
    mark_written(out / "video", VIDEO_OUTPUTS)  # the demo's own folder: its earlier results are its own
    summary = classify_video(Classifier(artifact), str(clip), out_dir=out / "video")
    return {**asdict(summary), "classified_share": summary.classified_share, "artifact": artifact.name}


def photo_crops(folder: Path, count: int) -> Path:
    """Write `count` seeded random crops of scikit-image's sample photos into `folder`."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [getattr(data, name)()[..., ::-1] for name in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        cv2.imwrite(str(folder / f"{index:03d}.png"), np.ascontiguousarray(photo[top : top + side, left : left + side]))
    return folder


def write_clip(images: list[tuple[Path, int]], path: Path, *, fps: float = 30.0, frames_per_image: int = 15,
               size: tuple[int, int] = (640, 480)) -> list[int]:
    """A video of `images`, each held for `frames_per_image` frames, centred; returns each frame's class."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    truth = []
    for image_path, label in images:
        image = read_image(image_path)
        side = min(width, height)  # fills the centre crop, as the training images do
        tile = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
        frame = np.full((height, width, 3), 128, np.uint8)
        top, left = (height - side) // 2, (width - side) // 2
        frame[top : top + side, left : left + side] = tile
        for _ in range(frames_per_image):
            writer.write(frame)
            truth.append(label)
    writer.release()
    return truth
