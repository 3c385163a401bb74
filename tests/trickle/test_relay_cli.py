"""`comfystream relay` runs the relay as its own process and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


async def test_relay_command_serves_channels_and_stops_on_sigterm(free_port, no_leaks):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "relay", "--host", "127.0.0.1", "--port", str(free_port),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{free_port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):  # the interpreter starts
                try:
                    async with http.post(f"{base}/cli/0", data=b"through the cli") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            async with http.get(f"{base}/cli/0") as resp:
                assert resp.status == 200
                assert await resp.read() == b"through the cli"
            waiting = asyncio.create_task(http.get(f"{base}/cli/1"))  # a reader at the live edge
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            async with await asyncio.wait_for(waiting, 10) as resp:
                assert resp.headers.get("Lp-Trickle-Closed") == "terminated"  # told, not cut off
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
