"""Inside a worker: die with the parent, even when the parent is SIGKILLed.

Two guards, because each has a gap: PR_SET_PDEATHSIG fires when the *thread* that spawned us
exits (so the server spawns from one long-lived thread), and a watchdog thread notices a
re-parented worker within half a second whatever happened.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import threading

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` when the parent goes; False where prctl is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
        return True
    except (OSError, AttributeError) as exc:
        logger.warning("prctl unavailable (%s): relying on the parent watchdog", exc)
        return False


def _watch_parent(parent_pid: int, interval: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            # Nothing to clean up here: the server owns the shared memory, and our own state
            # dies with the process.
            os._exit(0)
        threading.Event().wait(interval)


def die_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Install both guards; exits at once when the parent is already gone."""
    set_parent_death_signal()
    if os.getppid() != parent_pid:
        os._exit(0)
    threading.Thread(
        target=_watch_parent, args=(parent_pid, interval), name="parent-watchdog", daemon=True
    ).start()
