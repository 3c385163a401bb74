"""The server process's C heap: its arenas capped unless the operator chose a value, and its free
pages given back after a stream ends."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

from server.runtime.native_heap import HeapTrimmer

CAP = """
from server.runtime.native_heap import cap_malloc_arenas
print(cap_malloc_arenas())
"""

# Freed blocks below live ones (malloc-sized, not pymalloc's) stay resident until trimmed.
TRIM = """
from server.runtime.native_heap import heap_trim_function
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))
blocks = [bytes(2000) for _ in range(100_000)]
kept = blocks[::32]
del blocks
before = rss_mb()
heap_trim_function()()
print(before, rss_mb())
"""


def _run(code: str, env_extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env_extra or {})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_applied_by_default_on_glibc():
    assert _run(CAP) == "True"


def test_operator_value_wins():
    assert _run(CAP, {"MALLOC_ARENA_MAX": "4"}) == "False"


def test_a_trim_gives_freed_holes_back_to_the_system():
    before, after = map(int, _run(TRIM).split())
    assert before - after > 100, (before, after)  # ~190 MB of 2 kB holes under live blocks


async def test_requests_during_a_trim_fold_into_one_more_and_close_waits_for_it():
    started, release = threading.Event(), threading.Event()
    calls = []

    def trim() -> None:
        calls.append(1)
        started.set()
        release.wait(10)

    trimmer = HeapTrimmer(trim)
    trimmer.request()
    await asyncio.to_thread(started.wait, 10)
    for _ in range(5):  # five streams end while the first trim runs
        trimmer.request()
    release.set()
    await trimmer.close()
    assert calls == [1, 1] and trimmer.trims == 2
    trimmer.request()  # a later stop: a trim of its own
    await trimmer.close()
    assert trimmer.trims == 3


async def test_a_c_library_without_malloc_trim_is_left_alone():
    trimmer = HeapTrimmer()
    trimmer._trim = None  # musl: heap_trim_function() is None
    trimmer.request()
    await trimmer.close()
    assert trimmer.trims == 0
