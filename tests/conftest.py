"""Shared fixtures: every test must leave no process, shared-memory segment or temp file behind."""

from __future__ import annotations

import os
import socket
import time
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


RING_PREFIX = "comfystream-ring-"  # workers/ring.py names a ring after the pid that made it


def _foreign_ring(name: str, ours: set[int]) -> bool:
    """A ring made by a live process that is not this test run (another run on the machine)."""
    if not name.startswith(RING_PREFIX):
        return False
    pid = name[len(RING_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit() or int(pid) in ours:
        return False
    return os.path.exists(f"/proc/{pid}")  # a dead maker's ring is a leak, whoever made it


def _shm_entries() -> set[str]:
    try:
        names = [n for n in os.listdir("/dev/shm") if not n.startswith(("sem.", "lttng"))]
    except FileNotFoundError:
        return set()
    ours = _child_pids() | {os.getpid()}
    return {n for n in names if not _foreign_ring(n, ours)}


def _child_pids() -> set[int]:
    """Live (non-zombie) descendants of this test process."""
    me = os.getpid()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    stack = [me]
    while stack:
        for child in children.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves child processes or /dev/shm segments behind."""
    # multiprocessing's resource tracker lives as long as this process once anything is spawned
    # or shared; started before the snapshot, it is never counted as the first test's leak.
    resource_tracker.ensure_running()
    shm_before = _shm_entries()
    pids_before = _child_pids()
    yield
    ok = wait_until(lambda: not (_child_pids() - pids_before) and not (_shm_entries() - shm_before), 15.0)
    if not ok:
        left_pids = _child_pids() - pids_before
        left_shm = _shm_entries() - shm_before
        pytest.fail(f"left behind: processes {sorted(left_pids)}, /dev/shm {sorted(left_shm)}")


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
