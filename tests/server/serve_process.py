"""`comfystream serve` as a real process for the tests that need one (signals, a ComfyUI workspace
loaded into the server process). Imported by this folder's tests (the folder is on sys.path)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def serve_process(
    port: int, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> AsyncIterator[tuple[subprocess.Popen, dict[str, Any]]]:
    """The server on 127.0.0.1:`port` with `args`, yielded with its /health body once it answers;
    killed on the way out if the test left it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--log-level", "WARNING", *args],
        cwd=ROOT,
        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, "server exited early"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        if resp.status == 200:
                            health = await resp.json()
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "server did not come up"
                await asyncio.sleep(0.1)
        yield proc, health
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
