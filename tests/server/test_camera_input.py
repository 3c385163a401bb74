"""A stream fed as a real camera's encoder feeds it (FFmpeg's MPEG-TS muxing, AAC audio, an encoder
that restarts with its pts back to 0 mid-segment), a video-only prompt swap meanwhile; and the
requests of clients that misbehave. Real server, relay, worker and PyAV."""

from __future__ import annotations

import asyncio
import logging
import socket
from fractions import Fraction

import av
import numpy as np
from aiohttp import web
from stream_stack import INVERT_PROMPT, PASSTHROUGH_PROMPT, Stack

from bench.trickle_client import EventsReader, OutputReader
from comfystream.media import SegmentEncoder, make_index_frame, ndarray_to_frame
from comfystream.trickle import TricklePublisher
from server.app import create_app
from server.config import ServerConfig
from server.http.keys import EVENT_BUS_KEY
from tests.polling import wait_for

SIZE = 128
FPS = 30
SR = 48_000


def camera_encoder() -> SegmentEncoder:
    # FFmpeg's own muxing: video PES without a length, as cameras' and gateways' TS have it
    return SegmentEncoder(SIZE, SIZE, segment_seconds=0.5, preset="ultrafast", mux_options={"flush_packets": "1"})


def camera_input(count: int, restart_at: int) -> tuple[list[list[tuple[int, bytes]]], int]:
    """Segments of (frame index, bytes) for `count` frames of video with AAC audio; at
    `restart_at` a new encoder takes over with pts from 0, its first bytes in the old one's last
    segment. Also returns how many audio frames went in."""
    segments: list[list[tuple[int, bytes]]] = []
    encoder, generation, first, samples, audio_frames = camera_encoder(), 0, 0, 0, 0
    current: tuple[int, int] | None = None

    def add(index: int, chunks) -> None:
        nonlocal current
        for chunk in chunks:
            key = (generation, chunk.segment)
            if key != current:
                if not (generation and chunk.segment == 0 and current and current[0] == generation - 1):
                    segments.append([])
                current = key
            segments[-1].append((index, chunk.data))

    for index in range(count):
        if index == restart_at:
            add(index - 1, encoder.flush())
            encoder.close()
            encoder, generation, first, samples = camera_encoder(), generation + 1, index, 0
        local = index - first
        frame = ndarray_to_frame(make_index_frame(index, SIZE, SIZE))
        frame.pts, frame.time_base = local, Fraction(1, FPS)
        chunks = encoder.encode(frame)
        while samples < (local + 1) * SR // FPS:
            tone = np.full((2, 1024), 0.1, np.float32)
            a = av.AudioFrame.from_ndarray(tone, format="fltp", layout="stereo")
            a.sample_rate, a.pts, a.time_base = SR, samples, Fraction(1, SR)
            samples += 1024
            audio_frames += 1
            chunks += encoder.encode(a)
        add(index, chunks)
    add(count - 1, encoder.flush())
    encoder.close()
    return segments, audio_frames


async def publish(url: str, segments: list[list[tuple[int, bytes]]]) -> None:
    publisher = TricklePublisher(url, "video/mp2t")
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for segment in segments:
            async with publisher.segment() as writer:
                for index, data in segment:
                    await asyncio.sleep(max(0.0, start + index / FPS - loop.time()))  # real time
                    if data:
                        await writer.write(data)
    finally:
        await publisher.close()


