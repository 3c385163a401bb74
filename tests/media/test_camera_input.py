"""What real encoders publish (libx264 muxed by FFmpeg's own MPEG-TS muxer, as OBS, phones and
Livepeer's gateway do): keyframes over 200 KiB, B-frames, two streams joined in one segment, and
damage. Every frame comes out, or is counted as lost with the reason."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from comfystream.media import SegmentDecoder, frame_to_ndarray, make_index_frame, read_index
from comfystream.media.tsgate import TsGate

FPS = 30


def encode_ts(
    width: int,
    height: int,
    count: int,
    *,
    bitrate: int = 400_000,
    b_frames: int = 0,
    noise: bool = False,
    start: int = 0,
    seed: int = 0,
) -> bytes:
    """``count`` frames (index frames, or noise: the worst case for a keyframe's size) as one
    MPEG-TS segment, muxed by FFmpeg's defaults (video PES without a length)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "ultrafast", "bf": str(b_frames), "g": "300"}
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else None
        for i in range(count):
            image = np.roll(base, 8 * i, axis=1) if noise else make_index_frame(start + i, width, height)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = start + i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def video_packet_sizes(data: bytes) -> list[int]:
    with av.open(io.BytesIO(data), format="mpegts") as container:  # (with the parser: whole frames)
        return [p.size for p in container.demux(video=0) if p.size]


def stream_decode(data: bytes, chunk: int = 4096) -> tuple[list[av.VideoFrame], SegmentDecoder, list]:
    got: list[av.VideoFrame] = []
    losses: list[tuple[int, int, str]] = []
    decoder = SegmentDecoder(on_frame=got.append, stream_id="t", on_loss=lambda *a: losses.append(a))
    try:
        for k in range(0, len(data), chunk):
            decoder.feed(data[k : k + chunk])
        decoder.end_segment()
    finally:
        decoder.close()
    return got, decoder, losses


@pytest.fixture(scope="module")
def big_keyframe() -> bytes:
    return encode_ts(1920, 1080, 8, bitrate=20_000_000, noise=True)


def test_a_1080p_keyframe_over_200_kib_and_the_frames_after_it_decode(big_keyframe):
    sizes = video_packet_sizes(big_keyframe)
    assert sizes[0] > 200 * 1024, "the demuxer cuts a PES this big into pieces"
    frames = SegmentDecoder(stream_id="t").decode_segment(big_keyframe)
    assert [f.pts for f in frames] == [i * 3000 for i in range(8)]
    assert (frames[0].width, frames[0].height) == (1920, 1080)

    got, decoder, losses = stream_decode(big_keyframe, chunk=64 * 1024)  # as it arrives over HTTP
    assert [f.pts for f in got] == [i * 3000 for i in range(8)]
    assert decoder.stats.video_lost == 0 and decoder.stats.corrupt_segments == 0 and losses == []


def test_a_4k_keyframe_of_several_pieces_decodes():
    data = encode_ts(3840, 2160, 3, bitrate=40_000_000, noise=True)
    sizes = video_packet_sizes(data)
    assert sizes[0] > 4 * 200 * 1024, "cut into five pieces or more"
    got, decoder, losses = stream_decode(data, chunk=64 * 1024)
    assert [f.pts for f in got] == [0, 3000, 6000] and (got[0].width, got[0].height) == (3840, 2160)
    assert decoder.stats.video_lost == 0 and losses == []


def test_b_frames_come_out_in_presentation_order_with_every_pts():
    data = encode_ts(160, 96, 30, b_frames=3)
    with av.open(io.BytesIO(data), format="mpegts") as container:
        packets = [p for p in container.demux(video=0) if p.size]
        assert any(p.pts != p.dts for p in packets), "the stream has B-frames"
    got, decoder, _ = stream_decode(data, chunk=1000)
    assert [read_index(frame_to_ndarray(f)) for f in got] == list(range(30))
    assert [f.pts for f in got] == sorted(f.pts for f in got)
    assert decoder.stats.video_lost == 0


def test_two_streams_joined_in_one_segment_both_decode():
    """A publisher that restarts its encoder mid-segment: the second stream's counters start
    afresh (a continuity error) and its pts too; both halves come out, nothing is lost."""
    first = encode_ts(160, 96, 20, start=100, seed=1)
    second = encode_ts(160, 96, 20, start=0, seed=2)
    got, decoder, losses = stream_decode(first + second)
    assert [read_index(frame_to_ndarray(f)) for f in got] == list(range(100, 120)) + list(range(20))
    assert decoder.stats.video_lost == 0 and losses == []


def test_a_stream_cut_mid_packet_then_joined_loses_only_the_cut_frame():
    first = encode_ts(160, 96, 20, start=100, seed=1)
    second = encode_ts(160, 96, 20, start=0, seed=2)
    cut = first[: len(first) - 1000]  # its last frame (and the muxer's tail) cut, not at a packet edge
    assert len(cut) % 188
    got, decoder, losses = stream_decode(cut + second)
    indices = [read_index(frame_to_ndarray(f)) for f in got]
    assert indices[-20:] == list(range(20)), "the joined stream decodes from its keyframe on"
    before = indices[:-20]
    assert before == list(range(100, 100 + len(before)))
    # the frame cut in two is lost and counted (frames whose bytes never came are not in the input)
    assert decoder.stats.video_lost == 1
    assert losses == [(1, 0, decoder.stats.last_fault)] and "lost sync" in losses[0][2]


def test_damage_loses_frames_up_to_the_next_keyframe_and_counts_them():
    """A lost TS packet in the first of two joined streams: its frames after the damage are
    dropped (the decoder could only conceal them) and counted; the second stream decodes."""
    first = encode_ts(160, 96, 20, start=100, seed=1)
    second = encode_ts(160, 96, 20, start=0, seed=2)
    at = next(  # a packet inside a frame (not one that starts it: its loss would hide the frame)
        k
        for k in range(len(first) // 2 // 188 * 188, len(first), 188)
        if first[k + 1] & 0x5F == 0x01 and first[k + 2] == 0x00  # pid 256, no unit start
    )
    damaged = first[:at] + first[at + 188 :]
    got, decoder, losses = stream_decode(damaged + second)
    indices = [read_index(frame_to_ndarray(f)) for f in got]
    assert indices[-20:] == list(range(20))
    before = indices[:-20]
    assert before == list(range(100, 100 + len(before))) and len(before) < 20
    assert decoder.stats.video_lost == 20 - len(before)
    assert len(losses) == 1 and "continuity" in losses[0][2]


def test_gate_counts_the_video_pes_it_drops():
    data = encode_ts(160, 96, 10)
    gate = TsGate()
    # packets 3-8: frame 0 (PAT, PMT, SDT before it), 9-10: frame 1, 11-13: frame 2
    assert [data[k * 188 + 1] & 0x40 for k in (3, 9, 11, 12)] == [0x40, 0x40, 0x40, 0]
    passed = gate.push(data[: 188 * 12] + data[188 * 13 :]) + gate.finish()  # a packet of frame 2 lost
    assert gate.faults == 1 and "continuity error on pid 256" in (gate.error or "")
    # frames 0 and 1 went through whole; 2 (damaged) and the rest (no keyframe after it) did not
    assert gate.video_pes_in == 10 and gate.lost_video == 8
    assert len(SegmentDecoder().decode_segment(passed)) == 2
