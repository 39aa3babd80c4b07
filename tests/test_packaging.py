"""What installing edgeres brings: the core forces no pip OpenCV (a Jetson has JetPack's), and
without any OpenCV the error says what to install."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
BLOCK_CV2 = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "cv2":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
""")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=;\[ ]", requirement, maxsplit=1)[0] for requirement in requirements}


def test_the_core_forces_no_pip_opencv() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not any("opencv" in name for name in _names(PYPROJECT["project"]["dependencies"]))
    for device in ("onnx", "x86", "rpi", "mobile"):
        assert "edgeres[opencv]" in extras[device], device  # one command on a Pi or an x86 box
    assert not any("opencv" in requirement for requirement in extras["jetson"])  # JetPack's cv2 stays visible


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_CV2 + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_without_opencv_the_api_says_what_to_install() -> None:
    result = _run("""
        import edgeres
        print(edgeres.__version__)
        edgeres.Classifier
    """)
    assert result.stdout.strip() == "0.1.0"  # import edgeres itself needs no OpenCV
    assert "py3-none-any.whl[opencv]'" in result.stderr and "--system-site-packages" in result.stderr


def test_without_opencv_the_cli_gives_one_line(tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(b"not read: the command stops before")
    result = _run(f"""
        sys.argv = ["edgeres", "predict", {str(tmp_path / "model.onnx")!r}, {str(image)!r}]
        from edgeres.cli import main
        main()
    """)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3 and "whl[opencv]" in result.stderr and "Traceback" not in result.stderr


def test_without_opencv_info_still_reads_the_record(converted) -> None:
    """A record is JSON: `edgeres info` shows it where neither OpenCV nor the runtime would load."""
    result = _run(f"""
        sys.argv = ["edgeres", "info", {str(converted("onnx", "fp32").path)!r}]
        from edgeres.cli import main
        main()
    """)
    assert result.returncode == 0, result.stderr
    assert "resnet18, 10 classes" in result.stdout and "(OpenCV is not installed)" in result.stderr


def test_no_message_sends_users_to_pypi() -> None:
    """edgeres is not on PyPI: `pip install 'edgeres[x]'` would install someone else's package or
    nothing. Every install hint goes through errors.install_hint (the wheel or the repository)."""
    import edgeres

    package = Path(edgeres.__file__).parent
    offenders = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1) if "pip install 'edgeres[" in line]
    assert offenders == []
