"""Inside a worker: die with the server, even when the server is SIGKILLed.

Two guards, because each has a gap: PR_SET_PDEATHSIG fires when the *thread* that started us
exits (so the server spawns from one long-lived thread, and the template forks from its only
one), and a watchdog thread notices a re-parented worker within half a second whatever happened.
A worker forked from the template (workers/launch.py) is the template's child, and the template
ends when the server does, once no worker holds its "alive" pipe open: `leave_template` lets go.
"""

from __future__ import annotations

import contextlib
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


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def die_with_parent(server_pid: int, interval: float = 0.5) -> None:
    """Install both guards on our parent: the server, or its template that forked us (then the
    template's own end follows the server's). Exits at once when the server is already gone."""
    set_parent_death_signal()
    parent = os.getppid()
    if parent != server_pid and _parent_of(parent) != server_pid:
        os._exit(0)
    threading.Thread(
        target=_watch_parent, args=(parent, interval), name="parent-watchdog", daemon=True
    ).start()


def leave_template() -> None:
    """In a worker forked from the template: close our copy of the template's "alive" pipe. The
    standard library hands one to every process the template forks, and the template exits when
    every copy is closed: the server's at its exit, ours here, so that it ends with the server and
    takes us with it (PR_SET_PDEATHSIG). The attribute is the standard library's own (3.8 to 3.14)."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is None:
        logger.warning("the template's alive pipe is unknown: a SIGKILLed server leaves its template to our watchdog")
        return
    with contextlib.suppress(OSError):
        os.close(fd)
    server._forkserver_alive_fd = None
