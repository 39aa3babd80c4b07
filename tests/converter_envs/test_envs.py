"""Converter environments: built once in a temporary folder, renamed into place only when the converter
imports, reused after, and never left half-built. Each test builds a real (small) virtual environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeres import converter_envs
from edgeres.converter_envs import READY, ConverterEnv, EnvironmentBuildError, ensure, env_path, python_of


@pytest.fixture
def envs_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(converter_envs.ENVS_ENV, str(tmp_path / "envs"))
    return tmp_path / "envs"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_an_environment_is_built_once_then_reused(envs_dir: Path) -> None:
    env = ConverterEnv("tiny", requirements=(), without_deps=(), imports="json", size="a few MB")
    said: list[str] = []
    python = ensure(env, said.append)
    assert python == env_path(env) / "bin" / "python" and (env_path(env) / READY).is_file()
    assert any("Building a separate environment for tiny" in line for line in said)
    assert _leftovers(envs_dir) == [env.key]
    said.clear()
    assert ensure(env, said.append) == python and said == []  # reused: nothing built, nothing said
    changed = ConverterEnv("tiny", requirements=(), without_deps=(), imports="json, os", size="a few MB")
    assert changed.key != env.key and python_of(changed) is None  # another spec is another environment


def test_a_converter_that_does_not_import_leaves_nothing_behind(envs_dir: Path) -> None:
    env = ConverterEnv("broken", requirements=(), without_deps=(), imports="edgeres_no_such_module", size="small")
    with pytest.raises(EnvironmentBuildError, match="broken was installed but does not import .*No module named"):
        ensure(env, lambda message: None)
    assert _leftovers(envs_dir) == [] and python_of(env) is None


def test_a_package_pip_cannot_find_fails_with_pips_reason(envs_dir: Path) -> None:
    env = ConverterEnv("missing", requirements=("edgeres-no-such-package==0.0.1",), without_deps=(),
                       imports="json", size="small")
    with pytest.raises(EnvironmentBuildError, match="pip could not install edgeres-no-such-package==0.0.1 .*"
                       "No matching distribution"):
        ensure(env, lambda message: None)
    assert _leftovers(envs_dir) == []


def test_a_folder_left_by_an_interrupted_build_is_not_used_and_is_replaced(envs_dir: Path) -> None:
    env = ConverterEnv("tiny", requirements=(), without_deps=(), imports="json", size="a few MB")
    half = env_path(env)
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")  # no READY: the build never finished
    assert python_of(env) is None
    python = ensure(env, lambda message: None)
    assert (half / READY).is_file()
    assert subprocess.run([str(python), "-c", "import json"]).returncode == 0
