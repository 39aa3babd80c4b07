"""The CLI under hostile input: each case is one red line, exit 1, and nothing left in --out."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from tests.conftest import assert_one_red_line, run_cli


class _Exploit:
    """A checkpoint that runs a command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _labels(tmp_path: Path, content: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", ["name-dotdot", "name-slash", "imgsz-huge", "labels-latin1", "labels-duplicate",
                                  "calib-all-corrupt"])
def test_hostile_convert_input_is_one_red_line_and_leaves_nothing(monkeypatch, capsys, checkpoint: Path,
                                                                  tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    corrupt = tmp_path / "calib"
    corrupt.mkdir()
    for index in range(3):
        (corrupt / f"{index}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    args, message = {
        "name-dotdot": (["--name", "../x"], "--name"),
        "name-slash": (["--name", "a/b"], "--name"),
        "imgsz-huge": (["--imgsz", "100000"], "--imgsz must be between 32 and 1024"),
        "labels-latin1": (["--labels", _labels(tmp_path, "caf\xe9\n".encode("latin-1"), "latin.txt")], "not UTF-8"),
        "labels-duplicate": (["--labels", _labels(tmp_path, b"a\nb\na\n", "repeated.txt")], "repeats 'a'"),
        "calib-all-corrupt": (["--int8", "--calib", corrupt], "calib"),
    }[case]
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--imgsz", "32",
                           "--out", out, *args) if case != "imgsz-huge" else run_cli(
        monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--out", out, *args)
    assert_one_red_line(code, err, message)
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith(".edgeres-lock-"))
    assert not (tmp_path / "x").exists()


def test_a_malicious_pickle_never_runs(monkeypatch, capsys, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pt"
    checkpoint.write_bytes(pickle.dumps(_Exploit(marker)))
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert not marker.exists()
