"""Caps glibc's malloc arenas in the server process.

The server decodes and encodes on short-lived threads (one PyAV codec thread pool per stream), and
glibc gives threads their own arenas (up to 8 per core) that it rarely returns to the system: a
server that has run hundreds of streams holds tens of MB more than it uses. Two arenas is what the
soak (`bench/soak.py`) measured as enough for the event loop plus the codec threads. An operator's
own `MALLOC_ARENA_MAX` wins; on a C library without `mallopt` nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
DEFAULT_ARENAS = 2


def cap_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Sets glibc's M_ARENA_MAX for this process unless MALLOC_ARENA_MAX is set; True if applied."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    applied = bool(mallopt(M_ARENA_MAX, arenas))
    logger.debug("malloc arenas capped at %d: %s", arenas, applied)
    return applied
