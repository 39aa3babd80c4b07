"""Accuracy of artifacts on a labelled ImageFolder, through the same Classifier API a device uses.

`evaluate` needs no torch unless the reference is a PyTorch checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .calibration.folder import Progress, find_images, no_progress
from .errors import EvaluationError
from .images import ImageError, decode_image
from .metrics import agreement, mean_kl

BATCH = 32


@dataclass
class LabelledImages:
    paths: list[Path]
    classes: np.ndarray  # the model's class index of each image
    class_names: list[str]  # the model's labels
    mapping: str  # how folder names were matched to the model's classes


@dataclass
class Metrics:
    images: int
    top1: float
    top5: float
    agreement: float | None = None  # top-1 agreement with the reference
    mean_kl: float | None = None  # mean KL(reference || this) of the class probabilities
    per_class: dict[str, float] = field(default_factory=dict)  # accuracy per class present in the data
    execution_precision: str | None = None  # what its float layers ran in (Classifier.execution_precision)


def read_labelled_folder(folder: str | Path, labels: Sequence[str]) -> LabelledImages:
    """An ImageFolder (DIR/<class>/*.jpg) whose class folders match the model's labels.

    Folders are matched by label name, else by class index (folders named 0, 1, ...); folders
    that are neither are refused rather than paired with classes by guesswork.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"--data {folder} is not a folder; give an ImageFolder (DIR/<class>/images)")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not class_dirs:
        raise EvaluationError(f"--data {folder} has no class folders; expected DIR/<class>/images")
    index, mapping = _match_classes([d.name for d in class_dirs], list(labels), folder)
    paths, classes = [], []
    for class_dir in class_dirs:
        found = find_images(class_dir)
        paths += found
        classes += [index[class_dir.name]] * len(found)
    if not paths:
        raise EvaluationError(f"--data {folder} has class folders but no images in them")
    return LabelledImages(paths, np.array(classes), list(labels), mapping)


def _match_classes(names: list[str], labels: list[str], folder: Path) -> tuple[dict[str, int], str]:
    if all(name in labels for name in names):
        return {name: labels.index(name) for name in names}, "by label"
    if all(name.isdigit() and int(name) < len(labels) for name in names):
        return {name: int(name) for name in names}, "by class index"
    unknown = [name for name in names if name not in labels]
    raise EvaluationError(
        f"--data {folder}: class folders {_few(unknown)} are neither among the model's labels "
        f"({_few(labels)}) nor class indexes (0 to {len(labels) - 1}); name each folder after its label or index"
    )


def _few(names: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def metrics(logits: np.ndarray, truth: np.ndarray, class_names: Sequence[str],
            reference: np.ndarray | None = None) -> Metrics:
    """Top-1/5 accuracy, and agreement and mean KL divergence against reference logits if given."""
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    correct = top5[:, 0] == truth
    result = Metrics(images=int(len(truth)), top1=float(correct.mean()), top5=float((top5 == truth[:, None]).any(1).mean()))
    for index in np.unique(truth):
        result.per_class[class_names[index]] = float(correct[truth == index].mean())
    if reference is not None:
        result.agreement = agreement(reference, logits)
        result.mean_kl = mean_kl(reference, logits)
    return result


def classifier_logits(classifier, paths: Sequence[Path], progress: Progress = no_progress) -> np.ndarray:
    """Logits of every image through `classifier`, preprocessing included."""
    rows = []
    batches = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    for batch in progress(batches, f"Evaluating {classifier.path.name}", len(batches)):
        rows.append(classifier.logits_batch([_read(path) for path in batch]))
    return np.concatenate(rows)


def checkpoint_logits(checkpoint: Path, arch: str, preprocess_spec: dict, labels: Sequence[str],
                      paths: Sequence[Path], progress: Progress = no_progress) -> np.ndarray:
    """Logits of the PyTorch checkpoint, preprocessed as the artifacts are (NCHW, normalised)."""
    from .models import load_model
    from .preprocess import Preprocess

    model = load_model(checkpoint, arch, labels=list(labels))
    spec = Preprocess.imagenet(Preprocess.from_dict(preprocess_spec).crop)
    rows = []
    batches = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    for batch in progress(batches, f"Evaluating {Path(checkpoint).name}", len(batches)):
        rows.append(model.logits(spec.batch([_read(path) for path in batch])))
    return np.concatenate(rows)


def _read(path: Path) -> np.ndarray:
    try:
        return decode_image(path)
    except ImageError as error:
        raise EvaluationError(f"{error}; remove it from the evaluation data") from None


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def evaluate_artifacts(artifacts: Sequence[Path], data: Path, reference: Path | None = None,
                       progress: Progress = no_progress,
                       precision: str | None = None) -> tuple[dict[str, Metrics], str | None, str]:
    """Metrics per artifact name; the reference used (None when there is none); how classes were matched.

    `precision`: the artifacts run in that mode (Classifier's); a reference artifact runs in its own.
    """
    from .runtime.classifier import Classifier

    classifiers = [Classifier(path, precision=precision) for path in artifacts]
    first = classifiers[0].record
    for classifier in classifiers[1:]:
        if classifier.record.num_classes != first.num_classes:
            raise EvaluationError(f"{classifier.path.name} has {classifier.record.num_classes} classes, "
                                  f"{classifiers[0].path.name} has {first.num_classes}; evaluate them separately")
    images = read_labelled_folder(data, first.labels)
    logits = {c.path.name: classifier_logits(c, images.paths, progress) for c in classifiers}
    reference_logits, reference_name = _reference(reference, classifiers, logits if precision is None else {},
                                                  images, progress)
    results = {name: metrics(rows, images.classes, images.class_names, reference_logits)
               for name, rows in logits.items()}
    for classifier in classifiers:
        results[classifier.path.name].execution_precision = classifier.execution_precision
    if precision is not None and reference_name is not None:
        reference_name += " in its own mode"
    return results, reference_name, images.mapping


def _reference(reference: Path | None, classifiers, logits: dict, images: LabelledImages,
               progress: Progress) -> tuple[np.ndarray | None, str | None]:
    from .runtime.classifier import Classifier

    if reference is None:
        fp32 = [c for c in classifiers if c.record.precision == "fp32"]
        if not fp32:
            return None, None
        reference = fp32[0].path
    if Path(reference).suffix.lower() in CHECKPOINT_SUFFIXES:
        record = classifiers[0].record
        rows = checkpoint_logits(Path(reference), record.arch, record.preprocess, record.labels, images.paths, progress)
        return rows, f"{Path(reference).name} (PyTorch)"
    if Path(reference).name in logits:
        return logits[Path(reference).name], Path(reference).name
    return classifier_logits(Classifier(reference), images.paths, progress), Path(reference).name
