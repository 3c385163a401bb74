"""Media and relay throughput: H.264/MPEG-TS encode and decode at 512x512, relay MB/s on loopback.

    .venv/bin/python bench/media.py [--frames 300] [--mb 64]

Each figure comes with a baseline measured in the same run, and their ratio:
  encode  SegmentEncoder.encode (rgb24 in: one swscale pass, x264, TS mux) vs bare libx264 on yuv420p
  decode  SegmentDecoder (TS gate, demux, decode) + frame_to_ndarray vs bare PyAV demux+decode
  hop     encode -> TS -> streaming decode, per frame at 30 fps vs bare x264 -> h264 packets
  relay   one publisher -> relay -> 1 and 10 subscribers vs one POST into a discarding handler
The relay runs in its own process (as `comfystream relay` would).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import multiprocessing as mp
import socket
import statistics
import threading
import time
from fractions import Fraction

import aiohttp
import av
import numpy as np
from av.video.reformatter import VideoReformatter

from comfystream.media import (
    SegmentDecoder,
    SegmentEncoder,
    frame_to_ndarray,
    make_index_frame,
    ndarray_to_frame,
)
from comfystream.media.convert import SWS_THREADS
from comfystream.trickle import TricklePublisher, TrickleSubscriber

SIZE = 512
FPS = 30


def scene(i: int) -> np.ndarray:
    """A moving scene a codec has to work on: gradient, a moving square, the index blocks."""
    img = make_index_frame(i, SIZE, SIZE)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    img[..., 0] = ((x + 3 * i) % 256).astype(np.uint8) // 2 + img[..., 0] // 2
    img[..., 2] = ((y + 2 * i) % 256).astype(np.uint8)
    s = (i * 7) % (SIZE - 96)
    img[s : s + 96, s : s + 96] = (250, 200, 40)
    return img


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def fmt_ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1e3:.2f} ms, p99 {pct(values, 99) * 1e3:.2f} ms"


def bench_codec(n: int) -> None:
    rgb = [ndarray_to_frame(scene(i)) for i in range(n)]
    for i, f in enumerate(rgb):
        f.pts, f.time_base = i, Fraction(1, FPS)
    # (on the calling thread, as the server converts: a frame's own scaler would keep a thread pool)
    yuv = [f.reformat(format="yuv420p", threads=SWS_THREADS) for f in rgb]

    x264 = {"preset": "superfast", "tune": "zerolatency", "bf": "0", "crf": "23"}

    def bare_x264(frames, convert: bool) -> list[float]:
        """Bare libx264 with the encoder's settings, no muxing; with ``convert`` each frame first
        gets the one rgb24 -> yuv420p conversion DESIGN allows (as SegmentEncoder does it)."""
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width = ctx.height = SIZE
        ctx.pix_fmt, ctx.time_base = "yuv420p", Fraction(1, 90000)
        ctx.options = dict(x264)
        out = []
        scaler = VideoReformatter()
        for i, f in enumerate(frames):
            t0 = time.perf_counter()
            frame = (
                scaler.reformat(f, width=SIZE, height=SIZE, format="yuv420p", threads=SWS_THREADS)
                if convert
                else f
            )
            frame.pts, frame.time_base = i * 3000, Fraction(1, 90000)
            ctx.encode(frame)
            out.append(time.perf_counter() - t0)
        ctx.encode(None)
        return out

    def ours() -> tuple[list[float], list[bytes]]:
        encoder = SegmentEncoder(SIZE, SIZE, segment_seconds=1.0)
        times, parts = [], {}
        for f in rgb:
            t0 = time.perf_counter()
            chunks = encoder.encode(f)
            times.append(time.perf_counter() - t0)
            for c in chunks:
                parts.setdefault(c.segment, []).append(c.data)
        for c in encoder.flush():
            parts.setdefault(c.segment, []).append(c.data)
        return times, [b"".join(p) for _, p in sorted(parts.items())]

    # a first round warms up allocators, caches and clocks; the second one is measured
    for _ in range(2):
        base_times = bare_x264(yuv, convert=False)
        times, segments = ours()
        conv_enc_times = bare_x264(rgb, convert=True)
    enc_fps, base_fps, conv_fps = n / sum(times), n / sum(base_times), n / sum(conv_enc_times)
    print(f"encode 512x512 rgb24 -> TS: {enc_fps:7.0f} fps ({fmt_ms(times)})")
    print(
        f"  baseline bare libx264 yuv: {base_fps:7.0f} fps ({fmt_ms(base_times)})  ratio {enc_fps / base_fps:.2f}"
    )
    print(
        f"  baseline rgb24->yuv + bare libx264: {conv_fps:7.0f} fps ({fmt_ms(conv_enc_times)})"
        f"  ratio {enc_fps / conv_fps:.2f}"
    )
    mbps = sum(map(len, segments)) * 8 / (n / FPS) / 1e6
    print(f"  {len(segments)} segments, {mbps:.2f} Mbit/s at {FPS} fps")

    # decode: ours (gate + demux + decode) and the conversion to RGB
    decoder = SegmentDecoder()
    dec_times, conv_times, frames, dec_total = [], [], 0, 0.0
    for seg in segments:
        t0 = time.perf_counter()
        out = decoder.decode_segment(seg)
        elapsed = time.perf_counter() - t0
        dec_total += elapsed
        dec_times.append(elapsed / max(len(out), 1))
        frames += len(out)
        for f in out:
            t0 = time.perf_counter()
            frame_to_ndarray(f, SIZE, SIZE)
            conv_times.append(time.perf_counter() - t0)
    assert frames == n, (frames, n)
    base_total = 0.0
    for seg in segments:
        t0 = time.perf_counter()
        with av.open(io.BytesIO(seg), format="mpegts") as c:
            sum(1 for _ in c.decode(video=0))
        base_total += time.perf_counter() - t0
    dec_fps, base_fps = n / dec_total, n / base_total
    print(f"decode TS -> yuv frames:     {dec_fps:7.0f} fps (per frame {fmt_ms(dec_times)})")
    print(f"  baseline bare PyAV decode: {base_fps:7.0f} fps  ratio {dec_fps / base_fps:.2f}")
    print(f"  yuv420p -> rgb24 512x512 (frame_to_ndarray): {fmt_ms(conv_times)}")


def bench_hop(n: int) -> None:
    """Encode -> TS -> streaming decode at FPS: time from a frame going into the encoder to it
    coming out of the decoder, and how many frames later. Baseline: the same codecs on bare
    H.264 packets (no TS, no segments), which hold no frame back."""
    rgb = [ndarray_to_frame(scene(i)) for i in range(n)]
    out_at: dict[int, float] = {}
    cond = threading.Condition()

    def on_frame(frame) -> None:
        if isinstance(frame, av.VideoFrame):
            with cond:
                out_at[frame.pts] = time.perf_counter()
                cond.notify_all()

    encoder = SegmentEncoder(SIZE, SIZE, segment_seconds=1.0)
    decoder = SegmentDecoder(on_frame=on_frame, stream_id="bench")
    in_at: dict[int, float] = {}
    behind: list[int] = []
    for i, f in enumerate(rgb):
        f.pts, f.time_base = i * 3000, Fraction(1, 90000)
        in_at[f.pts] = time.perf_counter()
        for c in encoder.encode(f):
            if c.data:
                decoder.feed(c.data)
            if c.end:
                decoder.end_segment()
        with cond:
            cond.wait(1 / FPS)  # a frame interval, or until something comes out
            behind.append(i + 1 - len(out_at))
        time.sleep(max(0.0, in_at[f.pts] + 1 / FPS - time.perf_counter()))
    for c in encoder.flush():
        decoder.feed(c.data)
    decoder.end_segment()
    decoder.close()
    hop = [out_at[p] - in_at[p] for p in in_at if p in out_at]

    enc = av.CodecContext.create("libx264", "w")
    enc.width = enc.height = SIZE
    enc.pix_fmt, enc.time_base = "yuv420p", Fraction(1, 90000)
    enc.options = {"preset": "superfast", "tune": "zerolatency", "bf": "0", "crf": "23"}
    dec = av.CodecContext.create("h264", "r")
    base = []
    for i, f in enumerate(rgb):
        t0 = time.perf_counter()
        yuv = f.reformat(format="yuv420p")
        yuv.pts = i * 3000
        frames = [d for p in enc.encode(yuv) for d in dec.decode(p)]
        if frames:
            base.append(time.perf_counter() - t0)
    print(
        f"hop encode -> TS -> streaming decode: {fmt_ms(hop)}, frames behind median "
        f"{statistics.median(behind):.0f} max {max(behind)}"
    )
    print(
        f"  baseline bare x264 -> h264 packets: {fmt_ms(base)}  ratio {statistics.median(hop) / statistics.median(base):.2f}"
    )


def _relay_main(port: int, ready) -> None:
    from aiohttp import web

    from comfystream.trickle import create_relay_app

    async def discard(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.Response(text=str(total))

    app = create_relay_app(prefix="/trickle")
    app.router.add_post("/discard", discard)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _body(total: int, chunk: bytes):
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


async def bench_relay_once(base: str, channel: str, total: int, seg_size: int, readers: int) -> dict:
    """Push ``total`` bytes with TricklePublisher through the relay to ``readers``
    TrickleSubscribers, every reader getting every byte. The relay keeps 5 segments and a
    reader that falls further behind skips ahead (by design), so the publisher here stays at
    most 3 segments ahead of the slowest reader: the figure is what the relay delivers."""
    url = f"{base}/trickle/{channel}"
    chunk = bytes(64 * 1024)
    n_segments = total // seg_size
    pub = TricklePublisher(url, "application/octet-stream")
    await pub.write_segment(b"x")  # creates the channel
    progress = [0] * readers
    advanced = asyncio.Event()

    async def read_all(i: int) -> int:
        got = 0
        async with TrickleSubscriber(url, start_seq=1) as sub:
            async for segment in sub:
                progress[i] = segment.seq
                advanced.set()
                async for data in segment:
                    got += len(data)
                if segment.seq >= n_segments:
                    break
        return got

    tasks = [asyncio.create_task(read_all(i)) for i in range(readers)]
    await asyncio.sleep(0.3)
    t0 = time.perf_counter()
    for seq in range(1, n_segments + 1):
        while min(progress) < seq - 3:
            advanced.clear()
            await advanced.wait()
        async with pub.segment() as seg:
            for _ in range(seg_size // len(chunk)):
                await seg.write(chunk)
    got = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    await pub.close()
    assert all(g == n_segments * seg_size for g in got), "a reader missed data"
    return {"mbs": total / elapsed / 1e6}


async def bench_relay(mb: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_relay_main, args=(port, ready), daemon=True)
    proc.start()
    try:
        ready.wait(30)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.1)
        total, seg = mb * 1024 * 1024, 1024 * 1024
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            t0 = time.perf_counter()
            async with http.post(f"{base}/discard", data=_body(total, bytes(64 * 1024))) as r:
                await r.read()
            base_s = time.perf_counter() - t0
        base_mbs = total / base_s / 1e6
        print(f"relay baseline: one POST into a discarding handler: {base_mbs:8.1f} MB/s")
        for readers in (1, 10):
            runs = [await bench_relay_once(base, f"b{readers}-{i}", total, seg, readers) for i in range(3)]
            mbs = statistics.median(r["mbs"] for r in runs)
            print(
                f"relay 1 publisher -> {readers:2d} subscriber(s): {mbs:7.1f} MB/s to each, "
                f"{mbs * readers:7.1f} MB/s out in all (median of 3)  ratio to baseline {mbs / base_mbs:.2f}"
            )
    finally:
        proc.terminate()
        proc.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--mb", type=int, default=64, help="megabytes pushed through the relay per run")
    parser.add_argument("--skip-codec", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the clients do")
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(relativeCreated)d %(name)s: %(message)s")
    if not args.skip_codec:
        bench_codec(args.frames)
        bench_hop(min(args.frames, 90))
    asyncio.run(bench_relay(args.mb))


if __name__ == "__main__":
    main()
