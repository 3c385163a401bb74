"""Record a trickle channel to an .mp4 file (video, re-encoded with libx264).

    python examples/play.py http://127.0.0.1:3389/cam-out out.mp4
    python examples/play.py URL out.mp4 --duration 10 --check-pattern

Stops when the channel ends, after --duration seconds of video, or on Ctrl-C. With
--check-pattern it also reads the index test pattern (examples/publish.py) from each frame
and reports gaps and how many frames came inverted, so it doubles as a quick end-to-end check.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from fractions import Fraction

import av

from comfystream.media import PatternError, frame_to_ndarray, read_index
from comfystream.trickle import FrameSubscriber


def read_pattern(rgb) -> tuple[int, bool] | None:
    """(index, inverted) of a test-pattern frame, in either orientation; None if it is not one."""
    for flipped in (False, True):
        try:
            return read_index(rgb, inverted=flipped), flipped
        except PatternError:
            pass
    return None

async def record(args: argparse.Namespace) -> int:
    container = av.open(args.output, "w")
    stream = None
    first: Fraction | None = None
    last_pts = -1
    frames = 0
    indices: list[int] = []
    unreadable = 0
    inverted = 0
    try:
        async with FrameSubscriber(
            args.url, start_seq=args.start_seq, connect_timeout=args.connect_timeout
        ) as sub:
            async for frame in sub:
                if not isinstance(frame, av.VideoFrame):
                    continue  # video only
                t = Fraction(frame.pts) * frame.time_base
                first = t if first is None else first
                if args.duration is not None and t - first > args.duration:
                    break
                if stream is None:
                    stream = container.add_stream("libx264", rate=30)
                    stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
                    stream.time_base = Fraction(1, 90000)
                    stream.codec_context.time_base = Fraction(1, 90000)
                pts = int((t - first) * 90000)
                if pts <= last_pts:
                    continue
                last_pts = pts
                out = frame.reformat(format="yuv420p")
                out.pts, out.time_base, out.pict_type = (
                    pts,
                    Fraction(1, 90000),
                    av.video.frame.PictureType.NONE,
                )
                container.mux(stream.encode(out))
                frames += 1
                if args.check_pattern:
                    index = read_pattern(frame_to_ndarray(frame))
                    if index is None:
                        unreadable += 1
                    else:
                        indices.append(index[0])
                        inverted += index[1]
    finally:
        if stream is not None:
            container.mux(stream.encode(None))
        container.close()
    print(f"{frames} frames written to {args.output}")
    if args.check_pattern:
        gaps = sum(1 for a, b in zip(indices, indices[1:], strict=False) if b != a + 1)
        span = f"{indices[0]}..{indices[-1]}" if indices else "none"
        print(f"pattern: indices {span}, {gaps} gaps, {inverted} inverted, {unreadable} unreadable frames")
        return 0 if indices and not gaps and not unreadable else 1
    return 0 if frames else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="channel URL, e.g. http://127.0.0.1:3389/cam-out")
    parser.add_argument("output", help="the .mp4 file to write")
    parser.add_argument("--duration", type=float, help="seconds of video to record")
    parser.add_argument("--start-seq", type=int, default=-1, help="first segment (-1: the live edge)")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--check-pattern", action="store_true", help="read the test pattern's frame indices")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(record(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
