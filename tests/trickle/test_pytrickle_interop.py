"""Livepeer's pytrickle (its own publisher and subscriber) against our relay.

Skipped unless PYTRICKLE_PYTHON names a python with pytrickle installed, e.g.
    python3 -m venv /work/pytrickle-venv
    /work/pytrickle-venv/bin/pip install -c scripts/constraints.txt pytrickle --only-binary=av
    PYTRICKLE_PYTHON=/work/pytrickle-venv/bin/python pytest tests/trickle/test_pytrickle_interop.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from comfystream.trickle import TricklePublisher, TrickleSubscriber

PEER = Path(__file__).with_name("pytrickle_peer.py")
PYTHON = os.environ.get("PYTRICKLE_PYTHON", "")

pytestmark = [
    pytest.mark.pytrickle,
    pytest.mark.skipif(not PYTHON or not Path(PYTHON).exists(), reason="PYTRICKLE_PYTHON not set"),
]


async def run_peer(*args: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(PEER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def test_pytrickle_publisher_into_our_relay_and_subscriber(relay_server, no_leaks):
    url = relay_server.url("from-pytrickle")
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=30) as sub:

        async def read(n: int) -> list[tuple[int, bytes]]:
            out = []
            async for segment in sub:
                out.append((segment.seq, await segment.read()))
                if len(out) == n:
                    break
            return out

        reading = asyncio.create_task(read(4))
        await run_peer("publish", url, "4")
        got = await asyncio.wait_for(reading, 30)
    assert [seq for seq, _ in got] == [0, 1, 2, 3]
    assert [data for _, data in got] == [f"pytrickle {i}|".encode() + b"y" * 5000 for i in range(4)]


async def test_our_publisher_to_pytrickle_subscriber(relay_server, no_leaks):
    url = relay_server.url("to-pytrickle")
    pub = TricklePublisher(url, "application/octet-stream")
    await pub.write_segment(b"ours 0")
    peer = asyncio.create_task(run_peer("subscribe", url, "3"))
    await asyncio.sleep(1.5)  # pytrickle's interpreter starts (it imports torch)
    await pub.write_segment(b"ours 1")
    await pub.write_segment(b"ours 2")
    out = await asyncio.wait_for(peer, 60)
    await pub.close()
    lines = out.strip().splitlines()
    assert lines == ["0 ours 0", "1 ours 1", "2 ours 2"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
