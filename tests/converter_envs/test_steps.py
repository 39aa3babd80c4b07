"""A vendor step in its environment, as edgeres runs it: progress while it works, its answer, its reason when it
fails, a crash told apart from a failure, and a served model answering batches. The steps here are small
scripts that speak tool_io's protocol, run in a real (small) virtual environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeres import converter_envs
from edgeres.converter_envs import ConverterEnv
from edgeres.converter_envs.steps import ServedModel, Vendor, run_step
from edgeres.errors import ArtifactError, ConversionError, PlanRefusedError

TOOL_IO = Path(converter_envs.__file__).with_name("tool_io.py")
HEADER = f"""import importlib.util, sys
spec = importlib.util.spec_from_file_location("tool_io", {str(TOOL_IO)!r})
tool_io = importlib.util.module_from_spec(spec); spec.loader.exec_module(tool_io)
"""
VENDOR = Vendor("Acme toolkit", lambda line: line[7:] if line.startswith("ERROR: ") else None, noise=("always",))


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> ConverterEnv:
    root = tmp_path_factory.mktemp("envs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(converter_envs.ENVS_ENV, str(root))
        tiny = ConverterEnv("steps", (), imports="pip", size="a few MB", tool="steps")
        converter_envs.ensure(tiny, lambda message: None)
    yield tiny, root


def _tool(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tool.py"
    path.write_text(HEADER + body)
    return path


def test_progress_comes_before_the_answer_and_print_never_breaks_the_channel(env, tmp_path, monkeypatch) -> None:
    tiny, root = env
    monkeypatch.setenv(converter_envs.ENVS_ENV, str(root))
    tool = _tool(tmp_path, "print('a toolkit that prints on stdout')\ntool_io.progress('half way')\n"
                           "tool_io.main({'go': lambda x: tool_io.say({'done': x})}, sys.argv[1:])\n")
    said: list[str] = []
    assert run_step(VENDOR, tiny, tool, ["go", "7"], said.append) == {"done": "7"}
    assert said == ["  Acme toolkit: half way"]


def test_a_failure_is_the_vendors_reason_and_a_crash_is_the_plans_refusal(env, tmp_path, monkeypatch) -> None:
    tiny, root = env
    monkeypatch.setenv(converter_envs.ENVS_ENV, str(root))
    failing = _tool(tmp_path, "sys.stderr.write('ERROR: always printed\\nERROR: the layer is too wide\\n')\n"
                              "def go(): raise ValueError('Traceback ...\\nValueError: bad shape')\n"
                              "sys.exit(tool_io.main({'go': go}, sys.argv[1:]))\n")
    with pytest.raises(ConversionError, match=r"^Acme toolkit: bad shape \(the layer is too wide\)$"):
        run_step(VENDOR, tiny, failing, ["go"], lambda message: None)
    crashing = _tool(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    with pytest.raises(PlanRefusedError, match=r"^Acme toolkit crashed compiling \(signal 11\)$"):
        run_step(VENDOR, tiny, crashing, [], lambda message: None, doing="compiling", crashed=PlanRefusedError)


def test_a_served_model_answers_each_batch_and_its_death_is_an_error(env, tmp_path, monkeypatch) -> None:
    tiny, root = env
    monkeypatch.setenv(converter_envs.ENVS_ENV, str(root))
    serving = _tool(tmp_path, "def serve():\n"
                    "    tool_io.say({'ready': True})\n"
                    "    for batch in tool_io.batches():\n"
                    "        tool_io.send(batch.sum(axis=(2, 3)))\n"
                    "sys.exit(tool_io.main({'serve': serve}, sys.argv[1:]))\n")
    # the tiny environment has no numpy: serve with this interpreter's, on the same protocol
    monkeypatch.setattr(converter_envs, "python_of", lambda env: Path(__import__("sys").executable))
    served = ServedModel(VENDOR, tiny, serving, ["serve"], build=False, error=ArtifactError)
    assert served.ready == {"ready": True}
    batch = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    np.testing.assert_array_equal(served.run(batch), batch.sum(axis=(2, 3)))
    served._process.kill()
    served._process.wait()
    with pytest.raises(ArtifactError, match="Acme toolkit: the Acme toolkit step stopped with status -9"):
        served.run(batch)
    served.close()
