"""A test's view of a process it did not start itself (a worker the server spawned)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """The process exists and has not exited: a zombie (exited, not yet reaped by its parent)
    counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def is_template(pid: int) -> bool:
    """The worker template (workers/launch.py): multiprocessing's forkserver."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.forkserver" in f.read()
    except OSError:
        return False


def worker_pids(parent: int) -> set[int]:
    """Live worker processes `parent` started: spawned, or forked from its template."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    for pid in children.get(parent, []):
        if is_template(pid):
            out.update(children.get(pid, []))
        elif _spawned(pid):
            out.add(pid)
    return out


def _spawned(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"spawn_main" in f.read()
    except OSError:
        return False
