"""The server process's C heap (glibc malloc): how many arenas it keeps, and giving its free pages
back to the system.

The server decodes and encodes on short-lived threads (one PyAV codec thread pool per stream), and
glibc gives threads their own arenas (up to 8 per core) that it rarely returns to the system: a
server that has run hundreds of streams holds tens of MB more than it uses. Two arenas is what the
soak (`bench/soak.py`) measured as enough for the event loop plus the codec threads. An operator's
own `MALLOC_ARENA_MAX` wins; on a C library without `mallopt` nothing changes.

Even with two arenas, glibc gives back only the free memory at the top of a heap: the frames,
packets and codec contexts of streams that overlapped leave free holes below live allocations, and
those pages stay resident. The soak measured it: after 3 streams x 30 racing restart/stop cycles
the server held 422 MB against a 348 MB baseline, and one `malloc_trim(0)` took it to 293 MB, so it
was free memory, not live objects. `HeapTrimmer` runs that trim after a stream has freed what it
held, off the event loop (it takes the arena locks the codec threads allocate under).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
DEFAULT_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def cap_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Sets glibc's M_ARENA_MAX for this process unless MALLOC_ARENA_MAX is set; True if applied."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # musl and others have no mallopt
        return False
    applied = bool(mallopt(M_ARENA_MAX, arenas))
    logger.debug("malloc arenas capped at %d: %s", arenas, applied)
    return applied


def heap_trim_function() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)` (gives every arena's free pages back), or None on a C library
    without it."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Gives the C heap's free pages back after a stream ends. Requests that come while a trim
    runs are folded into one more trim after it (a trim after the last stop sees everything
    freed); `close` waits for the one in flight."""

    def __init__(self, trim: Callable[[], object] | None = None) -> None:
        self._trim = trim if trim is not None else heap_trim_function()
        self._task: asyncio.Task | None = None
        self._again = False
        self.trims = 0  # trims done: what the tests read

    def request(self) -> None:
        """Called on the event loop once something large was freed."""
        if self._trim is None:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heap-trim")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await asyncio.to_thread(self._trim)
            except RuntimeError:  # the loop's executor is already shut down: nothing to give back
                return
            self.trims += 1
            if not self._again:
                return

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
