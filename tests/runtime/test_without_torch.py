"""The runtime side must work on a device that has no torch (a Raspberry Pi, say)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

BLOCK_HEAVY_IMPORTS = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "onnx", "onnxscript", "sklearn", "nncf", "litert_torch", "ai_edge_quantizer"}:
                raise ImportError(f"{name} is blocked: not installed on this device")
    sys.meta_path.insert(0, Block())
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY_IMPORTS + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("target", ["npu", "x86", "rpi"])
def test_classifier_predicts_without_torch(converted, digits, target: str) -> None:
    artifact = converted(target, "int8").path
    image = sorted(digits.test_dir.rglob("*.png"))[0]
    result = _run(f"""
        import cv2, edgeres
        classifier = edgeres.Classifier({str(artifact)!r})
        predictions = classifier.predict(cv2.imread({str(image)!r}), topk=1)
        assert next(classifier.stream([cv2.imread({str(image)!r})], topk=1)) == predictions
        assert not {{"torch", "onnx", "nncf", "litert_torch"}} & set(sys.modules)
        print(predictions[0].label)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == image.parent.name


def test_cli_predict_info_and_verify_without_torch(converted, digits) -> None:
    artifact = converted("npu", "int8").path
    image = sorted(digits.test_dir.rglob("*.png"))[0]
    result = _run(f"""
        sys.argv = ["edgeres", "predict", {str(artifact)!r}, {str(image)!r}, "--topk", "1", "--json"]
        from edgeres.cli import main
        try:
            main()
        except SystemExit as exit:
            assert not exit.code, exit.code
        for command in ("info", "verify"):
            sys.argv = ["edgeres", command, {str(artifact)!r}]
            try:
                main()
            except SystemExit as exit:
                assert not exit.code, exit.code
    """)
    assert result.returncode == 0, result.stderr
    assert image.parent.name in result.stdout and "QDQ around every op" in result.stdout
