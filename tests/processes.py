"""A test's view of a process it did not start itself (a worker the server spawned)."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """The process exists and has not exited: a zombie (exited, not yet reaped by its parent)
    counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
