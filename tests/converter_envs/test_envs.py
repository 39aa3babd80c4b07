"""Converter environments: built once in a temporary folder, renamed into place only when the converter
imports, reused after, and never left half-built. Each test builds a real (small) virtual environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgeres import converter_envs
from edgeres.converter_envs import (READY, ConverterEnv, EnvironmentBuildError, EnvironmentMissingError, Install,
                                    ensure, env_path, python_of, run_tool)


@pytest.fixture
def envs_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(converter_envs.ENVS_ENV, str(tmp_path / "envs"))
    return tmp_path / "envs"


def _env(name: str = "tiny", imports: str = "pip", packages: tuple[str, ...] = ()) -> ConverterEnv:
    installs = (Install(packages),) if packages else ()
    return ConverterEnv(name, installs, imports=imports, size="a few MB", tool=name)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


def test_an_environment_is_built_once_then_reused_and_runs_its_tool(envs_dir: Path, tmp_path: Path) -> None:
    env = _env()
    said: list[str] = []
    python = ensure(env, said.append)
    assert python == env_path(env) / "bin" / "python" and (env_path(env) / READY).is_file()
    assert any("Building a separate environment for tiny" in line for line in said)
    assert _leftovers(envs_dir) == [env.key]
    said.clear()
    assert ensure(env, said.append) == python and said == []  # reused: nothing built, nothing said
    # after the rename its own packages import, and a tool runs in it, isolated from this environment
    tool = tmp_path / "tool.py"
    tool.write_text("import sys, pip; print(sys.prefix, pip.__file__)\n")
    out = run_tool(env, tool, [], stdout=subprocess.PIPE, text=True).communicate()[0].split()
    assert out[0] == str(env_path(env)) and out[1].startswith(str(env_path(env)))
    reworded = ConverterEnv("tiny", (), imports="pip", size="other words", tool="tiny", note="new note")
    assert reworded.key == env.key  # what is installed names the folder, not how it is described
    assert _env(imports="pip, json").key != env.key and python_of(_env(imports="pip, json")) is None


def test_running_a_tool_never_builds_its_environment_where_told_not_to(envs_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentMissingError, match="tiny's environment is not built here .*"
                       "python -m edgeres.converter_envs.tiny"):
        run_tool(_env(), tmp_path / "tool.py", [], build=False)
    assert not envs_dir.exists() or _leftovers(envs_dir) == []


def test_a_converter_that_does_not_import_leaves_nothing_behind(envs_dir: Path) -> None:
    env = _env("broken", imports="edgeres_no_such_module")
    with pytest.raises(EnvironmentBuildError, match="broken was installed but does not import .*No module named"):
        ensure(env, lambda message: None)
    assert _leftovers(envs_dir) == [] and python_of(env) is None


def test_a_package_pip_cannot_find_fails_with_pips_reason(envs_dir: Path) -> None:
    env = _env("missing", packages=("edgeres-no-such-package==0.0.1",))
    with pytest.raises(EnvironmentBuildError, match="pip could not install edgeres-no-such-package==0.0.1 .*"
                       "No matching distribution"):
        ensure(env, lambda message: None)
    assert _leftovers(envs_dir) == []


def test_what_a_killed_build_left_is_removed_and_never_used(envs_dir: Path) -> None:
    env = _env()
    killed = envs_dir / f".{env.key}-abcd1234"  # a build's temporary folder, its process killed outright
    (killed / "bin").mkdir(parents=True)
    half = env_path(env)  # and a folder without READY in the final place
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "python").write_text("#!/bin/sh\nexit 1\n")
    assert python_of(env) is None
    python = ensure(env, lambda message: None)
    assert not killed.exists() and (half / READY).is_file()
    assert subprocess.run([str(python), "-c", "import pip"]).returncode == 0
    assert oct(half.stat().st_mode & 0o777) == "0o755"  # not mkdtemp's private 0700: a shared folder serves all
