"""The output's one timeline (an input whose pts go back or jump: a publisher restarting its
encoder) and audio that never stops the stream: real PyAV encode and decode."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from comfystream.media import (
    SegmentDecoder,
    SegmentEncoder,
    frame_to_ndarray,
    make_index_frame,
    ndarray_to_frame,
    read_index,
)

W, H = 128, 96
FPS = 30
SR = 48_000


def video(index: int, pts: int) -> av.VideoFrame:
    frame = ndarray_to_frame(make_index_frame(index, W, H))
    frame.pts, frame.time_base = pts, Fraction(1, FPS)
    return frame


def audio(sample: int, value: float = 0.1) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.full((2, 1024), value, np.float32), format="fltp", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = SR, sample, Fraction(1, SR)
    return frame


def decode(segments: list[bytes]) -> list[av.VideoFrame | av.AudioFrame]:
    decoder = SegmentDecoder()
    return [f for s in segments for f in decoder.decode_segment(s)]


def seconds(frame) -> float:
    return float(frame.pts * frame.time_base)


def av_input(first_index: int, count: int, start_pts: int, video_delay: int = 4, level: float = 0.1):
    """`count` video frames from pts `start_pts` (frames) with their audio, in the order a stream's
    output meets them: audio straight through, video `video_delay` frames later (the worker)."""
    frames: list = []
    samples = start_pts * SR // FPS
    for i in range(count + video_delay):
        while i < count and samples < (start_pts + i + 1) * SR // FPS:
            frames.append(audio(samples, level))
            samples += 1024
        if i >= video_delay:
            frames.append(video(first_index + i - video_delay, start_pts + i - video_delay))
    return frames


def test_pts_going_back_to_zero_starts_a_new_timeline_and_loses_nothing():
    encoder = SegmentEncoder(W, H, segment_seconds=0.5)
    frames = [video(i, 300 + i) for i in range(20)] + [video(20 + i, i) for i in range(20)]
    out = decode(encoder.encode_all(frames))
    assert [read_index(frame_to_ndarray(f)) for f in out] == list(range(40))
    times = [seconds(f) for f in out]
    assert times == sorted(set(times)), "the output stays monotonic"
    assert abs((times[20] - times[19]) - 1 / FPS) < 1e-3, "the new timeline follows on at once"
    assert times[:20] == [(300 + i) / FPS for i in range(20)]  # (unchanged before the restart)
    assert encoder.frames_dropped == 0 and encoder.discontinuities == 1
    [event] = encoder.take_timeline_events()
    assert event["kind"] == "video" and event["input_pts_s"] == 0.0
    assert abs(event["output_pts_s"] - 20 / FPS - 300 / FPS) < 1e-3


def test_a_jump_ahead_is_closed_up_and_a_step_back_within_a_frame_is_a_duplicate():
    encoder = SegmentEncoder(W, H)
    hour = 3600 * FPS
    frames = [video(i, i) for i in range(5)] + [video(5 + i, hour + i) for i in range(5)]
    out = decode(encoder.encode_all(frames + [video(10, hour + 4)]))  # the last one: a duplicate pts
    times = [seconds(f) for f in out]
    assert [read_index(frame_to_ndarray(f)) for f in out] == list(range(10))
    assert abs(times[5] - times[4] - 1 / FPS) < 1e-3
    assert encoder.discontinuities == 1 and encoder.frames_dropped == 1


def test_audio_passes_every_packet_across_segments_and_a_restart_in_sync():
    """Audio ahead of video (the worker delays video), segment boundaries every 0.5 s, and the
    publisher's encoder restarting (pts back to 0) for both: every audio frame in is a packet out
    (the AAC encoder's delay aside), one new timeline, audio and video still together after it."""
    encoder = SegmentEncoder(W, H, segment_seconds=0.5)
    frames = av_input(0, 45, 10 * FPS) + av_input(45, 45, 0, level=0.4)  # (a louder tone after)
    audio_in = sum(isinstance(f, av.AudioFrame) for f in frames)
    out = decode(encoder.encode_all(frames))
    out_video = [f for f in out if isinstance(f, av.VideoFrame)]
    out_audio = [f for f in out if isinstance(f, av.AudioFrame)]
    assert [read_index(frame_to_ndarray(f)) for f in out_video] == list(range(90))
    assert encoder.audio_dropped == {} and encoder.audio_frames_in == audio_in
    # AAC's encoder delay: its priming packet is not carried, and its flush gives the tail's one
    assert audio_in <= encoder.audio_packets_out <= audio_in + 1
    assert len(out_audio) >= audio_in - 1
    audio_times = [seconds(f) for f in out_audio]
    assert audio_times == sorted(audio_times)
    assert encoder.discontinuities == 1, encoder.take_timeline_events()
    # after the restart, audio sits where the video of the same input time went: the louder
    # tone starts within an audio frame (21 ms) of the restart's first video frame
    restart_video = seconds(out_video[45])
    loud = [f for f in out_audio if float(np.abs(f.to_ndarray()).mean()) > 0.25]
    assert loud and abs(seconds(loud[0]) - restart_video) < 1024 / SR


def test_an_audio_frame_the_muxer_would_refuse_is_dropped_counted_and_audio_goes_on():
    encoder = SegmentEncoder(W, H, segment_seconds=0.5)
    frames = av_input(0, 30, 0)
    bad = audio(0)
    bad.sample_rate = 11000  # no AAC sample rate index: cannot be carried
    at = len(frames) // 2
    frames = frames[:at] + [bad] + frames[at:]
    out = decode(encoder.encode_all(frames))
    assert sum(isinstance(f, av.VideoFrame) for f in out) == 30
    assert encoder.audio_dropped == {"sample rate": 1} and "11000" in (encoder.audio_error or "")
    assert encoder.audio_packets_out == encoder.audio_frames_in - 1


def test_video_goes_out_at_once_when_the_audio_lags_behind_it():
    """Audio in step with the video, then 0.5 s behind it (a restarted publisher whose audio starts
    late, audio PES in bunches): the muxer does not hold the video until audio of the same time
    comes (by default it would, up to 10 s); the newest packet waits for the next one at most."""
    encoder = SegmentEncoder(W, H, segment_seconds=10.0)
    lag = 15  # frames, from frame 10 on
    frames = av_input(0, 60, 0, video_delay=0)
    videos = [f for f in frames if isinstance(f, av.VideoFrame)]
    audios = [f for f in frames if isinstance(f, av.AudioFrame)]
    sent = b""
    behind = []
    for i, frame in enumerate(videos):
        upto = i + 1 if i < 10 else i + 1 - lag  # the audio up to this media time has come
        while audios and seconds(audios[0]) < upto / FPS:
            sent += b"".join(c.data for c in encoder.encode(audios.pop(0)))
        sent += b"".join(c.data for c in encoder.encode(frame))
        out = SegmentDecoder().decode_segment(sent)
        behind.append(i + 1 - sum(isinstance(f, av.VideoFrame) for f in out))
    assert max(behind) <= 1, f"video held back behind the audio: {behind}"


def test_the_old_timelines_audio_tail_after_the_new_video_is_still_one_timeline():
    """The restart's order reversed: the new encoder's first video frames reach the output before
    the old one's last audio frames. One new timeline, every audio packet out, still in step."""
    encoder = SegmentEncoder(W, H, segment_seconds=0.5)
    old = av_input(0, 30, 10 * FPS, video_delay=0)
    tail = [f for f in old[-8:] if isinstance(f, av.AudioFrame)]
    old = [f for f in old if not any(f is t for t in tail)]
    new = av_input(30, 30, 0, video_delay=0, level=0.4)
    new_video = [f for f in new if isinstance(f, av.VideoFrame)]
    new_audio = [f for f in new if isinstance(f, av.AudioFrame)]
    frames = old + new_video[:3] + tail + new_audio + new_video[3:]
    audio_in = sum(isinstance(f, av.AudioFrame) for f in frames)
    out = decode(encoder.encode_all(frames))
    out_video = [f for f in out if isinstance(f, av.VideoFrame)]
    assert [read_index(frame_to_ndarray(f)) for f in out_video] == list(range(60))
    assert encoder.discontinuities == 1 and encoder.audio_dropped == {}
    assert audio_in <= encoder.audio_packets_out <= audio_in + 1
    loud = [f for f in out if isinstance(f, av.AudioFrame) and float(np.abs(f.to_ndarray()).mean()) > 0.25]
    assert loud and abs(seconds(loud[0]) - seconds(out_video[30])) < 0.1
