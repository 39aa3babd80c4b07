"""Exported repositories served by the real `tritonserver` binary (Triton 2.51.0 from the nvidia-pytriton
wheel, CPU, Python backend) on loopback, asked over HTTP and gRPC by tritonclient and by a plain JSON
client written here from the KServe v2 protocol. Skipped, with the reason, where the binary cannot run."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edgeres.errors import ServingError
from edgeres.runtime.classifier import Classifier
from edgeres.serving.client import ServedModel, _unanswered, check_served, served_golden
from edgeres.serving.load import run_load
from edgeres.serving.repository import REPOSITORY, ExportOptions, export_repository
from edgeres.serving.server import TritonServer, check_python_backend_here, find_server
from tests.conftest import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("tritonclient.grpc")
QUIET = dict(log=lambda message: None)


@pytest.fixture(scope="module")
def install():
    reason = check_python_backend_here()
    if reason:
        pytest.skip(reason)
    try:
        return find_server(log=lambda message: None)
    except ServingError as error:
        pytest.skip(f"no tritonserver to run: {error}")


def serve(folder, install, tmp_path_factory) -> TritonServer:
    return TritonServer(folder / REPOSITORY, install=install,
                        log_path=tmp_path_factory.mktemp("log") / "tritonserver.log").start()


@pytest.fixture(scope="module")
def served(converted, install, tmp_path_factory):
    """The digits ResNet18's ONNX INT8 set, exported for the Python backend and served."""
    result = converted("onnx", "int8")
    exported = export_repository(result.path, tmp_path_factory.mktemp("served") / "export",
                                 ExportOptions(backend="python", max_batch=4), **QUIET)
    server = serve(exported.folder, install, tmp_path_factory)
    yield result, exported, server
    server.stop()


def golden(exported):
    samples = served_golden(exported.folder)
    return samples.frames, samples.expected


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_answers_are_the_artifacts_own(served, protocol):
    _, exported, server = served
    check = check_served(exported.folder, server.http_url if protocol == "http" else server.grpc_url, protocol)
    assert not check.failures
    for path in (check.frames, check.images):  # the same runtime on the same CPU: the same numbers
        assert path.top1_vs_expected == 1.0 and path.max_abs_vs_expected < 1e-4


def test_a_plain_json_client_gets_the_classifiers_labels(served, photo_bgr):
    """KServe v2 JSON over HTTP, with no tritonclient: a raw frame in, Triton's classification out."""
    result, exported, server = served
    frame = cv2.resize(photo_bgr, (48, 40))
    body = {"inputs": [{"name": "FRAME", "shape": [1, *frame.shape], "datatype": "UINT8",
                        "data": frame.reshape(-1).tolist()}],
            "outputs": [{"name": "LOGITS", "parameters": {"classification": 3}}]}
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{exported.name}_frame/infer",
                                     json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        outputs = json.loads(answer.read())["outputs"]
    classifier = Classifier(result.path)
    logits = classifier.logits(frame)
    served_top = [entry.split(":", 2) for entry in outputs[0]["data"]]  # score:index:label
    for score, index, label in served_top:  # quantized logits tie: compare values, not the order of equals
        assert float(score) == pytest.approx(logits[int(index)], abs=1e-5) and label == classifier.labels[int(index)]
    assert sorted(float(score) for score, _, _ in served_top) == pytest.approx(sorted(logits)[-3:], abs=1e-5)


def test_a_file_that_is_no_image_fails_alone(served):
    _, exported, server = served
    model = ServedModel(server.http_url, exported.name)
    with pytest.raises(ServingError, match="not an image OpenCV can decode"):
        model.logits_of_images([b"GIF89a but not really" * 3])
    frames, expected = golden(exported)
    png = cv2.imencode(".png", frames[0])[1].tobytes()
    assert model.classify_image(png, topk=1)[0].index == expected[0].argmax()  # the server goes on
    model.close()


def test_bounded_load_without_a_failed_or_wrong_answer(served):
    _, exported, server = served
    frames, expected = golden(exported)
    images = [cv2.imencode(".png", frame)[1].tobytes() for frame in frames]
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        result = run_load(url, exported.name, images, expected, protocol=protocol, clients=4, requests=120,
                          seconds=120)
        assert (result.answered, result.failed, result.wrong, result.unsent) == (120, 0, 0, 0), result.errors
        assert 0 < result.percentile(50) <= result.percentile(99)


