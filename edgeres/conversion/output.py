"""One conversion's files as one set, moved in whole: `OUT/<name>/`.

An artifact travels with its sidecar record, golden samples, TensorRT calibration cache
and report row; a mix of two conversions' files would fail `edgeres verify` or, worse,
pass it with the wrong labels. So each conversion stages its files in a hidden folder
beside the set and swaps the two folders with one atomic rename (Linux's
renameat2 RENAME_EXCHANGE): at any moment OUT/<name>/ holds the previous set or the new
one. A lock per name makes a second convert into the same set refuse at once; staging
folders left by a killed run are removed by the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import ConversionError

STAGING, OLD, LOCK = ".edgeres-staging-", ".edgeres-old-", ".edgeres-lock-"
RENAME_EXCHANGE = 2
SPACE_MARGIN = 1 << 20


class OutputSet:
    """Collects the files of one set in a staging folder; `commit` swaps it in."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self.out_dir, self.name = Path(out_dir), name
        self.final = self.out_dir / name
        self.staging = self.out_dir / f"{STAGING}{name}-{os.getpid()}"
        self._lock = None

    def __enter__(self) -> "OutputSet":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.final.exists() and not self.final.is_dir():
            raise ConversionError(f"{self.final} exists and is not an edgeres artifact folder; move it away "
                                  "or choose another --name")
        self._lock = _acquire(self.out_dir / f"{LOCK}{self.name}", self.final)
        _clean_up(self.out_dir, self.name, self.final)
        self.staging.mkdir()
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)

    def add(self, source: Path | bytes, name: str) -> Path:
        """Copy a file (or bytes) into the set under `name`."""
        target = self.staging / name
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        _check_space(self.out_dir, size, target)
        try:
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
        except OSError as error:
            raise _disk_error(error, target, size) from None
        return target

    def commit(self, then: tuple[tuple[Path, Path], ...] = ()) -> Path:
        """Swap the staged set in; then rename each prepared (temporary, final) pair, which needs no space."""
        _sync(self.staging)
        if self.final.exists():
            _exchange(self.staging, self.final)
            shutil.rmtree(self.staging, ignore_errors=True)  # now the previous set
        else:
            os.rename(self.staging, self.final)
        for temporary, final in then:
            os.replace(temporary, final)
        return self.final


def _acquire(lock_path: Path, final: Path) -> int:
    handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(handle)
        raise ConversionError(f"another edgeres convert (pid {holder}) is writing {final}; wait for it to "
                              "finish, or convert with another --name or --out") from None
    os.ftruncate(handle, 0)
    os.pwrite(handle, str(os.getpid()).encode(), 0)
    return handle


def _clean_up(out_dir: Path, name: str, final: Path) -> None:
    """Staging folders of killed runs go; a set caught between two renames is put back."""
    for path in out_dir.glob(f"{STAGING}{name}-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in sorted(out_dir.glob(f"{OLD}{name}-*")):
        if not final.exists():
            os.rename(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically; where the kernel or file system cannot, in two renames."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_cwd = -100
        if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(b))
    # Fallback: a kill between these two renames leaves the previous set under OLD, restored by the next run.
    old = b.with_name(f"{OLD}{b.name}-{os.getpid()}")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def _sync(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _check_space(folder: Path, size: int, target: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < size + SPACE_MARGIN:
        raise ConversionError(f"not enough disk space to write {target.name} in {folder}: it needs "
                              f"{_mb(size + SPACE_MARGIN)}, {_mb(free)} is free; nothing was changed")


def _disk_error(error: OSError, target: Path, size: int) -> Exception:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConversionError(f"the disk filled while writing {target} ({_mb(size)} needed); "
                               "nothing was changed: free some space and convert again")
    return error


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@contextlib.contextmanager
def temporary_beside(final: Path) -> Iterator[Path]:
    """A temporary file in final's folder, removed unless it has been renamed away."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.part")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
