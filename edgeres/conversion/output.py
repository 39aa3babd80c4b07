"""One conversion's files as one set, moved in whole: `OUT/<name>/`.

An artifact travels with its sidecar record, golden samples, TensorRT calibration cache
and report row; a mix of two conversions' files would fail `edgeres verify` or, worse,
pass it with the wrong labels. So each conversion stages its files in a hidden folder
beside the set and swaps the two folders with one atomic rename (Linux's
renameat2 RENAME_EXCHANGE): at any moment OUT/<name>/ holds the previous set or the new
one. A lock per name makes a second convert into the same set refuse at once; staging
folders left by a killed run are removed by the next one.

Only a set edgeres wrote is ever replaced: OUT/<name>/ must be absent, empty, or a set
(its manifest lists every file in it; a set from before manifests is recognised by its
records). A folder of anything else is the user's, and the conversion refuses to touch it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import ConversionError

STAGING, OLD, LOCK = ".edgeres-staging-", ".edgeres-old-", ".edgeres-lock-"
MANIFEST = ".edgeres-set"  # one file name a line: the files of the set, as committed
# What a set written before manifests holds for each artifact stem: exactly these names, nothing else.
SET_SUFFIXES = (".onnx", ".xml", ".bin", ".tflite", ".pte", ".ptl", ".engine", ".edgeres.json", ".golden.npz",
                ".calib.cache")
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
        refuse_foreign(self.final, "--name")
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
        files = sorted(path.name for path in self.staging.iterdir())
        (self.staging / MANIFEST).write_text("".join(f"{name}\n" for name in files))
        _sync(self.staging)
        refuse_foreign(self.final, "--name")  # again: the user may have put files there meanwhile
        if self.final.exists():
            _exchange(self.staging, self.final)
            shutil.rmtree(self.staging, ignore_errors=True)  # now the previous set
        else:
            os.rename(self.staging, self.final)
        for temporary, final in then:
            os.replace(temporary, final)
        return self.final


def refuse_foreign(folder: Path, option: str) -> None:
    """Raise unless `folder` is absent, empty, or a set edgeres wrote (nothing else in it)."""
    if folder.is_symlink():
        raise ConversionError(f"{folder} is a link; edgeres writes a set only into a folder of its own: "
                              f"choose another {option} or --out")
    if not folder.is_dir():
        return
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConversionError(f"{folder} holds files edgeres did not write ({shown}); nothing was changed. "
                              f"Choose another {option} or --out, or move them away")


def foreign_entries(folder: Path) -> list[str]:
    """What in `folder` is not part of an edgeres set: everything, unless a manifest or the records say it is."""
    entries = sorted(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")
                     for entry in folder.iterdir())
    if not entries:
        return []
    manifest = folder / MANIFEST
    if manifest.is_file() and not manifest.is_symlink():
        from ..files import SMALL_TEXT_LIMIT, read_text

        listed = set(read_text(manifest, SMALL_TEXT_LIMIT, "set manifest", ConversionError).splitlines())
        return [name for name in entries if name != MANIFEST and name not in listed]
    stems = _recorded_stems(folder)
    ours = {"report.json"} | {f"{stem}{suffix}" for stem in stems for suffix in SET_SUFFIXES}
    return [name for name in entries if name not in ours or (folder / name).is_dir()]


def _recorded_stems(folder: Path) -> list[str]:
    """Artifact names of the readable records in a set written before manifests."""
    from ..artifact import SIDECAR_SUFFIX, read_record_file
    from ..errors import EdgeresError

    stems = []
    for sidecar in folder.glob(f"*{SIDECAR_SUFFIX}"):
        try:
            if not sidecar.is_symlink():
                read_record_file(sidecar)
                stems.append(sidecar.name[: -len(SIDECAR_SUFFIX)])
        except EdgeresError:
            continue
    return stems


def _acquire(lock_path: Path, final: Path) -> int:
    try:
        handle = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:  # a link planted at the lock's name: never written through
        raise ConversionError(f"{lock_path} is not edgeres' lock file ({error.strerror}); remove it") from None
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise ConversionError(f"{lock_path} is not edgeres' lock file (not a regular file); remove it")
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
    own = re.compile(rf"({re.escape(STAGING)}|{re.escape(OLD)}){re.escape(name)}-\d+")  # not set "name-x"'s
    for path in out_dir.glob(f"{STAGING}{name}-*"):
        if own.fullmatch(path.name) and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
    for path in sorted(p for p in out_dir.glob(f"{OLD}{name}-*") if own.fullmatch(p.name) and not p.is_symlink()):
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


SCRATCH_PREFIX = "edgeres-"
SCRATCH_MARKER = ".edgeres-scratch"  # inside each scratch folder, locked while its conversion runs
SCRATCH_NAME = re.compile(rf"{re.escape(SCRATCH_PREFIX)}\d+-[a-z0-9_]{{8}}")  # mkdtemp's 8-character suffix


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for one conversion's work (exports, attempts), locked while it runs.

    A conversion killed by SIGKILL or the OOM killer cannot remove its own (about 90 MB for a
    ResNet18); the next conversion removes every one whose lock nobody holds any more (a lock,
    not a process id: ids differ between containers that share a TMPDIR).
    """
    remove_abandoned_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as folder:
        handle = os.open(Path(folder) / SCRATCH_MARKER, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield Path(folder)
        finally:
            os.close(handle)


def remove_abandoned_scratch(root: Path | None = None) -> None:
    """Remove edgeres' scratch folders whose conversion is gone: named as edgeres names them, holding its
    marker, and with nobody holding the marker's lock. Anything else in TMPDIR is not edgeres'."""
    root = Path(root or tempfile.gettempdir())
    for folder in root.glob(f"{SCRATCH_PREFIX}*"):
        if not SCRATCH_NAME.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            if folder.lstat().st_uid != os.getuid():
                continue
            handle = os.open(folder / SCRATCH_MARKER, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its conversion still runs
        finally:
            os.close(handle)
        shutil.rmtree(folder, ignore_errors=True)
