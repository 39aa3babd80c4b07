"""SIGTERM ends a command the way Ctrl-C does: every `finally` and `with` cleans up on the way out
(scratch folders, staged sets), and a process stuck in native code still ends after a grace period."""

from __future__ import annotations

import signal


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so every `finally` and `with` cleans up on the way out."""


def terminate(signum, frame) -> None:
    raise Terminated


TERMINATE_GRACE_S = 10.0  # after SIGTERM, clean-up time before the process ends regardless


def watch_for_sigterm() -> None:
    """End the process TERMINATE_GRACE_S after a SIGTERM, even if the main thread is stuck in native code
    (a blocked reader), where the Python handler that raises Terminated cannot run."""
    import os
    import threading
    import time

    if any(thread.name == "edgeres-sigterm" for thread in threading.enumerate()):
        return  # one watcher per process (tests call main() many times)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)

    def watch() -> None:
        while signal.SIGTERM not in os.read(read_end, 64):
            pass
        time.sleep(TERMINATE_GRACE_S)
        os._exit(143)

    threading.Thread(target=watch, name="edgeres-sigterm", daemon=True).start()
