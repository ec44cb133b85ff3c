"""Our threads' names as the OS shows them (top -H, ps -L, perf, /proc/<pid>/task/*/comm), not only Python's."""
from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15  # prctl(2): the calling thread's name, at most 15 bytes
_libc = None


def name_this_thread() -> None:
    """Gives the calling thread its Python name (its first 15 bytes) as its name in the OS, on Linux; elsewhere it
    does nothing. A pool's initializer: the decode and model threads are then told apart from the engine's own
    threads and the event loop by anything that reads the OS's names (the benchmark splits the server's core time
    a request by them). Python 3.14 names its threads itself; before, every thread is "python"."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    try:
        _libc = _libc or ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # a libc without prctl: the name is only a convenience
        pass
