"""Ctrl-C (SIGINT) and ``kill PID`` (SIGTERM) during a long-running command, and the handlers restored after."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM call ``handler(signum, frame)``; the previous handlers come back after.

    Installed explicitly, so a process started with SIGINT ignored (``unsamv2 serve &`` in a script, or a
    parent that ignores it) still reacts to Ctrl-C: Python leaves an inherited "ignore" in place. Only the
    main thread may set handlers: called from another thread (``main()`` run in a thread), nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            # None: a handler not set from Python; the default is the closest we can give back
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
