"""ProcessPoolPipeline over trickle: the seed's example, on comfystream's app factory.

Serve the stream API with a trickle relay in the same server (a dedicated worker per stream):

    python examples/example_processpool_trickle.py --port 8000

then start a stream as the seed shows (the relay is at http://localhost:8000/trickle):

    curl -X POST http://localhost:8000/stream/start -H "Content-Type: application/json" -d '{
      "subscribe_url": "http://localhost:8000/trickle/my_stream",
      "publish_url": "http://localhost:8000/trickle/my_stream-output",
      "gateway_request_id": "my_stream",
      "params": {"width": 512, "height": 512, "dedicated_worker": true, "use_prompt_worker": false}}'

Or run the whole round trip here, in one process (server + relay + a test-pattern publisher and an
output reader), and see every frame come back inverted with its timestamp:

    python examples/example_processpool_trickle.py --demo
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from comfystream.prompts import DEFAULT_PROMPT  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import ServerConfig  # noqa: E402


def create_trickle_app(width: int = 512, height: int = 512, max_streams: int = 4) -> web.Application:
    """The seed's `create_trickle_app(pipeline)`: here the app makes a ProcessPoolPipeline (one worker
    process) for every stream it starts, and mounts the trickle relay under /trickle."""
    return create_app(ServerConfig(relay=True, max_streams=max_streams))


async def demo(width: int, height: int, frames: int, fps: int) -> int:
    from bench.trickle_client import OutputReader, PatternPublisher, create_channel, pts_of

    app = create_trickle_app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the port the OS picked
    base = f"http://127.0.0.1:{port}"
    relay = f"{base}/trickle"
    try:
        async with aiohttp.ClientSession() as http:
            await create_channel(f"{relay}/example_stream")  # as a gateway does before it starts a stream
            start = {
                "subscribe_url": f"{relay}/example_stream",
                "publish_url": f"{relay}/example_stream-output",
                "gateway_request_id": "example_stream",
                "params": {
                    "width": width,
                    "height": height,
                    "prompts": [DEFAULT_PROMPT],
                    "dedicated_worker": True,
                },
            }
            async with http.post(f"{base}/stream/start", json=start) as resp:
                body = await resp.json()
                print("start:", resp.status, body["config"]["pipeline_type"], body["config"]["architecture"])
            while True:  # the worker spawns and warms up
                async with http.get(f"{base}/stream/example_stream") as resp:
                    if (await resp.json())["state"] == "running":
                        break
                await asyncio.sleep(0.1)
            reader = OutputReader(f"{relay}/example_stream-output")
            reading = asyncio.create_task(reader.run())
            publisher = PatternPublisher(f"{relay}/example_stream", width, height, fps=fps)
            await publisher.send_range(0, frames)
            await publisher.close()  # the input ends: the stream stops by itself
            await asyncio.wait_for(reading, 30)
            async with http.get(f"{base}/stream/example_stream") as resp:
                info = await resp.json()
        good = [f for f in reader.frames if f.inverted and f.pts == pts_of(f.index, fps)]
        print(f"sent {frames} frames; got {len(reader.frames)} back, {len(good)} inverted with their own pts")
        print(f"stream {info['state']}: {info['stop_reason']}; dropped {info['stats']['dropped']}")
        return 0 if len(good) == len(reader.frames) > 0 else 1
    finally:
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--demo", action="store_true", help="run a test-pattern round trip and exit")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.demo:
        return asyncio.run(demo(args.size, args.size, args.frames, args.fps))
    web.run_app(create_trickle_app(args.size, args.size), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
