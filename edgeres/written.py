"""What edgeres may overwrite: only files it wrote itself.

Commands that write beside a user's own files (video results, the output folder's reports,
an engine, the demo's folder) keep a list of what they wrote in a hidden file of that
folder. A file of the same name that is not on the list (nor recognisably edgeres' own,
for folders written before the list existed) is the user's: the command refuses, naming
it, before it writes anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from .errors import EdgeresError

MARKER = ".edgeres-written"  # one name a line: the files edgeres wrote in this folder


def written_here(folder: Path) -> set[str]:
    from .files import SMALL_TEXT_LIMIT, read_text

    marker = Path(folder) / MARKER
    if not marker.is_file() or marker.is_symlink():
        return set()
    return set(read_text(marker, SMALL_TEXT_LIMIT, "list of files edgeres wrote", errors="replace").splitlines())


def refuse_to_overwrite(folder: Path, names: Iterable[str], option: str,
                        recognise: Callable[[Path], bool] = lambda path: False) -> None:
    """Raise EdgeresError if one of `names` exists in `folder` and edgeres did not write it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():  # a link to a folder (a data disk) is that folder
        raise EdgeresError(f"{option} {folder} is a file; give a folder")
    if not folder.is_dir():
        return
    ours = written_here(folder)
    theirs = [name for name in names if _exists(folder / name) and name not in ours
              and not (not (folder / name).is_symlink() and recognise(folder / name))]
    if theirs:
        raise EdgeresError(f"{folder} already holds {', '.join(theirs)}, which edgeres did not write; nothing was "
                           f"changed. Choose another {option}, or move {'it' if len(theirs) == 1 else 'them'} away")


def mark_written(folder: Path, names: Iterable[str]) -> None:
    """Add `names` to the folder's list of what edgeres wrote."""
    from .artifact import atomic_path

    folder = Path(folder)
    listed = written_here(folder) | set(names)
    with atomic_path(folder / MARKER) as tmp:
        tmp.write_text("".join(f"{name}\n" for name in sorted(listed)))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()
