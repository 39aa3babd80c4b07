"""One Classifier shared by threads gives exactly the single-thread results, on every backend.

A web service or a multi-camera app shares one Classifier; OpenVINO's single infer
request and LiteRT's interpreter are not reentrant, so without the backend's concurrency
model (a pool of requests, a lock) threads raise "busy" or read each other's outputs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgeres.runtime.classifier import Classifier

pytestmark = pytest.mark.slow
THREADS, CALLS = 4, 200
CASES = [("onnx", "fp32"), ("x86", "int8"), ("rpi", "int8"), ("mobile", "fp32")]


@pytest.mark.parametrize("target, precision", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_shared_classifier_matches_single_thread(converted, held_out, target: str, precision: str) -> None:
    classifier = Classifier(converted(target, precision).path)
    frames = held_out[0][:16]
    count = len(frames)
    single = {index: classifier.logits(frame) for index, frame in enumerate(frames)}
    pairs = {index: classifier.logits_batch([frames[index], frames[(index + 1) % count]]) for index in range(count)}

    def work(worker: int) -> list[tuple[int, np.ndarray]]:
        wrong = 0
        for call in range(CALLS):
            index = (worker * 7 + call) % count
            if call % 4 == 3:  # the batch path shares the backend too
                rows = classifier.logits_batch([frames[index], frames[(index + 1) % count]])
                wrong += not np.array_equal(rows, pairs[index])
            else:
                wrong += not np.array_equal(classifier.logits(frames[index]), single[index])
        return wrong

    with ThreadPoolExecutor(THREADS) as pool:
        wrong = sum(pool.map(work, range(THREADS)))  # a raised error fails the test as it is
    assert wrong == 0, f"{wrong} of {THREADS * CALLS} calls differ from the single-thread results"


@pytest.mark.parametrize("target, precision", [("x86", "int8")])
def test_streams_in_threads(converted, held_out, target: str, precision: str) -> None:
    classifier = Classifier(converted(target, precision).path)
    frames = held_out[0][:24]
    expected = [p[0].index for p in (classifier.predict(frame) for frame in frames)]

    def work(_: int) -> list[int]:
        return [p[0].index for p in classifier.stream(frames)]

    with ThreadPoolExecutor(3) as pool:
        assert all(result == expected for result in pool.map(work, range(3)))
