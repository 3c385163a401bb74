"""Imported by the worker template alone (workers/launch.py PRELOAD): when the template exits, it
removes its listening socket and, if that leaves it empty, multiprocessing's temp folder holding it.

A server that exits normally removes that folder itself; a SIGKILLed one cannot, and the template,
which ends right after it (workers.lifecycle.leave_template), is the last to know the path.
Workers forked from the template inherit this exit hook and skip it: it is the template's alone.
"""

from __future__ import annotations

import atexit
import contextlib
import os

_TEMPLATE_PID = os.getpid()


def _remove_listener() -> None:
    if os.getpid() != _TEMPLATE_PID:
        return
    from multiprocessing import forkserver

    # Set by multiprocessing's forkserver main in this process (a private name, 3.8 to 3.14).
    address = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_address", None)
    if not isinstance(address, str) or not address or address.startswith("\0"):
        return  # an abstract socket leaves no file
    with contextlib.suppress(OSError):
        os.unlink(address)
    folder = os.path.dirname(address)
    if os.path.basename(folder).startswith("pymp-"):
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty: the server may still be using it


atexit.register(_remove_listener)
