"""Separate Python environments for vendor converters whose pins conflict with the project's.

rknn-toolkit2 pins numpy 1.x, onnx 1.18 and torch 2.4 or older; installed beside edgeres it would
break the converters of every other target. edgeres builds such a converter its own virtual
environment once, under the cache (EDGERES_CACHE_DIR, default ~/.cache/edgeres/envs), reuses it
while the spec below is unchanged, and runs the vendor step there as a separate process
(`run_tool`): nothing of it enters the main environment. An environment is built in a
temporary folder and renamed into place only once its converter imports, so an interrupted
or failed build is never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConversionError

ENVS_ENV = "EDGERES_ENVS_DIR"  # where converter environments live, if not under the cache
READY = "edgeres-env.json"  # written last, once the converter imports: a folder without it is not an environment


@dataclass(frozen=True)
class ConverterEnv:
    name: str
    requirements: tuple[str, ...]  # installed with their dependencies
    # installed without their declared dependencies: the requirements above stand in for them (why: `note`)
    without_deps: tuple[str, ...]
    imports: str  # the module that must import for the environment to count as built
    size: str  # what the user waits for
    note: str = ""

    @property
    def key(self) -> str:
        spec = json.dumps({**asdict(self), "python": sys.version_info[:2]}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"


class EnvironmentBuildError(ConversionError):
    """A converter environment could not be built (pip failed, or the converter does not import)."""


def envs_root() -> Path:
    from ..runtime.base import cache_root

    return Path(os.environ.get(ENVS_ENV) or cache_root() / "envs")


def env_path(env: ConverterEnv) -> Path:
    return envs_root() / env.key


def python_of(env: ConverterEnv) -> Path | None:
    """The interpreter of `env` where it is built, else None (nothing is built)."""
    folder = env_path(env)
    python = folder / "bin" / "python"
    return python if (folder / READY).is_file() and python.exists() else None


def ensure(env: ConverterEnv, log: Callable[[str], None] = print) -> Path:
    """The interpreter of `env`, building the environment first where it is not built (minutes, once)."""
    found = python_of(env)
    if found:
        return found
    root = envs_root()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{env.key}.lock"):
        found = python_of(env)  # another process built it while this one waited
        return found or _build(env, root, log)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build(env: ConverterEnv, root: Path, log: Callable[[str], None]) -> Path:
    final = env_path(env)
    log(f"Building a separate environment for {env.name} in {final} ({env.size}, once; later conversions reuse it): "
        f"{env.note}")
    scratch = Path(tempfile.mkdtemp(prefix=f".{env.key}-", dir=root))
    try:
        venv.EnvBuilder(with_pip=True, symlinks=True).create(scratch)
        python = scratch / "bin" / "python"
        steps = [(what, packages, flags) for what, packages, flags in [
            ("its pinned dependencies", list(env.requirements), []),
            (", ".join(env.without_deps), list(env.without_deps), ["--no-deps"])] if packages]
        for number, (what, packages, flags) in enumerate(steps, 1):
            log(f"[{number}/{len(steps)}] installing {what}")
            _pip(python, [*flags, *packages], log)
        _check_imports(python, env)
        (scratch / READY).write_text(json.dumps({**asdict(env), "key": env.key}, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)  # a folder without READY: an older, broken try
        # the venv's scripts name the folder they were made in; the interpreter itself finds its
        # packages from its own location, which is all run_tool uses
        scratch.rename(final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"Environment for {env.name} ready")
    return final / "bin" / "python"


def _pip(python: Path, arguments: list[str], log: Callable[[str], None]) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "off", *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-15:]
        if line.startswith(("Collecting ", "Processing ", "Successfully installed")):
            log(f"  {line[:160]}")
    if process.wait() != 0:
        raise EnvironmentBuildError(
            f"pip could not install {' '.join(arguments)} into the converter environment: "
            f"{' | '.join(t for t in tail if t.strip())[-1200:]}; check the network or the package index (pip's "
            "own settings, PIP_INDEX_URL and PIP_EXTRA_INDEX_URL, apply), then convert again")


def _check_imports(python: Path, env: ConverterEnv) -> None:
    done = subprocess.run([str(python), "-c", f"import {env.imports}"], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise EnvironmentBuildError(f"{env.name} was installed but does not import ({last}); the environment was "
                                    "not kept: convert again, or report it with that line")


def run_tool(env: ConverterEnv, script: Path, arguments: list[str], log: Callable[[str], None] = print,
             **popen) -> subprocess.Popen:
    """`script` (a file of edgeres that imports only what `env` has) started in `env`'s interpreter."""
    python = ensure(env, log)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.Popen([str(python), "-I", str(script), *arguments], env=clean, **popen)
