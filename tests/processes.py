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


def live_children() -> dict[int, list[int]]:
    """Every live (non-zombie) process's children, by parent pid."""
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
    return children


# Processes that a session-scoped fixture started for the tests' own use and that outlive any one
# test (the shared headless Chromium's Playwright driver): `no_leaks` counts neither them nor
# anything they start (Chromium's renderers and helpers).
session_tools: set[int] = set()


def playwright_drivers() -> set[int]:
    """This process's Playwright drivers (`node ... run-driver`), each the parent of its browsers."""
    return {pid for pid in live_children().get(os.getpid(), []) if b"run-driver" in _cmdline(pid)}


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def is_template(pid: int) -> bool:
    """The worker template (workers/launch.py): multiprocessing's forkserver."""
    return b"multiprocessing.forkserver" in _cmdline(pid)


def worker_pids(parent: int) -> set[int]:
    """Live worker processes `parent` started: spawned, or forked from its template."""
    children = live_children()
    out: set[int] = set()
    for pid in children.get(parent, []):
        if is_template(pid):
            out.update(children.get(pid, []))
        elif b"spawn_main" in _cmdline(pid):
            out.add(pid)
    return out
