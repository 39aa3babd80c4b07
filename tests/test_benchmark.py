from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow


def test_cli_benchmark(monkeypatch, capsys, converted) -> None:
    artifacts = [converted("x86", "int8").path, converted("rpi", "int8").path]
    code, out, err = run_cli(monkeypatch, capsys, "benchmark", *artifacts, "--runs", "5", "--warmup", "1",
                             "--threads", "1", "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["artifact"] for r in results] == [p.name for p in artifacts]
    x86, rpi = results
    assert x86["runtime"] == "openvino" and rpi["runtime"].startswith("tflite")
    for r in results:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["first_inference_ms"] > 0
        assert r["peak_rss_mb"] > 10 and r["fps"] > 0 and r["runs"] == 5 and r["threads"] == 1
    assert x86["execution_precision"] == "fp32" and rpi["execution_precision"] == "int8"
    xml = artifacts[0]
    assert x86["size_mb"] == pytest.approx((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 1e6)


def test_cli_benchmark_bad_input(monkeypatch, capsys, converted, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "benchmark", tmp_path / "missing.onnx")
    assert_one_red_line(code, err, "does not exist")
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = run_cli(monkeypatch, capsys, "benchmark", tmp_path / "notes.txt")
    assert_one_red_line(code, err, "no runtime backend for '.txt' files")
    code, _, err = run_cli(monkeypatch, capsys, "benchmark", converted("onnx", "fp32").path, "--runs", "0")
    assert_one_red_line(code, err, "--runs 1 to 100000")


def test_cli_benchmark_in_a_faster_mode(monkeypatch, capsys, converted) -> None:
    """bf16 is timed where the CPU has it; elsewhere one red line names the modes there are."""
    from edgeres.runtime.openvino import host_precisions

    code, out, err = run_cli(monkeypatch, capsys, "benchmark", converted("x86", "fp32").path, "--precision", "bf16",
                             "--runs", "3", "--warmup", "1", "--json")
    if "bf16" in host_precisions():
        assert code == 0 and json.loads(out)[0]["execution_precision"] == "bf16", err
    else:
        assert_one_red_line(code, err, "cannot run in bf16 on")
