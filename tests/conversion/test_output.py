"""A conversion's files move in as one set: OUT/<name>/ is always the previous set or the new one."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from edgeres.conversion import output
from edgeres.conversion.output import OutputSet
from edgeres.errors import ConversionError


def write_set(out: Path, name: str, files: dict[str, bytes]) -> Path:
    with OutputSet(out, name) as staged:
        for file_name, data in files.items():
            staged.add(data, file_name)
        return staged.commit()


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_a_new_set_appears_whole(tmp_path: Path) -> None:
    with OutputSet(tmp_path, "m") as staged:
        staged.add(b"model", "m.onnx")
        staged.add(b"{}", "m.edgeres.json")
        assert visible(tmp_path) == []  # nothing under a final name until the commit
        final = staged.commit()
    assert final == tmp_path / "m" and visible(final) == ["m.edgeres.json", "m.onnx"]
    assert visible(tmp_path) == ["m"]  # no staging folder left


@pytest.mark.parametrize("exchange", ["renameat2", "two renames"])
def test_a_set_replaces_the_previous_one_entirely(tmp_path: Path, monkeypatch, exchange: str) -> None:
    write_set(tmp_path, "m", {"m.onnx": b"old", "m.calib.cache": b"old cache"})
    if exchange == "two renames":  # a kernel or file system without RENAME_EXCHANGE
        monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: object())
    final = write_set(tmp_path, "m", {"m.onnx": b"new"})
    assert visible(final) == ["m.onnx"] and (final / "m.onnx").read_bytes() == b"new"
    assert visible(tmp_path) == ["m"]


def test_a_failure_before_commit_changes_nothing(tmp_path: Path) -> None:
    write_set(tmp_path, "m", {"m.onnx": b"old"})
    with pytest.raises(RuntimeError):
        with OutputSet(tmp_path, "m") as staged:
            staged.add(b"new", "m.onnx")
            raise RuntimeError("converter crashed")
    assert (tmp_path / "m" / "m.onnx").read_bytes() == b"old" and visible(tmp_path) == ["m"]


def test_a_second_convert_into_the_same_set_refuses(tmp_path: Path) -> None:
    with OutputSet(tmp_path, "m"):
        with pytest.raises(ConversionError, match=f"another edgeres convert \\(pid {os.getpid()}\\) is writing"):
            with OutputSet(tmp_path, "m"):
                pass
        with OutputSet(tmp_path, "other"):  # another name is another lock
            pass


def test_leftovers_of_a_killed_run_are_cleaned_up(tmp_path: Path) -> None:
    write_set(tmp_path, "m", {"m.onnx": b"old"})
    (tmp_path / f"{output.STAGING}m-99999").mkdir()
    (tmp_path / f"{output.STAGING}m-99999" / "m.onnx").write_bytes(b"half")
    write_set(tmp_path, "m", {"m.onnx": b"new"})
    assert visible(tmp_path) == ["m"] and not list(tmp_path.glob(f"{output.STAGING}*"))


def test_a_set_caught_between_two_renames_is_put_back(tmp_path: Path) -> None:
    """The fallback exchange renames the old set away first: a kill right then leaves it under OLD."""
    write_set(tmp_path, "m", {"m.onnx": b"old"})
    os.rename(tmp_path / "m", tmp_path / f"{output.OLD}m-12345")
    with OutputSet(tmp_path, "m"):
        assert (tmp_path / "m" / "m.onnx").read_bytes() == b"old"


def test_a_full_disk_names_the_file_and_the_space(tmp_path: Path, monkeypatch) -> None:
    write_set(tmp_path, "m", {"m.onnx": b"old"})
    monkeypatch.setattr(output.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(ConversionError, match=r"not enough disk space to write m.onnx in .* it needs 1.0 MB, "
                                              r"0.0 MB is free; nothing was changed"):
        write_set(tmp_path, "m", {"m.onnx": b"new" * 100})
    assert (tmp_path / "m" / "m.onnx").read_bytes() == b"old"


def test_a_disk_that_fills_while_writing_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    import errno

    write_set(tmp_path, "m", {"m.onnx": b"old"})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(ConversionError, match="the disk filled while writing .*m.onnx"):
        write_set(tmp_path, "m", {"m.onnx": b"new"})
    monkeypatch.undo()
    assert (tmp_path / "m" / "m.onnx").read_bytes() == b"old"


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("not a set")
    with pytest.raises(ConversionError, match="exists and is not an edgeres artifact folder"):
        write_set(tmp_path, "m", {"m.onnx": b"x"})