async def test_an_encoder_restart_and_a_prompt_swap_lose_no_frame_and_no_audio(stack: Stack) -> None:
    s = stack
    name = "camera"
    await s.start(name, {"width": SIZE, "height": SIZE, "prompts": [PASSTHROUGH_PROMPT]}, events=True)
    events = EventsReader(s.urls(name, events=True)["events_url"])
    events_task = asyncio.create_task(events.run())
    await s.wait_state(name, {"running"})
    reader = OutputReader(s.urls(name)["publish_url"])
    reading = asyncio.create_task(reader.run())

    segments, audio_in = camera_input(90, restart_at=50)
    publishing = asyncio.create_task(publish(s.urls(name)["subscribe_url"], segments))
    async def some_out():
        return len(reader.frames) >= 25

    await wait_for(some_out, timeout=60, what="frames before the swap")
    status, body = await s.call("POST", f"/stream/{name}/update-prompts", json={"prompts": [INVERT_PROMPT]})
    assert status == 200, body
    await publishing

    info = await s.wait_state(name, {"stopped", "error"}, timeout=60)
    await asyncio.wait_for(reading, 15)
    await asyncio.wait_for(events_task, 15)
    stats = info["stats"]
    indices = [f.index for f in reader.frames]
    assert indices == list(range(90)), f"lost or reordered: {sorted(set(range(90)) - set(indices))}"
    assert stats["dropped"] == 0 and stats["received"] == 90
    times = [float(f.pts * f.time_base) for f in reader.frames]
    assert times == sorted(set(times)), "the output timeline goes on past the restart"
    assert stats["timeline_discontinuities"] == 1
    assert events.types(None).count("timeline_discontinuity") == 1
    # audio: every frame in went out (the swap and the restart notwithstanding), none dropped
    assert stats["audio_received"] == audio_in and stats["audio_dropped"] == 0
    assert audio_in <= stats["audio_published"] <= audio_in + 2  # (AAC's delay: its tail packets)
    assert len(reader.audio_pts) >= audio_in - 2 and reader.audio_pts == sorted(reader.audio_pts)


async def test_clients_that_go_away_or_send_bad_headers_are_no_server_errors(no_leaks, caplog) -> None:
    """As `serve` runs the app (an AppRunner: a handler is not cancelled when its client leaves,
    unlike aiohttp's TestServer), a body cut short reaches the handler as a reset connection."""
    caplog.set_level(logging.INFO)
    runner = web.AppRunner(create_app(ServerConfig(relay=True, max_streams=2, job_workers=0)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def send(data: bytes, answer: bool) -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(data)
            if not answer:
                return b""  # gone before the body is whole
            sock.settimeout(10)
            return sock.recv(4096).split(b"\r\n")[0]

    try:
        for path in ("/stream/start", "/prompt", "/tasks", "/stream/stop"):
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            await asyncio.to_thread(send, head.encode() + b'{"a": ', False)
        too_long = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        assert b" 400 " in await asyncio.to_thread(send, too_long, True)
        malformed = b"GET /health HTTP/1.1\r\nHost: x\r\nNot A Header\r\n\r\n"
        assert b" 400 " in await asyncio.to_thread(send, malformed, True)

        async def four_gone():
            return sum("went away mid-request" in r.getMessage() for r in caplog.records) >= 4

        await wait_for(four_gone, timeout=30, what="the disconnects noticed")
    finally:
        await runner.cleanup()
    gone = [r for r in caplog.records if "went away mid-request" in r.getMessage()]
    assert len(gone) == 4 and all(r.levelno == logging.INFO for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert sum("bad request from" in r.getMessage() for r in caplog.records) == 2


async def test_a_prompt_update_is_one_event(stack: Stack) -> None:
    s = stack
    await s.start("once", {"width": 64, "height": 64})
    await s.wait_state("once", {"running"})
    with s.app[EVENT_BUS_KEY].subscribe() as queue:
        status, body = await s.call("POST", "/stream/once/update-prompts", json={"prompts": [PASSTHROUGH_PROMPT]})
        assert status == 200, body
        status, _ = await s.call("DELETE", "/stream/once")
        assert status == 200
        updates = []
        while not queue.empty():
            event = queue.get_nowait()
            if event.type == "prompts_updated":
                updates.append(event.data)
    assert len(updates) == 1, updates
    assert updates[0]["prompts_count"] == 1 and "after_frame_id" in updates[0]


def test_a_drain_does_not_wait_for_frames_already_let_go() -> None:
    from server.streams.trickle import frames_settled

    # 100 frames handed over, 36 written: the output queue let 64 go (nobody read fast enough)
    assert frames_settled({"lost_output": 64, "dropped": 64}, 100, 36)
    assert frames_settled({"skipped_late": 10, "skipped_overload": 20, "skipped_error": 4}, 100, 66)
    # frames the input lost were never handed over: they do not stand in for frames in flight
    assert not frames_settled({"lost_input": 64, "lost_decode": 3, "dropped": 67}, 100, 36)
