"""A peer in a process of its own, for the lost-peer test: connects to the server given as argv[1],
prints `receiving <stream_id>` once processed frames arrive, then runs until it is killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import aioice.ice

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.webrtc.peers import Peer  # noqa: E402


async def main(base: str) -> None:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    async with aiohttp.ClientSession() as http:
        peer = Peer(base, http)
        answer = await peer.connect()
        await peer.wait_count(3)
        print("receiving", answer["stream_id"], flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
