"""Publish video into a trickle channel in real time: a file, or a synthetic test pattern.

    python examples/publish.py http://127.0.0.1:3389/cam                     # test pattern
    python examples/publish.py http://127.0.0.1:3389/cam --file clip.mp4 --loop
    python examples/publish.py URL --width 512 --height 512 --fps 30 --duration 20

Each frame of the test pattern shows its index in big black/white blocks
(comfystream.media.testpattern), so a receiver can check order and loss. Run a relay first
(`comfystream relay`) or point at a server started with `comfystream serve --relay`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Iterator
from fractions import Fraction

import av

from comfystream.media import make_index_frame, ndarray_to_frame
from comfystream.trickle import FramePublisher


def pattern_frames(width: int, height: int, fps: int, count: int | None) -> Iterator[av.VideoFrame]:
    i = 0
    while count is None or i < count:
        frame = ndarray_to_frame(make_index_frame(i, width, height))
        frame.pts, frame.time_base = i, Fraction(1, fps)
        yield frame
        i += 1


def file_frames(path: str, loop: bool) -> Iterator[av.VideoFrame | av.AudioFrame]:
    """Frames of a file, on one unbroken timeline when it loops."""
    offset = Fraction(0)
    while True:
        last = Fraction(0)
        with av.open(path) as container:
            streams = [s for s in (container.streams.video[:1] + container.streams.audio[:1])]
            for frame in container.decode(*streams):
                if frame.pts is None:
                    continue
                t = Fraction(frame.pts) * frame.time_base
                last = max(last, t)
                frame.pts = int((t + offset) / frame.time_base)
                yield frame
        if not loop:
            return
        offset += last + Fraction(1, 30)


async def publish(args: argparse.Namespace) -> None:
    out = FramePublisher(args.url, args.width, args.height, segment_seconds=args.segment_seconds)
    if args.file:
        frames: Iterator[av.VideoFrame | av.AudioFrame] = file_frames(args.file, args.loop)
    else:
        count = None if args.duration is None else int(args.duration * args.fps)
        frames = pattern_frames(args.width, args.height, args.fps, count)
    start = time.monotonic()
    first: Fraction | None = None
    sent = 0
    try:
        for frame in frames:
            t = Fraction(frame.pts) * frame.time_base
            first = t if first is None else first
            if args.file and args.duration is not None and t - first > args.duration:
                break
            delay = float(t - first) - (time.monotonic() - start)
            if delay > 0:  # real time: a frame goes out when its timestamp comes due
                await asyncio.sleep(delay)
            await out.put(frame)
            sent += isinstance(frame, av.VideoFrame)
            if sent and sent % (args.fps * 5) == 0:
                print(f"{sent} frames, segment {out.publisher.seq - 1}", flush=True)
    finally:
        await out.close()
    print(f"done: {sent} video frames in {out.publisher.segments_sent} segments", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="channel URL, e.g. http://127.0.0.1:3389/cam")
    parser.add_argument("--file", help="a video file (default: a synthetic test pattern)")
    parser.add_argument("--loop", action="store_true", help="loop the file")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--fps", type=int, default=30, help="test pattern frame rate")
    parser.add_argument("--duration", type=float, help="seconds to publish (default: all / forever)")
    parser.add_argument("--segment-seconds", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(publish(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
