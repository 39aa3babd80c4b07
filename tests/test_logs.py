from __future__ import annotations

import logging
import sys
import threading

from edgeres.logs import quiet


def test_overlapping_silences_in_two_threads_restore_the_process() -> None:
    """A enters, B enters, A leaves, B leaves (two Classifiers loading at once): afterwards
    stdout, the descriptors and the loggers are the process's own again, not each other's."""
    stdout, level = sys.stdout, logging.getLogger().level
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    silent_after_first_left = []

    def first() -> None:
        with quiet():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with quiet():
            b_in.set()
            a_out.wait(10)
            silent_after_first_left.append(sys.stdout is not stdout)  # the second is still inside

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert silent_after_first_left == [True]
    assert sys.stdout is stdout and logging.getLogger().level == level


def test_a_failure_inside_leaves_nothing_silenced(capsys) -> None:
    try:
        with quiet():
            print("kept out")
            raise ValueError("inside")
    except ValueError:
        pass
    print("shown")
    assert capsys.readouterr().out == "shown\n"
