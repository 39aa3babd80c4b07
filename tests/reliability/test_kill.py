"""A convert killed at any moment leaves the previous set or the new one, never a mix.

The convert runs in its own process and is SIGKILLed (no cleanup code runs) at several
moments, from reading the checkpoint to swapping the set in. After each kill the set
folder must open, its record must be the one inside the artifact, and its golden samples
must verify; the next convert must finish and remove what the killed ones left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeres.artifact import sidecar_path
from edgeres.conversion.output import MANIFEST
from edgeres.golden import check_golden
from edgeres.runtime.classifier import Classifier

pytestmark = pytest.mark.slow
KILL_AFTER_S = (0.5, 3.0, 5.5, 8.0)  # reading the checkpoint, exporting, verifying, writing the set


def _convert(checkpoint: Path, out: Path, labels: Path) -> subprocess.Popen:
    command = [sys.executable, "-c", "from edgeres.cli import main; main()", "convert", str(checkpoint), "--target", "onnx", "--imgsz", "32",
               "--labels", str(labels), "--out", str(out), "--name", "model.v1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


def _assert_consistent(set_folder: Path) -> str:
    """The set opens and verifies as one; returns the id of the conversion that made it."""
    artifact = set_folder / "model.v1.onnx"
    files = sorted(p.name for p in set_folder.iterdir() if p.name != MANIFEST)
    assert files == sorted(["model.v1.onnx", "model.v1.edgeres.json", "model.v1.golden.npz", "report.json"])
    assert (set_folder / MANIFEST).read_text().split() == files  # the manifest lists the set, and only it
    classifier = Classifier(artifact)
    assert json.loads(sidecar_path(artifact).read_text())["golden"] == classifier.record.golden
    assert check_golden(classifier).passed
    return classifier.record.golden["sha256"]


def test_a_killed_convert_leaves_a_consistent_set(checkpoint: Path, digits, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _convert(checkpoint, out, digits.labels_file)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    _assert_consistent(out / "model.v1")
    for delay in KILL_AFTER_S:
        process = _convert(checkpoint, out, digits.labels_file)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        _assert_consistent(out / "model.v1")  # the previous set or the new one, whole
    last = _convert(checkpoint, out, digits.labels_file)
    assert last.wait(timeout=300) == 0, last.stderr.read().decode()  # the killed runs' lock does not block it
    _assert_consistent(out / "model.v1")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith((".edgeres-staging-", ".edgeres-old-"))]
    assert leftovers == []