def test_a_killed_and_restarted_server_loses_no_request(served):
    """SIGKILL mid-load, then a restart on the same ports: clients resend what was never answered (safe:
    classifying twice changes nothing), and every request ends answered, rightly."""
    _, exported, server = served
    frames, expected = golden(exported)
    images = [cv2.imencode(".png", frame)[1].tobytes() for frame in frames]
    restarts = []

    def kill_and_restart():
        server.kill()
        server.start()
        restarts.append(time.monotonic())

    result = run_load(server.grpc_url, exported.name, images, expected, protocol="grpc", clients=4, requests=200,
                      seconds=240, retries=200, during=kill_and_restart)
    assert restarts and result.during_ran and server.ready()
    assert (result.answered, result.failed, result.wrong, result.unsent) == (200, 0, 0, 0), result.errors
    assert result.retried >= 1  # the kill did land while requests were in flight or being sent


def test_check_fails_a_server_whose_preprocessing_was_edited(served, install, tmp_path_factory, monkeypatch,
                                                             capsys):
    """A repository whose served preprocessing is not the artifact's (its std edited on the server) answers
    otherwise; `edgeres triton check` says so and exits 1."""
    _, exported, _ = served
    edited = tmp_path_factory.mktemp("edited") / "export"
    shutil.copytree(exported.folder, edited)
    for kind in ("image", "frame"):
        path = edited / REPOSITORY / f"{exported.name}_preprocess_{kind}" / "1" / "edgeres.json"
        record = json.loads(path.read_text())
        record["preprocess"]["std"] = [value * 3 for value in record["preprocess"]["std"]]
        path.write_text(json.dumps(record))
    server = serve(edited, install, tmp_path_factory)
    try:
        code, out, err = run_cli(monkeypatch, capsys, "triton", "check", edited, "--url", server.http_url)
    finally:
        server.stop()
    assert_one_red_line(code, err, "answers otherwise than its artifact")


def test_an_unbatched_repository_serves_too(converted, install, tmp_path_factory, monkeypatch, capsys):
    """--max-batch 0 (what a static model in Triton's own backend gets): every dims starts with the 1."""
    result = converted("x86", "int8")  # OpenVINO, run by edgeres' runtime inside the Python backend
    exported = export_repository(result.path, tmp_path_factory.mktemp("unbatched") / "export",
                                 ExportOptions(backend="python", max_batch=0), **QUIET)
    server = serve(exported.folder, install, tmp_path_factory)
    try:
        code, out, err = run_cli(monkeypatch, capsys, "triton", "check", exported.folder, "--url", server.grpc_url,
                                 "--grpc")
    finally:
        server.stop()
    assert code == 0, err
    assert "passed" in out


def test_what_counts_as_unanswered():
    from tritonclient.utils import InferenceServerException

    assert _unanswered(ConnectionRefusedError(111, "Connection refused"))
    assert _unanswered(InferenceServerException("connection closed."))
    assert _unanswered(InferenceServerException("failed", status="StatusCode.UNAVAILABLE"))
    assert not _unanswered(InferenceServerException("in ensemble 'x', a 5-byte IMAGE is not an image",
                                                    status="400"))
    assert not _unanswered(ValueError("bad shape"))


def test_one_clients_nan_input_fails_only_its_own_request(served):
    """Requests Triton batches together run as one; a NaN tensor sent straight to NAME_model must not fail the
    others' requests in its batch."""
    import threading

    import tritonclient.http as httpclient

    _, exported, server = served
    frames, expected = golden(exported)
    images = [cv2.imencode(".png", frame)[1].tobytes() for frame in frames]
    outcome = {}
    load = threading.Thread(target=lambda: outcome.update(result=run_load(
        server.http_url, exported.name, images, expected, clients=3, requests=90, seconds=120)))
    load.start()
    client = httpclient.InferenceServerClient(server.http_url)
    poison = np.full((1, 3, 32, 32), np.nan, np.float32)
    refused = 0
    while load.is_alive():
        tensor = httpclient.InferInput("INPUT", list(poison.shape), "FP32")
        tensor.set_data_from_numpy(poison)
        try:
            client.infer(f"{exported.name}_model", [tensor])
        except Exception as error:
            refused += "NaN or inf" in str(error)
    load.join()
    client.close()
    result = outcome["result"]
    assert refused > 0
    assert (result.answered, result.failed, result.wrong) == (90, 0, 0), result.errors


def test_a_taken_port_is_said_before_anything_starts(served, install):
    import socket

    _, exported, _ = served
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = TritonServer(exported.repository, http_port=taken, install=install)
        with pytest.raises(ServingError, match=f"127.0.0.1:{taken} is taken"):
            server.start()
        assert server.process is None


def test_check_refuses_a_url_with_a_scheme(served, monkeypatch, capsys):
    _, exported, server = served
    code, out, err = run_cli(monkeypatch, capsys, "triton", "check", exported.folder, "--url",
                             f"http://{server.http_url}")
    assert_one_red_line(code, err, "without a scheme")
