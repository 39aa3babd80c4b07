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

from ..errors import ConversionError, EdgeresError

ENVS_ENV = "EDGERES_ENVS_DIR"  # where converter environments live, if not under the cache
READY = "edgeres-env.json"  # written last, once the converter imports: a folder without it is not an environment


@dataclass(frozen=True)
class Install:
    """One pip install into the environment, in order."""

    packages: tuple[str, ...]
    pip_args: tuple[str, ...] = ()  # e.g. --no-deps, where an earlier step stands in for declared pins


@dataclass(frozen=True)
class ConverterEnv:
    name: str
    installs: tuple[Install, ...]
    imports: str  # the module that must import for the environment to count as built
    size: str  # what the user waits for
    tool: str  # the module of this package that defines it: python -m edgeres.converter_envs.TOOL builds it
    note: str = ""

    @property
    def key(self) -> str:
        """The folder name: what is installed decides it, not how it is described."""
        installed = [[asdict(step) for step in self.installs], self.imports, sys.version_info[:2]]
        return f"{self.name}-{hashlib.sha256(json.dumps(installed).encode()).hexdigest()[:12]}"


class EnvironmentBuildError(ConversionError):
    """A converter environment could not be built (pip failed, or the converter does not import)."""


class EnvironmentMissingError(EdgeresError):
    """A converter environment is needed to run something (a simulator) and is not built."""


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
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EnvironmentBuildError(f"cannot make {root} for {env.name}'s environment ({error.strerror}): set "
                                    f"{ENVS_ENV} to a writable folder") from None
    with _locked(root / f".{env.key}.lock", env, log):
        found = python_of(env)  # another process built it while this one waited
        if found:
            return found
        for stale in root.glob(f".{env.key}-*"):  # a build killed outright (SIGKILL) left it: nothing can use it
            shutil.rmtree(stale, ignore_errors=True)
        return _build(env, root, log)


@contextlib.contextmanager
def _locked(path: Path, env: ConverterEnv, log: Callable[[str], None]) -> Iterator[None]:
    import fcntl  # here, not at import: the runtime side imports this package on any OS

    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"Waiting for another edgeres process that is building {env.name}'s environment")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build(env: ConverterEnv, root: Path, log: Callable[[str], None]) -> Path:
    final = env_path(env)
    log(f"Building a separate environment for {env.name} in {final} ({env.size}, once; later conversions reuse it): "
        f"{env.note}")
    scratch = Path(tempfile.mkdtemp(prefix=f".{env.key}-", dir=root))
    try:
        _create_venv(scratch)
        python = scratch / "bin" / "python"
        for number, step in enumerate(env.installs, 1):
            log(f"[{number}/{len(env.installs)}] installing {', '.join(step.packages)}")
            _pip(python, [*step.pip_args, *step.packages], log)
        _check_imports(python, env)
        (scratch / READY).write_text(json.dumps({**asdict(env), "key": env.key}, indent=2) + "\n")
        scratch.chmod(0o755)  # mkdtemp made it private; a shared EDGERES_ENVS_DIR serves every user
        shutil.rmtree(final, ignore_errors=True)  # a folder without READY: an older, broken try
        # the venv's scripts (bin/pip, activate) name the folder they were made in and break here; the
        # interpreter finds its packages from its own location, which is all run_tool uses
        try:
            scratch.rename(final)
        except OSError as error:
            raise EnvironmentBuildError(f"could not move {env.name}'s new environment into {final} "
                                        f"({error.strerror}): remove that folder, then convert again") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"Environment for {env.name} ready")
    return final / "bin" / "python"


def _create_venv(folder: Path) -> None:
    try:
        venv.EnvBuilder(with_pip=True, symlinks=True).create(folder)
    except (OSError, subprocess.CalledProcessError) as error:
        raise EnvironmentBuildError(
            f"could not make a virtual environment with pip in {folder.parent} ({error}); this Python needs its "
            "venv and ensurepip modules (Debian and Ubuntu: apt install python3-venv)") from None


def _pip(python: Path, arguments: list[str], log: Callable[[str], None]) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--progress-bar", "off", *arguments]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    with killed_on_error(process):  # interrupted: pip must not go on writing into the folder being removed
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


@contextlib.contextmanager
def killed_on_error(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """`process`, killed and reaped if the block fails or is interrupted (no orphan goes on working)."""
    try:
        yield process
    except BaseException:
        process.kill()
        process.wait()
        raise


def run_tool(env: ConverterEnv, script: Path, arguments: list[str], log: Callable[[str], None] = print,
             build: bool = True, **popen) -> subprocess.Popen:
    """`script` (a file of edgeres that imports only what `env` has) started in `env`'s interpreter, which is
    built first where `build` (a conversion); else a missing environment is an EnvironmentMissingError."""
    python = ensure(env, log) if build else python_of(env)
    if python is None:
        raise EnvironmentMissingError(f"{env.name}'s environment is not built here (it is built by the first "
                                      f"conversion that needs it, or by: python -m edgeres.converter_envs.{env.tool})")
    # -I: the script's own folder must not shadow the converter's packages (this package has a module rknn.py)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.Popen([str(python), "-I", str(script), *arguments], env=clean, **popen)
