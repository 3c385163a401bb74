"""Run by the interop test with a python that has pytrickle: drives our relay with pytrickle's
own TricklePublisher and TrickleSubscriber. Usage: pytrickle_peer.py publish|subscribe URL N"""

import asyncio
import sys

from pytrickle.publisher import TricklePublisher
from pytrickle.subscriber import TrickleSubscriber


async def publish(url: str, count: int) -> None:
    pub = TricklePublisher(url, "application/octet-stream")
    await pub.start()
    for i in range(count):
        async with await pub.next() as segment:
            await segment.write(f"pytrickle {i}|".encode())
            await segment.write(b"y" * 5000)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # let the last POST finish before the session closes
    await pub.close()


async def subscribe(url: str, count: int) -> None:
    async with TrickleSubscriber(url, start_seq=0) as sub:
        for _ in range(count):
            segment = await sub.next()
            if segment is None:
                break
            data = b""
            while chunk := await segment.read():
                data += chunk
            await segment.close()
            print(f"{segment.seq()} {data.decode()}", flush=True)


if __name__ == "__main__":
    mode, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(publish(url, n) if mode == "publish" else subscribe(url, n))
