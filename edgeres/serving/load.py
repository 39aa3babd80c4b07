"""A bounded load test of a served model: concurrent clients, a fixed number of requests and a time limit.

Every answer is checked against the artifact's own logits for that image (the golden samples' `expected`),
so a fast wrong answer counts as wrong, not as throughput. `during` runs once, after half the requests
are answered, while the clients go on: the kill-and-restart check kills the server there and starts it
again, and clients that retry unanswered requests must still end with every request answered, rightly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import ServingError
from .client import ServedModel

WRONG_REL = 0.05  # as `edgeres verify` allows an int8 runtime: 5% of the largest logit


@dataclass
class LoadResult:
    protocol: str
    clients: int
    requests: int  # asked for
    answered: int = 0
    failed: int = 0
    wrong: int = 0
    retried: int = 0  # sends repeated after the server did not answer (one request may be repeated often)
    during_ran: bool = False  # whether `during` ran (it runs once half the requests are done)
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the first few

    @property
    def unsent(self) -> int:
        """Requests never sent: the time limit came first."""
        return self.requests - self.answered - self.failed

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {"protocol": self.protocol, "clients": self.clients, "requests": self.requests,
                "answered": self.answered, "failed": self.failed, "wrong": self.wrong, "unsent": self.unsent,
                "retried": self.retried, "during_ran": self.during_ran,
                "seconds": round(self.seconds, 2), "requests_per_s": round(self.throughput, 1),
                "p50_ms": round(self.percentile(50), 2), "p99_ms": round(self.percentile(99), 2)}


def run_load(url: str, name: str, images: Sequence[bytes], expected: np.ndarray, *, protocol: str = "http",
             clients: int = 4, requests: int = 200, seconds: float = 60.0, retries: int = 0,
             during: Callable[[], None] | None = None) -> LoadResult:
    """`clients` threads send `images` (encoded, one per request, in turn) until `requests` are answered or
    `seconds` pass; each answer is compared with `expected[i]`, the artifact's logits for image i."""
    result = LoadResult(protocol, clients, requests)
    lock, halfway, stop = threading.Lock(), threading.Event(), threading.Event()
    next_request = iter(range(requests))
    scale = float(np.abs(expected).max()) or 1.0
    deadline = time.monotonic() + seconds

    def client() -> None:
        try:
            served = ServedModel(url, name, protocol, retries=retries, retry_wait=0.25)
        except Exception as error:  # a client that cannot even start: every request it would send is unsent
            failed(error)
            return
        try:
            while time.monotonic() < deadline and not stop.is_set():
                with lock:
                    index = next(next_request, None)
                if index is None:
                    return
                _one(served, index % len(images))
        finally:
            with lock:
                result.retried += served.retried
            served.close()

    def done() -> None:  # under the lock
        if result.answered + result.failed >= requests // 2:
            halfway.set()

    def failed(error: Exception, counted: bool = False) -> None:
        with lock:
            result.failed += counted
            result.errors = (result.errors + [str(error) or type(error).__name__])[:5]
            done()

    def _one(served: ServedModel, image: int) -> None:
        start = time.perf_counter()
        try:
            logits = served.logits_of_images([images[image]])[0]
        except Exception as error:  # ServingError, or anything else: counted, never a silently dead client
            failed(error, counted=True)
            return
        elapsed = (time.perf_counter() - start) * 1000
        right = (logits.argmax() == expected[image].argmax()
                 and np.abs(logits - expected[image]).max() <= WRONG_REL * scale)
        with lock:
            result.answered += 1
            result.wrong += not right
            result.latencies_ms.append(elapsed)
            done()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        if during is not None and halfway.wait(seconds):
            during()
            result.during_ran = True
    except BaseException:
        stop.set()  # the clients end after their request in flight, not in the background
        raise
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 30)
    result.seconds = time.perf_counter() - began
    if any(thread.is_alive() for thread in threads):
        raise ServingError(f"load test clients still waiting {seconds:.0f} s in; the server stopped answering")
    return result
