"""Ctrl-C and SIGTERM that wait for a write to finish.

`sketch-rnn train` stops on Ctrl-C (SIGINT) and on SIGTERM (preemption, `kill`) by raising
KeyboardInterrupt, then saves a checkpoint and exits with 130. Python raises that exception in the
main thread wherever it happens to be, which can be inside a checkpoint write or a SavedModel
export: the files are left half-written, TensorFlow's own Python code half-way through, and the
interrupt save that follows runs on what is left. `deferred()` holds both signals while such a
write runs and hands them to their own handlers once it is done, so the stop comes right after
the write.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def deferred(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Holds `signals` for the duration of the block, then passes those that came to the
    handlers that were installed before (each at most once, in the order they came).

    Only signals handled in Python (a callable handler, as Ctrl-C's default and `sketch-rnn
    train`'s SIGTERM handler are) are held: one that is ignored or left to the system's default
    action (which would end the process at once) keeps that behaviour. Outside the main thread
    (where Python cannot install handlers) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {}
    for signum in signals:
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = handler
            signal.signal(signum, lambda s, frame: came.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(came):
            previous[signum](signum, None)  # KeyboardInterrupt, as it would have been raised.
