"""Reading a file someone handed edgeres: the right kind, and no larger than what it should hold.

Every file edgeres reads comes through here. A named pipe would block open() forever, a
link to /dev/zero would grow until the kernel's OOM killer, a small zip or npz can inflate
to gigabytes: so the file is opened without blocking, checked to be a regular file (a
symlink's target is what is checked), bounded by a limit that follows from what it should
hold, and read no further than that limit. Zip and npz members are judged by their headers
before anything is inflated.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from .errors import ArtifactError, EdgeresError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# What each kind of file can hold at most, with room to spare; a file above its limit is not one.
RECORD_LIMIT = 64 * MiB  # a JSON record: 100,000 labels of 200 characters are 20 MB
LABELS_LIMIT = 32 * MiB  # one label per line, 100,000 at most
MODEL_LIMIT = 4 * GiB  # a ResNet50 is 100 MB in fp32; ONNX's protobuf stops at 2 GB
CHECKPOINT_LIMIT = 4 * GiB  # a ResNet50 checkpoint with its optimizer state is 300 MB
IMAGE_LIMIT = 256 * MiB  # a compressed photo; a 100 MP camera's raw-ish PNG is 150 MB
VIDEO_LIMIT = 64 * GiB
SMALL_TEXT_LIMIT = 16 * MiB  # a list of image paths, a report's rows


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size(count: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if count >= unit:
            return f"{count / unit:.1f} {name}"
    return f"{count} bytes"


@contextlib.contextmanager
def open_checked(path: Path, limit: int, what: str, error: type[EdgeresError] = ArtifactError) -> Iterator[IO[bytes]]:
    """`path` opened for reading, once it is known to be a regular file of at most `limit` bytes.

    O_NONBLOCK: a FIFO opens at once instead of waiting for a writer, then fails the check.
    The check is made on the open descriptor, so what is checked is what is read.
    """
    path = Path(path)
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file") from None
    except OSError as failure:
        raise error(f"cannot open {what} {path}: {failure.strerror}") from None
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is {_kind(info.st_mode)}" + (f" ({os.path.realpath(path)})"
                        if os.path.islink(path) else "") + "; give a regular file")
        if info.st_size > limit:
            raise error(f"{what} {path} is {_size(info.st_size)}, more than the {_size(limit)} such a file can "
                        "hold; it is not what it claims to be, or the wrong file")
        os.set_blocking(handle, True)
        stream = os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise
    with stream:
        yield stream


def read_bytes(path: Path, limit: int, what: str, error: type[EdgeresError] = ArtifactError) -> bytes:
    with open_checked(path, limit, what, error) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:  # it grew while being read
        raise error(f"{what} {path} is more than the {_size(limit)} such a file can hold")
    return data


def read_text(path: Path, limit: int, what: str, error: type[EdgeresError] = ArtifactError,
              encoding: str = "utf-8", errors: str = "strict") -> str:
    try:
        return read_bytes(path, limit, what, error).decode(encoding, errors)
    except UnicodeDecodeError as failure:
        raise error(f"{what} {path} is not {encoding} text ({failure.reason} at byte {failure.start})") from None


def checked(path: Path, limit: int, what: str, error: type[EdgeresError] = ArtifactError) -> Path:
    """`path`, once it is known to be a regular file within `limit`: for files a library opens itself."""
    with open_checked(path, limit, what, error):
        return Path(path)


def read_zip_member(archive: zipfile.ZipFile, name: str, limit: int, what: str,
                    error: type[EdgeresError] = ArtifactError) -> bytes:
    """One member, judged by the size its header declares before it is inflated, and read no further than
    `limit` whatever the header said."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise error(f"{what} ({name}) inflates to {_size(info.file_size)}, more than the {_size(limit)} it can "
                    "hold; the file was made to exhaust memory, or is damaged")
    with archive.open(info) as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what} ({name}) inflates to more than the {_size(limit)} it can hold")
    return data


def check_inflated_size(path: Path, limit: int, what: str, error: type[EdgeresError] = ArtifactError) -> None:
    """A zip archive (a torch checkpoint, a .ptl) whose members inflate past `limit` is refused from its
    directory, before a loader inflates them; a file that is no zip passes (its size was checked)."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as failure:
        raise error(f"{what} {path} is a damaged zip archive ({failure})") from None
    if total > limit:
        raise error(f"{what} {path} inflates to {_size(total)}, more than the {_size(limit)} such a file can hold; "
                    "it was made to exhaust memory, or is damaged")


HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npz_headers(path: Path, limit: int, what: str,
                error: type[EdgeresError] = ArtifactError) -> dict[str, tuple[tuple[int, ...], object]]:
    """Shape and dtype of each array in an .npz, read from the .npy headers: nothing is inflated."""
    checked(path, limit, what, error)
    found = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as stream:
                    version = np.lib.format.read_magic(stream)
                    read_header = HEADER_READERS.get(version)
                    if read_header is None:
                        raise ValueError(f"{info.filename} is .npy version {version}, not 1.0 or 2.0")
                    shape, _, dtype = read_header(stream)
                found[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as failure:
        raise error(f"{Path(path).name} is not a readable {what} ({failure})") from None
    return found
