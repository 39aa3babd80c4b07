"""Mobile: the ExecuTorch .pte and the TorchScript Lite .ptl, FP32 and INT8, through the same Classifier."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeres.golden import check_golden
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier

pytestmark = pytest.mark.slow


def artifacts(converted, precision: str) -> dict:
    result = converted("mobile", precision)
    (lite,) = result.companions
    return {"pte": result.path, "ptl": lite}


def logits_and_reference(path, model, held_out, count: int = 450):
    classifier = Classifier(path)
    frames, _ = held_out
    crops = [classifier.preprocess.resize_and_crop(frame) for frame in frames[:count]]
    reference = model.logits(Preprocess.imagenet(32).tensors(crops))
    return classifier, classifier.logits_batch(frames[:count]), reference


@pytest.mark.parametrize("kind", ["pte", "ptl"])
def test_fp32_matches_pytorch(converted, model, held_out, kind: str) -> None:
    classifier, ours, reference = logits_and_reference(artifacts(converted, "fp32")[kind], model, held_out, 100)
    assert classifier.backend_name == {"pte": "executorch", "ptl": "torchscript-lite"}[kind]
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.parametrize("kind", ["pte", "ptl"])
def test_int8_agrees_with_fp32_on_held_out_images(converted, model, held_out, kind: str) -> None:
    classifier, ours, reference = logits_and_reference(artifacts(converted, "int8")[kind], model, held_out)
    assert (ours.argmax(1) == reference.argmax(1)).mean() >= 0.98
    assert classifier.record.precision == "int8" and classifier.record.quantization["kind"] == "static"


def test_records_say_what_ran(converted) -> None:
    pte, ptl = (Classifier(p).record for p in artifacts(converted, "int8").values())
    assert pte.format == "pte" and pte.checks[0]["rule"] == "every op inside the XNNPACK delegate" and pte.checks[0]["passed"]
    assert "XNNPACKQuantizer" in pte.quantization["tool"] and "qnnpack" in ptl.quantization["tool"]
    optimized = ptl.checks[0]
    assert optimized["rule"] == "optimize_for_mobile ran"
    assert optimized["passed"] or "XNNPACK is not enabled" in optimized["detail"]  # this x86 build: not enabled
    assert ptl.golden["file"].endswith("_lite.golden.npz") and pte.golden["file"].endswith("int8.golden.npz")


@pytest.mark.parametrize("kind", ["pte", "ptl"])
def test_the_file_alone_carries_its_record(converted, held_out, tmp_path, kind: str) -> None:
    """Copied without its sidecar, the .pte (a constant method) and the .ptl (an extra file) still run."""
    import shutil

    original = artifacts(converted, "int8")[kind]
    alone = tmp_path / original.name
    shutil.copy(original, alone)
    classifier, with_sidecar = Classifier(alone), Classifier(original)
    assert classifier.record.to_dict() == with_sidecar.record.to_dict()
    frames, _ = held_out
    np.testing.assert_array_equal(classifier.logits_batch(frames[:8]), with_sidecar.logits_batch(frames[:8]))


def test_the_pte_record_is_read_with_executorchs_own_runtime(converted) -> None:
    """What an app's ExecuTorch Module reads: method edgeres_record returns the record's JSON."""
    import json

    from executorch.runtime import Runtime

    path = artifacts(converted, "fp32")["pte"]
    program = Runtime.get().load_program(str(path))
    assert program.method_names == {"forward", "edgeres_record"}
    record = json.loads(program.load_method("edgeres_record").execute([])[0])
    assert record["labels"] == Classifier(path).labels and record["format"] == "pte"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_both_verify(converted, precision: str) -> None:
    for path in artifacts(converted, precision).values():
        assert check_golden(Classifier(path)).passed


def test_cli_says_the_lite_interpreter_is_deprecated(checkpoint, tmp_path) -> None:
    """In a fresh process, as a user runs it: ExecuTorch's first import logs deprecations and native
    cpuinfo probes to the terminal; without --verbose none of that gets through, in convert and in
    the commands that load the .pte (predict, verify, info)."""
    done = _cli(["convert", str(checkpoint), "--target", "mobile", "--imgsz", "32", "--out", str(tmp_path)], timeout=600)
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0, err
    assert "lite interpreter (.ptl) is deprecated" in err and out.count("Wrote") == 2
    assert not [line for line in err.splitlines() if "cpuinfo" in line or "Warning" in line or
                line.startswith(("W1", "I1", "E1"))], err
    assert (tmp_path / "resnet18_mobile_fp32" / "resnet18_mobile_fp32_lite.ptl").is_file()
    assert "torchscript-lite" in out
    pte = tmp_path / "resnet18_mobile_fp32" / "resnet18_mobile_fp32.pte"
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.full((48, 48, 3), 200, np.uint8))
    for command in (["predict", str(pte), str(frame)], ["verify", str(pte)], ["info", str(pte)]):
        quiet = _cli(command)
        assert quiet.returncode == 0 and quiet.stderr == "", (command, quiet.stderr)
    loud = _cli(["predict", str(pte), str(frame), "--verbose"])
    assert loud.returncode == 0 and "cpuinfo" in loud.stderr  # what was kept out, still there on request


def _cli(arguments: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeres", *arguments], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})
