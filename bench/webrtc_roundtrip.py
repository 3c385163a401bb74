"""WebRTC round trip per frame: an aiortc peer on 127.0.0.1 sends index frames to the real server
and times each one until its processed frame is back (the index in the pixels pairs them).

Measured in the same run, on the same peer connection, in alternating rounds:
  paused     the stream passes frames through (`pause_prompts`): encode, network, decode both ways,
             no worker (the baseline)
  processed  the frames go through the stream's worker (default prompt: invert)
The worker's share is processed minus paused (median and p99 over the frames).

    .venv/bin/python bench/webrtc_roundtrip.py [--frames 150] [--rounds 3] [--size 512] [--codec VP8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import aioice.ice
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.app import create_app  # noqa: E402
from server.config import ServerConfig  # noqa: E402
from tests.webrtc.peers import Peer  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def collect(peer: Peer, frames: int, want_inverted: bool) -> list[float]:
    """Round trips (ms) of the next `frames` frames sent from now on."""
    start = time.monotonic()

    def fresh(received):
        sent = peer.source.sent_at
        return [r for r in received if r.index is not None and sent.get(r.index, 0) > start]

    await peer.wait_for(lambda received: len(fresh(received)) >= frames, timeout=120, what="frames")
    got = fresh(peer.received)[:frames]
    wrong = sum(r.inverted is not want_inverted for r in got)
    if wrong:
        print(f"warning: {wrong} frame(s) not in the expected mode", file=sys.stderr)
    return [(r.at - peer.source.sent_at[r.index]) * 1000 for r in got]


async def run(args: argparse.Namespace) -> int:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    server = TestServer(create_app(ServerConfig()), host="127.0.0.1")
    await server.start_server()
    samples: dict[str, list[float]] = {"paused": [], "processed": []}
    try:
        async with aiohttp.ClientSession() as http:
            peer = Peer(
                str(server.make_url("")).rstrip("/"),
                http,
                size=(args.size, args.size),
                codec=f"video/{args.codec}",
            )
            try:
                await peer.connect(resolution={"width": args.size, "height": args.size})
                await peer.wait_count(30)  # past the first keyframe and the worker's first frames
                for _ in range(args.rounds):
                    assert (await peer.request("pause_prompts"))["success"]
                    samples["paused"] += await collect(peer, args.frames, want_inverted=False)
                    assert (await peer.request("resume_prompts"))["success"]
                    samples["processed"] += await collect(peer, args.frames, want_inverted=True)
            finally:
                await peer.close()
    finally:
        await server.close()

    print(
        f"WebRTC round trip, {args.size}x{args.size} {args.codec}, {args.rounds} x {args.frames} frames per mode"
    )
    for name, values in samples.items():
        print(f"  {name:<10} median {statistics.median(values):7.2f} ms   p99 {pct(values, 0.99):7.2f} ms")
    base, proc = samples["paused"], samples["processed"]
    print(
        f"  worker share: median +{statistics.median(proc) - statistics.median(base):.2f} ms, "
        f"p99 +{pct(proc, 0.99) - pct(base, 0.99):.2f} ms; "
        f"ratio processed/paused (median) {statistics.median(proc) / statistics.median(base):.2f}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--codec", choices=["VP8", "H264"], default="VP8")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
