"""The classes of hostile input past the first sweep: outputs that would delete a user's files, files that
hang or exhaust a reader, numbers that are not numbers, files that crash a native loader, options past
their range, and inputs whose cost grows without bound.

Each class has a case here that failed before its fix; the same sweep is run again with other members
of each class, so each fix is to the class (the mechanism), and each test names the mechanism.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeres.artifact import sidecar_path
from edgeres.errors import ArtifactError, CheckpointError, EdgeresError
from edgeres.golden import check_golden, golden_path
from edgeres.runtime.classifier import Classifier
from tests.conftest import assert_one_red_line, run_cli


def _in_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: a hang fails the test at the timeout instead of hanging pytest."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])


def _copy_set(artifact: Path, folder: Path) -> Path:
    target = folder / artifact.parent.name
    shutil.copytree(artifact.parent, target)
    return target / artifact.name


# 1. Outputs never delete or replace what edgeres did not write.

@pytest.mark.slow
def test_convert_refuses_a_users_folder_and_leaves_it_whole(monkeypatch, capsys, checkpoint: Path,
                                                            tmp_path: Path) -> None:
    photos = tmp_path / "out" / "photos"
    (photos / "2019").mkdir(parents=True)
    (photos / "family.jpg").write_bytes(b"a family photo")
    (photos / "2019" / "beach.jpg").write_bytes(b"a beach")
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--imgsz", "32",
                           "--out", tmp_path / "out", "--name", "photos")
    assert_one_red_line(code, err, "holds files edgeres did not write (2019/, family.jpg); nothing was changed")
    assert sorted(p.name for p in photos.rglob("*")) == ["2019", "beach.jpg", "family.jpg"]
    assert (photos / "family.jpg").read_bytes() == b"a family photo"


def test_a_set_folder_with_a_users_file_added_is_refused_and_an_edgeres_set_is_replaced(tmp_path: Path) -> None:
    from edgeres.conversion.output import OutputSet
    from edgeres.errors import ConversionError

    def write(files: dict[str, bytes]) -> Path:
        with OutputSet(tmp_path, "m") as staged:
            for name, data in files.items():
                staged.add(data, name)
            return staged.commit()

    write({"m.onnx": b"old"})
    assert (write({"m.onnx": b"new"}) / "m.onnx").read_bytes() == b"new"  # its own set: replaced
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match=r"holds files edgeres did not write \(notes.txt\)"):
        write({"m.onnx": b"newer"})
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine" and (tmp_path / "m" / "m.onnx").read_bytes() == b"new"
    (tmp_path / "link").symlink_to(tmp_path / "m")
    with pytest.raises(ConversionError, match="is a link"):
        with OutputSet(tmp_path, "link"):
            pass


@pytest.mark.slow
def test_a_set_from_before_manifests_is_recognised_by_its_records(converted, tmp_path: Path) -> None:
    from edgeres.conversion.output import MANIFEST, foreign_entries

    artifact = _copy_set(converted("onnx", "fp32").path, tmp_path)
    (artifact.parent / MANIFEST).unlink()
    assert foreign_entries(artifact.parent) == []
    (artifact.parent / "holiday.jpg").write_bytes(b"x")
    assert foreign_entries(artifact.parent) == ["holiday.jpg"]


@pytest.mark.slow
def test_video_results_never_replace_a_users_files(monkeypatch, capsys, converted, clip, tmp_path: Path) -> None:
    (tmp_path / "annotated.mp4").write_bytes(b"the user's own film")
    code, _, err = run_cli(monkeypatch, capsys, "video", converted("onnx", "fp32").path, "--source", clip[0],
                           "--headless", "--out", tmp_path, "--max-frames", "3")
    assert_one_red_line(code, err, "already holds annotated.mp4, which edgeres did not write")
    assert (tmp_path / "annotated.mp4").read_bytes() == b"the user's own film"
    (tmp_path / "annotated.mp4").unlink()
    for _ in range(2):  # its own results it replaces
        code, _, err = run_cli(monkeypatch, capsys, "video", converted("onnx", "fp32").path, "--source", clip[0],
                               "--headless", "--out", tmp_path, "--max-frames", "3")
        assert code == 0, err


@pytest.mark.slow
def test_reports_engines_and_the_demo_never_replace_a_users_files(monkeypatch, capsys, checkpoint: Path,
                                                                  converted, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# my own notes\n")
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--imgsz", "32",
                           "--out", out)
    assert_one_red_line(code, err, "already holds report.md, which edgeres did not write")
    assert (out / "report.md").read_text() == "# my own notes\n" and list(out.iterdir()) == [out / "report.md"]
    jetson = _copy_set(converted("jetson", "fp32").path, tmp_path)
    (jetson.parent / "mine.engine").write_bytes(b"someone's engine")
    code, _, err = run_cli(monkeypatch, capsys, "build-engine", jetson, "--out", jetson.parent / "mine.engine")
    assert_one_red_line(code, err, "already holds mine.engine, which edgeres did not write")
    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--out", demo, "--quick")
    assert_one_red_line(code, err, "already holds data, which edgeres did not write")


# 2. Nothing hangs: a file of the wrong kind is refused at once, whatever reads it.

@pytest.mark.slow
@pytest.mark.parametrize("which", ["sidecar", "golden", "bin", "labels", "checkpoint", "image", "calib-list"])
def test_a_named_pipe_is_refused_at_once(converted, checkpoint: Path, tmp_path: Path, which: str) -> None:
    onnx_set = _copy_set(converted("onnx", "fp32").path, tmp_path / "onnx")
    x86_set = _copy_set(converted("x86", "fp32").path, tmp_path / "x86")
    pipe = {"sidecar": sidecar_path(onnx_set), "golden": golden_path(onnx_set), "bin": x86_set.with_suffix(".bin"),
            "labels": tmp_path / "labels.txt", "checkpoint": tmp_path / "model.pt", "image": tmp_path / "a.png",
            "calib-list": tmp_path / "calib.txt"}[which]
    pipe.unlink(missing_ok=True)
    os.mkfifo(pipe)
    code = {
        "sidecar": f"from edgeres import Classifier; Classifier({str(onnx_set)!r})",
        "golden": f"from edgeres import Classifier; from edgeres.golden import check_golden; "
                  f"check_golden(Classifier({str(onnx_set)!r}))",
        "bin": f"from edgeres import Classifier; Classifier({str(x86_set)!r})",
        "labels": f"from edgeres.labels import read_labels; read_labels({str(pipe)!r})",
        "checkpoint": f"from edgeres.models import load_model; load_model({str(pipe)!r}, 'resnet18')",
        "image": f"from edgeres.images import decode_image; decode_image({str(pipe)!r})",
        "calib-list": f"from edgeres.calibration import read_calibration; from edgeres.preprocess import Preprocess; "
                      f"read_calibration({str(pipe)!r}, Preprocess.imagenet(32), size=4)",
    }[which]
    done = _in_child(code, timeout=120)
    assert done.returncode == 1 and "named pipe" in done.stderr.splitlines()[-1], done.stderr[-2000:]


# 3. Reads are bounded by what a file should hold, zip and npz members by their headers.

@pytest.mark.slow
def test_a_sidecar_linked_to_an_endless_device_is_refused(converted, tmp_path: Path) -> None:
    artifact = _copy_set(converted("onnx", "fp32").path, tmp_path)
    sidecar_path(artifact).unlink()
    sidecar_path(artifact).symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match=r"record .* is a device \(/dev/zero\)"):
        Classifier(artifact)


@pytest.mark.slow
def test_a_ptl_whose_record_inflates_past_its_limit_is_refused_from_its_header(converted, tmp_path: Path) -> None:
    from edgeres.runtime.torchscript import LiteInterpreterBackend

    ptl = tmp_path / "bomb.ptl"
    source = converted("mobile", "fp32").companions[0]
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(ptl, "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in original.infolist():
            if info.filename.endswith("/extra/edgeres.json"):
                with bomb.open(info.filename, "w", force_zip64=True) as stream:  # 80 MB of spaces: 80 kB deflated
                    for _ in range(80):
                        stream.write(b" " * (1 << 20))
            else:
                bomb.writestr(info, original.read(info.filename))
    assert ptl.stat().st_size < 50 << 20
    with pytest.raises(ArtifactError, match=r"inflates to 80.0 MiB, more than the 64.0 MiB it can hold"):
        LiteInterpreterBackend.read_record(ptl)


@pytest.mark.slow
def test_a_golden_file_whose_header_claims_huge_frames_is_refused_before_inflating(converted,
                                                                                     tmp_path: Path) -> None:
    artifact = _copy_set(converted("onnx", "fp32").path, tmp_path)
    with zipfile.ZipFile(golden_path(artifact), "w", zipfile.ZIP_DEFLATED) as golden:
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1, 3), np.uint8))
        header["shape"] = (16, 5590, 5590, 3)
        with golden.open("frames.npy", "w", force_zip64=True) as stream:
            np.lib.format.write_array_header_1_0(stream, header)
            stream.write(b"\0" * (1 << 20))
    with pytest.raises(ArtifactError, match=r"frames is \(8, 32, 32, 3\) uint8, the file holds \(\(16, 5590, 5590, 3\)"):
        check_golden(Classifier(artifact))


def test_a_calibration_npz_that_inflates_past_its_limit_is_refused(tmp_path: Path) -> None:
    from edgeres.calibration import read_calibration
    from edgeres.errors import CalibrationError
    from edgeres.preprocess import Preprocess

    path = tmp_path / "calib.npz"
    with zipfile.ZipFile(path, "w") as archive:
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 1, 3), np.uint8))
        header["shape"] = (100_000, 4000, 4000, 3)
        with archive.open("images.npy", "w") as stream:
            np.lib.format.write_array_header_1_0(stream, header)
    with pytest.raises(CalibrationError, match="inflate to more than 8 GiB"):
        read_calibration(str(path), Preprocess.imagenet(32), size=4)


def test_every_file_kind_is_bounded_by_name_and_limit(tmp_path: Path) -> None:
    from edgeres.files import read_bytes

    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2048)
    with pytest.raises(ArtifactError, match=r"record .*big.json is 2.0 KiB, more than the 1.0 KiB such a file can hold"):
        read_bytes(path, 1024, "record")
    assert read_bytes(path, 4096, "record") == b" " * 2048


# 4. Numbers: what is not a number never passes as one.

@pytest.mark.parametrize("tensor, value, message", [
    ("conv1.weight", float("nan"), "tensor conv1.weight holds 1 non-finite values"),
    ("fc.weight", float("inf"), "tensor fc.weight holds 1 non-finite values"),
    ("bn1.running_var", -1.0, "BatchNorm statistics bn1.running_var hold 1 negative variances"),
])
def test_a_checkpoint_with_a_number_that_is_not_one_is_refused_at_load(model, tmp_path: Path, tensor: str,
                                                                        value: float, message: str) -> None:
    from edgeres.models import load_model

    state = {name: weights.clone() for name, weights in model.module.state_dict().items()}
    state[tensor].view(-1)[0] = value
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "broken.pt", "resnet18")


def test_a_comparison_with_a_non_finite_logit_fails() -> None:
    from edgeres.conversion.verify import enforce
    from edgeres.metrics import compare_logits, judge
    from edgeres.errors import VerificationError
    from edgeres.targets.base import Tolerance

    reference = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
    broken = np.full_like(reference, np.nan)
    found = compare_logits(reference, broken, "random images")
    assert found["top1_agreement"] == 0.0 and found["max_abs_logit_diff"] == float("inf")
    for precision in ("fp32", "fp16", "int8"):
        with pytest.raises(VerificationError, match="non-finite logits"):
            enforce(found, precision, Tolerance(), "m.onnx")
    judged = judge(broken, reference, np.array([1, 0]))
    assert judged.agreement == 0.0 and judged.accuracy == 0.0 and judged.mean_kl == float("inf")


def test_fp32_tolerance_scales_with_the_logits() -> None:
    from edgeres.targets.base import Tolerance

    assert Tolerance().fp32_allowed(10.0) == 1e-3 and Tolerance().fp32_allowed(1e4) == pytest.approx(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    (lambda r: r["preprocess"].update(std=[float("nan"), 0.2, 0.2]), "not a number a record may hold"),
    (lambda r: r["preprocess"].update(input_zero_point=1000, input_scale=0.1, dtype="uint8"),
     "input_zero_point must be a whole number in -128..255"),
    (lambda r: r["golden"]["tolerance"].update(fp32_max_abs=1e9), "golden tolerance fp32_max_abs to 1000000000.0"),
    (lambda r: r["golden"].update(samples=10**9), "holds 1000000000 samples"),
], ids=["nan-std", "zero-point", "tolerance", "samples"])
def test_a_record_with_numbers_out_of_range_is_refused(converted, tmp_path: Path, change, message: str) -> None:
    artifact = _copy_set(converted("mobile", "fp32").companions[0], tmp_path)  # .ptl: record also inside
    record = json.loads(sidecar_path(artifact).read_text())
    change(record)
    sidecar_path(artifact).write_text(json.dumps(record))  # json writes NaN as a bare NaN
    with zipfile.ZipFile(artifact) as archive:
        entries = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    with zipfile.ZipFile(artifact, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, json.dumps(record) if name.endswith("/extra/edgeres.json") else data)
    with pytest.raises(EdgeresError, match=message):
        check_golden(Classifier(artifact))


@pytest.mark.slow
def test_predict_never_returns_a_nan_probability(converted, tmp_path: Path, held_out) -> None:
    import onnx
    from onnx import numpy_helper

    artifact = _copy_set(converted("onnx", "fp32").path, tmp_path)
    graph = onnx.load(str(artifact))
    weights = next(init for init in graph.graph.initializer if numpy_helper.to_array(init).ndim == 2)
    values = numpy_helper.to_array(weights).copy()
    values[0, 0] = np.nan
    weights.CopyFrom(numpy_helper.from_array(values, weights.name))
    onnx.save(graph, str(artifact))
    classifier = Classifier(artifact)
    with pytest.raises(ArtifactError, match=f"{artifact.name} gave non-finite scores"):
        classifier.predict(held_out[0][0])
    with pytest.raises(ArtifactError, match="non-finite scores"):
        check_golden(classifier)


# 5. No aborts: a native loader never sees a file that can take the process down.

@pytest.mark.slow
@pytest.mark.parametrize("content, message", [
    (np.random.default_rng(0).bytes(4096), "lacks the ExecuTorch identifier"),
    (b"\x3c\x00\x00\x00ET12" + np.random.default_rng(1).bytes(4096), "crashed ExecuTorch"),
], ids=["random", "identifier-then-random"])
def test_a_broken_pte_is_an_error_not_an_abort(monkeypatch, capsys, tmp_path: Path, content: bytes,
                                               message: str) -> None:
    (tmp_path / "broken.pte").write_bytes(content)
    code, _, err = run_cli(monkeypatch, capsys, "predict", tmp_path / "broken.pte", tmp_path / "x.png")
    assert_one_red_line(code, err, message)


def test_an_opset_the_exporter_cannot_write_is_refused(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--imgsz", "32",
                           "--out", tmp_path, "--opset", "99")
    assert_one_red_line(code, err, "--opset must be between 18 and")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_predict_threads_past_the_cpus_are_refused(monkeypatch, capsys, converted, digits) -> None:
    image = next(iter(sorted((digits.test_dir / "one").iterdir())))
    code, _, err = run_cli(monkeypatch, capsys, "predict", converted("onnx", "fp32").path, image,
                           "--threads", "100000")
    assert_one_red_line(code, err, "threads must be between 1 and")


def _huge_png(path: Path, side: int) -> Path:
    """A PNG of side x side grey pixels, a few hundred kB: written row by row with zlib, not through memory."""
    import struct
    import zlib

    compressor = zlib.compressobj(9)
    row = b"\0" + b"\x80" * side  # filter byte, then grey pixels
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.slow
def test_an_image_too_large_to_decode_is_skipped_in_calibration_and_named_in_predict(
        monkeypatch, capsys, converted, checkpoint: Path, calib_dir: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    shutil.copytree(calib_dir / "three", calib)
    huge = _huge_png(calib / "huge.png", 60000)
    assert huge.stat().st_size < 8 << 20  # a few MB that claim 3.6 billion pixels
    code, out, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--int8", "--calib",
                             calib, "--imgsz", "32", "--out", tmp_path / "out", "--min-agreement", "0")
    assert code in (0, 1) and "(1 unreadable, skipped)" in err, err
    code, _, err = run_cli(monkeypatch, capsys, "predict", converted("onnx", "fp32").path, huge)
    assert_one_red_line(code, err, f"image {huge} is 60000 x 60000 pixels, more than the 64 megapixels")


# 6. Cost follows what is needed.

def test_a_huge_frame_costs_about_what_its_crop_needs() -> None:
    from PIL import Image

    from edgeres.preprocess import Preprocess, _box_reduced

    spec = Preprocess.imagenet(224)
    frame = cv2.resize(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8), (8000, 6000),
                       interpolation=cv2.INTER_CUBIC)
    reduced = _box_reduced(frame, spec.resize)
    assert min(reduced.shape[:2]) < 8 * spec.resize  # the exact filter sees at most 8x its output
    assert spec.multiply_adds(*reduced.shape[:2]) < spec.multiply_adds(6000, 8000) / 10
    ours = spec.resize_and_crop(frame)
    resized = np.asarray(Image.fromarray(frame[..., ::-1]).resize((341, 256), Image.BILINEAR))[..., ::-1]
    theirs = resized[16:240, 58:282]
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2  # torchvision's pixels, within 2 levels


@pytest.mark.slow
def test_an_ir_whose_weights_were_swapped_is_refused_before_it_runs(converted, tmp_path: Path) -> None:
    artifact = _copy_set(converted("x86", "fp32").path, tmp_path)
    weights = artifact.with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # another model's weights: same size and layout, other values
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{weights.name} is not the file {artifact.name} was converted with"):
        Classifier(artifact)


def test_a_killed_conversions_scratch_is_removed_by_the_next_and_nothing_else(tmp_path: Path) -> None:
    import fcntl

    from edgeres.conversion.output import SCRATCH_MARKER, remove_abandoned_scratch

    def scratch(name: str, marker: bool = True) -> Path:
        (tmp_path / name / "attempt-0").mkdir(parents=True)
        if marker:
            (tmp_path / name / SCRATCH_MARKER).write_text("")
        return tmp_path / name

    abandoned, running = scratch("edgeres-4242-abcd_123"), scratch("edgeres-4243-efgh_456")
    holiday, unmarked = scratch("edgeres-2024-holiday"), scratch("edgeres-4244-ijkl_789", marker=False)
    with open(running / SCRATCH_MARKER) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # its conversion still runs
        remove_abandoned_scratch(tmp_path)
    assert not abandoned.exists()
    assert running.exists() and holiday.exists() and unmarked.exists()  # a user's folders are never edgeres'


def test_the_sets_of_similar_names_and_planted_links_are_left_alone(tmp_path: Path) -> None:
    from edgeres.conversion.output import OLD, STAGING, OutputSet
    from edgeres.errors import ConversionError

    other_staging, other_old = tmp_path / f"{STAGING}m-x-424242", tmp_path / f"{OLD}m-x-434343"
    for folder in (other_staging, other_old):
        folder.mkdir()
    with OutputSet(tmp_path, "m") as staged:
        staged.add(b"model", "m.onnx")
        staged.commit()
    assert other_staging.exists() and other_old.exists()  # set "m-x"'s, not "m"'s
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".edgeres-lock-photos").symlink_to(tmp_path / "notes.txt")
    with pytest.raises(ConversionError, match="is not edgeres' lock file"):
        with OutputSet(tmp_path, "photos"):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_old_set_is_recognised_only_by_the_exact_names_a_set_holds(tmp_path: Path) -> None:
    from edgeres.conversion.output import foreign_entries

    work = tmp_path / "model"
    work.mkdir()
    record = {"arch": "resnet18", "num_classes": 2, "labels": ["a", "b"], "preprocess": {}, "precision": "fp32",
              "target": "onnx", "format": "onnx", "inputs": [], "outputs": [], "schema_version": 1}
    (work / "model.edgeres.json").write_text(json.dumps(record))
    for name in ("model.onnx", "model.golden.npz", "model.pth", "model.py", "model.notes.txt"):
        (work / name).write_bytes(b"x")
    (work / "model.backup").mkdir()
    assert foreign_entries(work) == ["model.backup/", "model.notes.txt", "model.pth", "model.py"]


@pytest.mark.slow
def test_sigterm_mid_convert_leaves_no_scratch(checkpoint: Path, tmp_path: Path) -> None:
    import signal
    import time

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    process = subprocess.Popen([sys.executable, "-c", "from edgeres.cli import main; main()", "convert",
                                str(checkpoint), "--target", "onnx", "--imgsz", "32", "--out", str(tmp_path / "out")],
                               env={**os.environ, "TMPDIR": str(scratch)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(scratch.glob("edgeres-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert not list(scratch.glob("edgeres-*"))
