"""Class labels: from a file (one per line) or the default class_0, class_1, ..."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .errors import LabelsError


def default_labels(num_classes: int) -> list[str]:
    return [f"class_{index}" for index in range(num_classes)]


def read_labels(path: Path | str, num_classes: int | None = None) -> list[str]:
    """Read one label per line; blank lines at the end are ignored, blank lines inside are not."""
    from .files import LABELS_LIMIT, read_bytes

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise LabelsError(f"labels file {path} does not exist; give a text file with one label per line")
    try:
        # -sig: a BOM from Windows editors is not a label
        lines = read_bytes(path, LABELS_LIMIT, "labels file", LabelsError).decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise LabelsError(f"labels file {path} is not UTF-8 (byte {error.start} cannot be decoded); "
                          "save it as UTF-8, one label per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if not labels:
        raise LabelsError(f"labels file {path} is empty; it needs one label per line")
    if any(not label for label in labels):
        raise LabelsError(f"labels file {path} has a blank line inside; every class needs a label")
    repeated = repeated_labels(labels)
    if repeated:
        raise LabelsError(f"labels file {path} repeats {', '.join(map(repr, repeated[:5]))}; every class needs "
                          "its own label (results and per-class accuracy would merge them)")
    if num_classes is not None:
        check_label_count(labels, num_classes, str(path))
    return labels


def repeated_labels(labels: list[str]) -> list[str]:
    """The labels that occur more than once, sorted."""
    return sorted(label for label, count in Counter(labels).items() if count > 1)


def check_label_count(labels: list[str], num_classes: int, where: str = "labels") -> None:
    if len(labels) != num_classes:
        raise LabelsError(
            f"{where} has {len(labels)} labels but the model has {num_classes} classes; "
            f"give exactly one label per class"
        )
