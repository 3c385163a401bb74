"""Frames -> MPEG-TS segments -> frames with real PyAV: count, order, timestamps, content,
keyframes, no B-frames, audio timing, streaming decode, corrupt segments."""

from __future__ import annotations

import io
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from comfystream.media import (
    MIME_TYPE,
    SegmentDecoder,
    SegmentEncoder,
    frame_to_ndarray,
    make_index_frame,
    ndarray_to_frame,
    read_index,
)
from comfystream.media.tsgate import TsGate

W, H = 128, 96
FPS = 30


def index_frames(
    count: int, start_pts: int = 0, time_base: Fraction = Fraction(1, FPS)
) -> list[av.VideoFrame]:
    frames = []
    for i in range(count):
        frame = ndarray_to_frame(make_index_frame(i, W, H))
        frame.pts, frame.time_base = start_pts + i, time_base
        frames.append(frame)
    return frames


def decode_all(segments: list[bytes]) -> list[av.VideoFrame | av.AudioFrame]:
    decoder = SegmentDecoder()
    return [f for s in segments for f in decoder.decode_segment(s)]


def seconds(frame) -> Fraction:
    return Fraction(frame.pts) * Fraction(frame.time_base)


@pytest.fixture(scope="module")
def three_seconds() -> tuple[list[av.VideoFrame], list[bytes]]:
    frames = index_frames(90, start_pts=10 * FPS)  # starts at 10 s, as a live stream would
    return frames, SegmentEncoder(W, H, segment_seconds=1.0).encode_all(frames)


def test_round_trip_keeps_count_order_timestamps_and_content(three_seconds):
    frames, segments = three_seconds
    out = decode_all(segments)
    assert all(isinstance(f, av.VideoFrame) for f in out)
    assert len(out) == len(frames)
    assert [seconds(f) for f in out] == [seconds(f) for f in frames]  # exact, not approximate
    assert [read_index(frame_to_ndarray(f)) for f in out] == list(range(90))
    for i in (0, 45, 89):
        diff = np.abs(frame_to_ndarray(out[i]).astype(int) - make_index_frame(i, W, H).astype(int))
        assert diff.mean() < 4.0  # within codec tolerance


def test_segment_length_keyframes_and_no_b_frames(three_seconds):
    _, segments = three_seconds
    assert len(segments) == 3  # 90 frames at 30 fps in 1 s segments
    for seg in segments:
        container = av.open(io.BytesIO(seg), format="mpegts")
        packets = [p for p in container.demux(video=0) if p.size]
        assert packets[0].is_keyframe  # each segment starts with an IDR frame
        assert sum(p.is_keyframe for p in packets) == 1
        assert all(p.pts == p.dts for p in packets)  # no reordering: no B-frames
        assert len(packets) == 30
        container.close()
        # and each one decodes on its own
        assert len(SegmentDecoder().decode_segment(seg)) == 30


def test_segment_length_is_configurable():
    segments = SegmentEncoder(W, H, segment_seconds=0.5).encode_all(index_frames(60))
    assert len(segments) == 4
    assert [len(SegmentDecoder().decode_segment(s)) for s in segments] == [15, 15, 15, 15]
    assert SegmentEncoder.mime_type == MIME_TYPE == "video/mp2t"


def test_bytes_come_out_frame_by_frame_not_at_segment_end():
    encoder = SegmentEncoder(W, H, segment_seconds=10.0)
    chunks = [encoder.encode(f) for f in index_frames(5)]
    assert all(len(c) == 1 and c[0].data and not c[0].end for c in chunks)  # streamable at once
    assert {c[0].segment for c in chunks} == {0}
    last = encoder.flush()
    assert last[-1].end and last[-1].segment == 0


def test_frames_are_scaled_to_the_encoder_size_and_odd_input_is_refused():
    big = ndarray_to_frame(make_index_frame(42, 320, 240))
    big.pts, big.time_base = 0, Fraction(1, 30)
    out = decode_all(SegmentEncoder(W, H).encode_all([big]))
    assert (out[0].width, out[0].height) == (W, H)
    assert read_index(frame_to_ndarray(out[0])) == 42
    with pytest.raises(ValueError):
        SegmentEncoder(127, 96)
    with pytest.raises(ValueError):
        SegmentEncoder(W, H, segment_seconds=0)
    no_pts = ndarray_to_frame(make_index_frame(0, W, H))
    with pytest.raises(ValueError):
        SegmentEncoder(W, H).encode(no_pts)
    with pytest.raises(TypeError):
        SegmentEncoder(W, H).encode(b"not a frame")


