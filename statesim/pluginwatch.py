"""A watchdog around importing a plugin: a plugin that hangs at import is named, then given up on.

Importing third-party code can block forever (a network call at import, a lock, an endless loop), and
``statesim plugins``/``validate`` then hung silently. :func:`watch_import` starts a timer thread: after
``STATESIM_PLUGIN_IMPORT_WARN`` seconds (default 5) it prints which plugin is still importing and how to
skip it; after ``STATESIM_PLUGIN_IMPORT_TIMEOUT`` seconds (default 60, 0 disables) a SIGALRM interrupts the
import (main thread only), which the loader reports as a broken plugin.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

WARN_ENV = "STATESIM_PLUGIN_IMPORT_WARN"
TIMEOUT_ENV = "STATESIM_PLUGIN_IMPORT_TIMEOUT"


class ImportTimedOut(Exception):
    """The watchdog interrupted a plugin's import."""


#: Entry points whose import the watchdog gave up on in this process. They are not imported again (the
#: process-wide runtime manager loads the same plugins): a second try would hang for as long again.
GAVE_UP: set[str] = set()


def _seconds(name: str, default: float) -> float:
    try:
        return max(float(os.environ.get(name, default)), 0.0)
    except ValueError:
        return default


@contextmanager
def watch_import(where: str, skip_hint: str) -> Iterator[None]:
    """Name ``where`` on stderr if importing takes long; interrupt it (``ImportTimedOut``) if it takes too long."""
    warn_after, give_up_after = _seconds(WARN_ENV, 5.0), _seconds(TIMEOUT_ENV, 60.0)
    done = threading.Event()

    def watch() -> None:
        if not done.wait(warn_after):  # os.write: safe from a thread while the main thread may be printing
            os.write(2, f"statesim: still importing {where} after {warn_after:g} s; "
                        f"if it hangs, {skip_hint}\n".encode())

    watcher = threading.Thread(target=watch, name="statesim-plugin-watchdog", daemon=True)
    watcher.start()
    # The hard limit is a SIGALRM timer (main thread only, where signal handlers run): unlike a simulated
    # Ctrl-C it also works in a process that ignores SIGINT (a background job).
    armed = give_up_after > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def expire(signum: int, frame: Any) -> None:
        raise ImportTimedOut(f"its import did not finish within {give_up_after:g} s ({TIMEOUT_ENV})")

    if armed:
        previous = signal.signal(signal.SIGALRM, expire)
        started = time.monotonic()
        pending, interval = signal.setitimer(signal.ITIMER_REAL, give_up_after)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if pending:  # someone else's alarm: give it back what is left of it
                signal.setitimer(signal.ITIMER_REAL, max(pending - (time.monotonic() - started), 1e-3), interval)
        done.set()
        watcher.join()