def test_out_of_order_frame_is_dropped_and_counted():
    frames = index_frames(4)
    encoder = SegmentEncoder(W, H)
    segments = encoder.encode_all([frames[0], frames[1], frames[1], frames[3]])
    out = decode_all(segments)
    assert [read_index(frame_to_ndarray(f)) for f in out] == [0, 1, 3]
    assert encoder.frames_dropped == 1


def test_audio_is_passed_through_with_its_timing():
    sr = 48000
    start = 5 * sr  # a live stream does not start at 0
    video = index_frames(60, start_pts=5 * FPS)
    audio = []
    for i in range(90):  # 960-sample frames (as from WebRTC): the encoder re-frames them
        samples = np.full((1, 960), ((i // 10) % 5) / 10, np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sr, start + i * 960, Fraction(1, sr)
        audio.append(frame)
    frames = sorted(video + audio, key=seconds)
    segments = SegmentEncoder(W, H).encode_all(frames)
    out = decode_all(segments)
    out_video = [f for f in out if isinstance(f, av.VideoFrame)]
    out_audio = [f for f in out if isinstance(f, av.AudioFrame)]
    assert [read_index(frame_to_ndarray(f)) for f in out_video] == list(range(60))
    assert out_audio and out_audio[0].sample_rate == sr
    # samples at a given time have the value that the input had at that time
    in_samples = np.concatenate([f.to_ndarray()[0] for f in audio])
    checked = 0
    for frame in out_audio:
        offset = int(seconds(frame) * sr) - start
        if offset < 0 or offset + 1024 > len(in_samples):
            continue  # AAC's priming frame, and the tail
        got = frame.to_ndarray()[0][300:700]
        want = in_samples[offset + 300 : offset + 700]
        if np.ptp(want) == 0:  # away from level changes, where AAC rings
            assert abs(float(got.mean()) - float(want[0])) < 0.02
            checked += 1
    assert checked > 40


def test_streaming_decode_emits_frames_before_the_segment_ends(three_seconds):
    frames, segments = three_seconds
    got: list[av.VideoFrame] = []
    lock = threading.Lock()

    def on_frame(frame):
        with lock:
            got.append(frame)

    decoder = SegmentDecoder(on_frame=on_frame, stream_id="t")
    try:
        seg = segments[0]
        cut = len(seg) * 3 // 4
        for i in range(0, cut, 1000):
            decoder.feed(seg[i : min(i + 1000, cut)])
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got  # frames are out while a quarter of the segment is still to come
        decoder.feed(seg[cut:])
        decoder.end_segment()
        for s in segments[1:]:
            decoder.feed(s)
            decoder.end_segment()
    finally:
        decoder.close()
    assert [seconds(f) for f in got] == [seconds(f) for f in frames]
    assert decoder.stats.video_frames == 90 and decoder.stats.corrupt_segments == 0
    with pytest.raises(RuntimeError):
        decoder.feed(b"after close")


def test_each_frame_is_decoded_from_its_own_bytes_without_waiting_for_the_next():
    """No frame of latency in demuxing: a frame comes out once its bytes are in (the PES
    carries its length, the gate releases it whole, no parser waits for the next frame)."""
    encoder = SegmentEncoder(W, H, segment_seconds=10.0)
    got: list[int] = []
    cond = threading.Condition()

    def on_frame(frame):
        with cond:
            got.append(read_index(frame_to_ndarray(frame)))
            cond.notify_all()

    decoder = SegmentDecoder(on_frame=on_frame, stream_id="t")
    behind: list[int] = []
    try:
        for i, frame in enumerate(index_frames(20)):
            for chunk in encoder.encode(frame):
                decoder.feed(chunk.data)
            with cond:
                cond.wait_for(lambda i=i: len(got) > i, timeout=5)
                behind.append(i + 1 - len(got))
        for chunk in encoder.flush():
            decoder.feed(chunk.data)
        decoder.end_segment()
    finally:
        decoder.close()
    assert behind == [0] * 20  # frames still inside the decoder when the next one was sent
    assert got == list(range(20)) and decoder.stats.corrupt_segments == 0


def test_gate_passes_a_pes_at_its_last_byte_and_refuses_one_cut_short():
    encoder = SegmentEncoder(W, H, segment_seconds=10.0)
    per_frame = [b"".join(c.data for c in encoder.encode(f)) for f in index_frames(3)]
    gate = TsGate()
    passed = [gate.push(data) for data in per_frame]
    assert passed == per_frame and gate.error is None  # nothing held back between frames
    assert gate.finish() == b""

    cut = TsGate()  # the keyframe's PES lacks its last packet: the segment ended early
    head = per_frame[0][:-188]
    assert len(cut.push(head)) < len(head)  # the frame's PES is held: it is not whole
    assert cut.finish() == b"" and "truncated" in (cut.error or "")
    # what went through before the cut was the tables only: no part of the frame
    assert SegmentDecoder().decode_segment(per_frame[0][:-188]) == []


def corrupt_middle(seg: bytes) -> bytes:
    rng = np.random.default_rng(3)
    mid = len(seg) // 2
    return seg[:mid] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes() + seg[mid + 4000 :]


@pytest.mark.parametrize(
    "damage",
    [
        corrupt_middle,
        lambda seg: seg[: len(seg) // 2],  # truncated
        lambda seg: seg[: 188 * 20] + seg[188 * 21 :],  # one TS packet lost
        lambda seg: np.random.default_rng(4).integers(0, 256, len(seg), dtype=np.uint8).tobytes(),
        lambda seg: b"",
    ],
    ids=["garbage-in-middle", "truncated", "packet-lost", "all-garbage", "empty"],
)
def test_a_corrupt_segment_is_skipped_and_decoding_goes_on(three_seconds, damage):
    frames, segments = three_seconds
    got: list[av.VideoFrame] = []
    decoder = SegmentDecoder(on_frame=got.append, stream_id="t")
    try:
        for i, seg in enumerate(segments):
            data = damage(seg) if i == 1 else seg
            for k in range(0, len(data), 4096):
                decoder.feed(data[k : k + 4096])
            if not data:
                decoder.feed(b"")
            decoder.end_segment()
    finally:
        decoder.close()
    indices = [read_index(frame_to_ndarray(f)) for f in got]  # no damaged frame slips through
    assert indices[:30] == list(range(30))
    assert indices[-30:] == list(range(60, 90))
    middle = indices[30:-30]
    assert middle == sorted(middle) and set(middle) <= set(range(30, 60))
    assert len(middle) < 30
    assert [seconds(f) for f in got[-30:]] == [seconds(f) for f in frames[60:]]
    assert decoder.stats.segments == 3
    assert decoder.stats.corrupt_segments == 1  # noticed and logged, not decoded into junk
    # the frames of the damaged segment that did not come out are counted, those whose bytes never
    # arrived (the cut half of a truncated segment, what the garbage replaced) excepted
    assert decoder.stats.video_lost <= 30 - len(middle)


def test_decoded_frames_pass_straight_through_the_encoder_unchanged(three_seconds):
    """yuv420p frames at the stream size (a passthrough) are encoded without a copy or a
    conversion, and the caller's frames keep their own timestamps."""
    frames, segments = three_seconds
    decoded = decode_all(segments)
    before = [(f.pts, f.time_base, f.pict_type) for f in decoded]
    out = decode_all(SegmentEncoder(W, H).encode_all(decoded))
    assert [(f.pts, f.time_base, f.pict_type) for f in decoded] == before
    assert [seconds(f) for f in out] == [seconds(f) for f in frames]
    assert [read_index(frame_to_ndarray(f)) for f in out] == list(range(90))


@pytest.fixture
def ffmpeg_muxing(monkeypatch):
    """Our encoder muxing TS as FFmpeg does by default (and so Livepeer's publishers): video PES
    without a length (PES_packet_length 0)."""
    from comfystream.media import encoder

    monkeypatch.setattr(encoder, "_MUX_OPTIONS", {"flush_packets": "1"})


def _pes_lengths(data: bytes) -> list[int]:
    """PES_packet_length of every video PES that starts in `data`."""
    out = []
    for i in range(0, len(data) - 187, 188):
        p = data[i : i + 188]
        if not p[1] & 0x40:
            continue
        start = 4 + (1 + p[4] if p[3] & 0x20 else 0)
        if p[start : start + 3] == b"\0\0\1" and 0xE0 <= p[start + 3] <= 0xEF:
            out.append(int.from_bytes(p[start + 4 : start + 6], "big"))
    return out


def test_a_pes_without_length_leaves_at_its_last_byte(ffmpeg_muxing):
    """TS as FFmpeg muxes it: no frame waits for the next one's bytes, nor the last for the end
    of the segment; each frame comes out whole and in order."""
    encoder = SegmentEncoder(W, H, segment_seconds=10.0)
    per_frame = [b"".join(c.data for c in encoder.encode(f)) for f in index_frames(20)]
    assert set(_pes_lengths(b"".join(per_frame))) == {0}, "the muxer writes length-less video PES"

    got: list[int] = []
    cond = threading.Condition()

    def on_frame(frame):
        with cond:
            got.append(read_index(frame_to_ndarray(frame)))
            cond.notify_all()

    decoder = SegmentDecoder(on_frame=on_frame, stream_id="t")
    behind: list[int] = []
    try:
        for i, data in enumerate(per_frame):
            decoder.feed(data)
            with cond:
                cond.wait_for(lambda i=i: len(got) > i, timeout=5)
                behind.append(i + 1 - len(got))
        decoder.end_segment()
    finally:
        decoder.close()
    assert behind == [0] * 20, "a frame waited for the next one's bytes"
    assert got == list(range(20)) and decoder.stats.corrupt_segments == 0


def test_gate_gives_a_length_less_pes_its_length_at_its_last_packet(ffmpeg_muxing):
    encoder = SegmentEncoder(W, H, segment_seconds=10.0)
    per_frame = [b"".join(c.data for c in encoder.encode(f)) for f in index_frames(3)]
    gate = TsGate()
    passed = [gate.push(data) for data in per_frame]
    assert [len(p) for p in passed] == [len(d) for d in per_frame] and gate.error is None
    lengths = _pes_lengths(b"".join(passed))
    assert len(lengths) == 3 and all(n > 0 for n in lengths)
    # The lengths written are exact: the whole stream decodes, each frame from its own PES.
    frames = SegmentDecoder().decode_segment(b"".join(passed))
    assert [read_index(frame_to_ndarray(f)) for f in frames] == [0, 1, 2]
    # Cut inside a frame (its last packet missing): that PES is held back, not passed on short.
    cut = TsGate()
    head = per_frame[0][:-188]
    assert len(cut.push(head)) < len(head)


def test_a_segment_whose_first_frame_is_small_decodes_it_without_waiting_for_the_next():
    """FFmpeg's demuxer opens only once it holds enough TS packets to know their size: a segment
    that starts with a small keyframe (PAT + PMT + 3 packets) waited for the next frames' bytes.
    The decoder makes up the count with null packets: each segment's first frame comes out once
    its own bytes are in."""
    w = h = 64  # small frames: segment starts of fewer than 7 packets
    encoder = SegmentEncoder(w, h, segment_seconds=0.1, preset="ultrafast")
    frames = []
    for i in range(12):
        frame = ndarray_to_frame(make_index_frame(i, w, h))
        frame.pts, frame.time_base = i, Fraction(1, FPS)
        frames.append(frame)
    chunks = [(i, c) for i, f in enumerate(frames) for c in encoder.encode(f)]
    starts = {}
    for i, c in chunks:
        starts.setdefault(c.segment, (i, len(c.data)))
    assert len(starts) >= 3 and any(size < 7 * 188 for _, size in starts.values())
    got: list[int] = []
    cond = threading.Condition()

    def on_frame(frame):
        with cond:
            got.append(read_index(frame_to_ndarray(frame)))
            cond.notify_all()

    decoder = SegmentDecoder(on_frame=on_frame, stream_id="t")
    behind: list[int] = []
    try:
        for i in range(12):
            for chunk in (c for j, c in chunks if j == i):
                decoder.feed(chunk.data)
                if chunk.end:
                    decoder.end_segment()
            with cond:
                cond.wait_for(lambda i=i: len(got) > i, timeout=5)
                behind.append(i + 1 - len(got))
        for chunk in encoder.flush():
            decoder.feed(chunk.data)
        decoder.end_segment()
    finally:
        decoder.close()
    assert behind == [0] * 12, "a segment's first frame waited for the next one's bytes"
    assert got == list(range(12)) and decoder.stats.corrupt_segments == 0
