"""Frames -> MPEG-TS segments: H.264 (libx264, zerolatency, no B-frames), audio passed through.

One libx264 context lives for the whole stream; each segment gets its own small MPEG-TS muxer
(so it carries PAT/PMT and starts with an IDR frame, and can be decoded alone). Muxed bytes
come out packet by packet (``flush_packets``), so a publisher can send a segment while it is
still being encoded. Timestamps are the frames' own, rescaled exactly to MPEG-TS's 1/90000.

The output is one timeline: when the input's pts go back or jump ahead by more than
``max_pts_gap_s`` (a publisher that restarted its encoder, another source spliced in), the frames
from there on are shifted to follow on from the last one out (``discontinuities``, and
``take_timeline_events()`` says when), audio and video alike, so the output stays monotonic and
in sync rather than the muxer refusing every frame until the new pts pass the old ones.

Audio never stops the stream: an audio packet the muxer refuses is dropped and counted by reason
in ``audio_dropped`` (``audio_error`` keeps the last message); nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from .convert import SWS_THREADS

logger = logging.getLogger(__name__)

MIME_TYPE = "video/mp2t"
TS_TIME_BASE = Fraction(1, 90_000)
# flush_packets: bytes out as each packet is muxed. omit_video_pes_length=0: video PES carry
# their length, so a reader knows a frame is whole at its last byte (without it, the demuxer
# and the TsGate wait for the next frame's PES to start: a frame of latency per hop).
# max_interleave_delta=1 (us): the muxer does not hold packets for the other stream to catch up
# (by default up to 10 s): audio lags the video at the muxer by the AAC encoder's delay (43 ms),
# more when the input's audio comes in bunches or a restarted publisher's audio starts a segment
# late, and every video frame was held back with it (0.6 s after an encoder restart in
# bench/camera.py). A packet alone in the queue still waits for the next packet of any stream
# (an audio one within 21 ms): PyAV offers no muxing without the interleaving queue.
_MUX_OPTIONS = {"flush_packets": "1", "omit_video_pes_length": "0", "max_interleave_delta": "1"}
_MAX_HELD_AUDIO = 200  # packets held for the next segment (about 4 s of AAC)
_DEFAULT_INTERVAL = 3000  # a frame interval (1/90000) until one is measured: 30 fps
_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


@dataclass
class EncodedChunk:
    """Bytes of segment number ``segment``; ``end`` marks its last chunk (``data`` may be empty)."""

    segment: int
    data: bytes
    end: bool = False


class _Sink:
    """File-like the muxer writes into; collects what one call produced."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def _adts_header(payload_len: int, sample_rate: int, channels: int) -> bytes:
    """The 7-byte ADTS header of one AAC-LC frame: MPEG-TS carries AAC as ADTS."""
    length = payload_len + 7
    sr_index = _ADTS_RATES.index(sample_rate)
    profile = 1  # AAC LC (audio object type 2, minus one)
    return bytes(
        (
            0xFF,
            0xF1,  # sync, MPEG-4, layer 0, no CRC
            (profile << 6) | (sr_index << 2) | ((channels >> 2) & 1),
            ((channels & 3) << 6) | (length >> 11),
            (length >> 3) & 0xFF,
            ((length & 7) << 5) | 0x1F,
            0xFC,
        )
    )


def _to_ts(pts: int, time_base: Fraction) -> int:
    """``pts`` in ``time_base`` as 1/90000 ticks (exact when it is representable)."""
    value = Fraction(pts) * Fraction(time_base) / TS_TIME_BASE
    return value.numerator // value.denominator if value.denominator == 1 else round(value)


class SegmentEncoder:
    """Encode frames into MPEG-TS segments of about ``segment_seconds`` each.

    ``encode(frame)`` returns the chunks that frame produced: feed them to a publisher in
    order, opening a trickle segment when ``chunk.segment`` changes and closing it at
    ``chunk.end``. ``flush()`` ends the stream. Video frames are scaled to ``width x height``
    in the same swscale pass as their conversion to yuv420p.
    """

    mime_type = MIME_TYPE

    def __init__(
        self,
        width: int,
        height: int,
        *,
        segment_seconds: float = 1.0,
        preset: str = "superfast",
        crf: int = 23,
        bitrate: int | None = None,
        audio_codec: str = "aac",
        stream_id: str = "",
        mux_options: dict[str, str] | None = None,
        max_pts_gap_s: float = 1.0,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs a positive even size, got {width}x{height}")
        if segment_seconds <= 0:
            raise ValueError("segment_seconds must be positive")
        self.width = width
        self.height = height
        self.segment_seconds = segment_seconds
        self.stream_id = stream_id
        self.audio_codec = audio_codec
        self.frames_in = 0
        self.frames_dropped = 0
        self.segments_out = 0
        self.audio_frames_in = 0
        self.audio_packets_out = 0  # AAC packets muxed into segments
        self.audio_dropped: dict[str, int] = {}  # reason -> packets (or frames) not sent
        self.audio_error: str | None = None  # the last reason audio was dropped
        self.discontinuities = 0
        self._mux_options = dict(mux_options) if mux_options is not None else _MUX_OPTIONS
        self._max_gap = round(max_pts_gap_s / TS_TIME_BASE)
        self._max_nudge = round(0.25 / TS_TIME_BASE)  # (a quarter second: an AAC tail, a frame or two)
        # The output timeline: input pts (as 1/90000 ticks) + offset. One offset per kind, since
        # audio and video each meet a discontinuity at their own first frame past it (video later:
        # it comes through the worker); the second one adopts the first's offset when it fits.
        self._offset = {"video": 0, "audio": 0}
        self._latest_offset = 0
        self._timeline_events: list[dict] = []
        self._video_interval = _DEFAULT_INTERVAL
        self._audio_end: int | None = None  # output ticks where the last audio frame ends
        self._segment_audio_dts: int | None = None  # the last audio dts muxed in this segment (ticks)

        video = av.CodecContext.create("libx264", "w")
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.time_base = TS_TIME_BASE
        video.gop_size = 1 << 30  # keyframes only where a segment starts
        options = {"preset": preset, "tune": "zerolatency", "bf": "0", "forced-idr": "1", "scenecut": "0"}
        if bitrate:
            video.bit_rate = bitrate
            # x264 budgets a bitrate per frame at the codec's frame rate, which is 1/time_base
            # (90000 fps) unless given: every frame would get ~100 bits and come out grey
            video.framerate = Fraction(30)
        else:
            options["crf"] = str(crf)
        video.options = options
        video.open()
        self._video = video
        # One scaler for the stream's frames: `frame.reformat` would set one up for every frame,
        # which costs more than the conversion (rgb24 512x512: 1.4 ms a frame, 0.8 ms reused).
        self._scaler: VideoReformatter | None = VideoReformatter()

        self._audio: av.CodecContext | None = None
        self._resampler: av.AudioResampler | None = None
        self._held_audio: deque[av.Packet] = deque()

        self._sink = _Sink()
        self._mux: av.container.OutputContainer | None = None
        self._mux_video = None
        self._mux_audio = None
        self._segment = -1
        self._segment_start: int | None = None  # ts ticks of the segment's first frame
        self._last_video_pts: int | None = None  # on the output timeline

    # -- public ---------------------------------------------------------------------------
    def encode(self, frame: av.VideoFrame | av.AudioFrame) -> list[EncodedChunk]:
        if isinstance(frame, av.VideoFrame):
            return self._encode_video(frame)
        if isinstance(frame, av.AudioFrame):
            return self._encode_audio(frame)
        raise TypeError(f"expected av.VideoFrame or av.AudioFrame, got {type(frame).__name__}")

    def flush(self) -> list[EncodedChunk]:
        """Drain the encoders and end the last segment."""
        out: list[EncodedChunk] = []
        for packet in self._video.encode(None):
            self._mux_video_packet(packet)
        if self._audio is not None and self._resampler is not None:
            try:
                packets = [p for f in self._resampler.resample(None) for p in self._audio.encode(f)]
                packets += list(self._audio.encode(None))
            except (av.error.FFmpegError, ValueError) as exc:
                packets = []
                self._drop_audio("encoder error", str(exc))
            for packet in packets:
                self._mux_audio_packet(packet)
        if self._mux is not None:
            out += self._chunk()
            out += self._end_segment()
        return out

    def close(self) -> None:
        """Free the codecs now (libx264 holds a pool of threads until its context is freed),
        rather than whenever the garbage collector reaches this encoder. Call after `flush`."""
        if self._mux is not None:
            self._mux.close()
        self._video = self._audio = self._resampler = self._scaler = None  # type: ignore[assignment]
        self._mux = self._mux_video = self._mux_audio = None
        self._held_audio.clear()

    def take_timeline_events(self) -> list[dict]:
        """The discontinuities met since the last call: ``{"kind", "input_pts_s", "output_pts_s",
        "offset_s"}`` (the kind that met it first; the other follows the same offset)."""
        events, self._timeline_events = self._timeline_events, []
        return events

    def encode_all(self, frames) -> list[bytes]:
        """Whole segments for an iterable of frames (tests, files); includes the flush."""
        segments: dict[int, list[bytes]] = {}
        for frame in frames:
            for c in self.encode(frame):
                segments.setdefault(c.segment, []).append(c.data)
        for c in self.flush():
            segments.setdefault(c.segment, []).append(c.data)
        return [b"".join(parts) for _, parts in sorted(segments.items())]

    # -- video ------------------------------------------------------------------------------
    def _encode_video(self, frame: av.VideoFrame) -> list[EncodedChunk]:
        self.frames_in += 1
        if frame.pts is None or frame.time_base is None:
            raise ValueError("video frame without pts/time_base")
        pts = self._place("video", _to_ts(frame.pts, frame.time_base))
        if self._last_video_pts is not None and pts <= self._last_video_pts:
            # (the same pts twice, or a step back within a frame: not a new timeline)
            self.frames_dropped += 1
            logger.warning(
                "[%s] video frame dropped: pts %s not after %s", self.stream_id, pts, self._last_video_pts
            )
            return []
        if self._last_video_pts is not None:
            self._video_interval = pts - self._last_video_pts
        self._last_video_pts = pts
        out: list[EncodedChunk] = []
        new_segment = self._mux is None or (
            self._segment_start is not None
            and Fraction(pts - self._segment_start) * TS_TIME_BASE >= self.segment_seconds
        )
        if new_segment:
            if self._mux is not None:
                out += self._end_segment()
            self._start_segment(pts)
        yuv = self._scaler.reformat(frame, width=self.width, height=self.height, format="yuv420p", threads=SWS_THREADS)
        # already yuv420p at size: reformat gave the caller's frame back; x264 copies what it
        # encodes, so borrow it and put its timestamps and picture type back afterwards
        saved = (yuv.pts, yuv.time_base, yuv.pict_type) if yuv is frame else None
        yuv.pts = pts
        yuv.time_base = TS_TIME_BASE
        yuv.pict_type = PictureType.I if new_segment else PictureType.NONE
        try:
            for packet in self._video.encode(yuv):
                self._mux_video_packet(packet)
        finally:
            if saved is not None:
                yuv.pts, yuv.time_base, yuv.pict_type = saved
        out += self._chunk()
        return out

    # -- the output timeline ----------------------------------------------------------------
    def _fits(self, kind: str, out: int) -> bool:
        """Whether ``out`` (output ticks) follows on from the last ``kind`` frame out."""
        if kind == "video":
            last = self._last_video_pts
            return last is None or last - self._video_interval < out <= last + self._max_gap
        end = self._audio_end
        # (audio frames follow each other exactly; a tick or two of rounding is not a step back)
        return end is None or end - 90 <= out <= end + self._max_gap

    def _place(self, kind: str, pts: int) -> int:
        """``pts`` (input ticks) on the output timeline, starting a new timeline segment when it
        does not follow on from the last frame of its kind."""
        out = pts + self._offset[kind]
        if self._fits(kind, out):
            return out
        latest = self._latest_offset
        if latest != self._offset[kind]:
            # The other kind has met this discontinuity: follow its offset, moved on just enough
            # when this kind's last frames out ran a little past where the other resumed (the old
            # timeline's audio tail after the new video): one new timeline, in sync within that.
            end = self._last_video_pts if kind == "video" else self._audio_end
            nudge = 0 if end is None else max(0, end + (1 if kind == "video" else 0) - (pts + latest))
            if nudge <= self._max_nudge and self._fits(kind, pts + latest + nudge):
                self._offset[kind] = latest + nudge
                return pts + latest + nudge
        follows = [self._audio_end or 0]
        if self._last_video_pts is not None:
            follows.append(self._last_video_pts + self._video_interval)
        offset = max(follows) - pts
        self._offset[kind] = self._latest_offset = offset
        self.discontinuities += 1
        event = {
            "kind": kind,
            "input_pts_s": round(float(pts * TS_TIME_BASE), 6),
            "output_pts_s": round(float((pts + offset) * TS_TIME_BASE), 6),
            "offset_s": round(float(offset * TS_TIME_BASE), 6),
        }
        self._timeline_events.append(event)
        logger.info(
            "[%s] %s pts discontinuity: input %.3f s goes out at %.3f s (a new timeline)",
            self.stream_id,
            kind,
            event["input_pts_s"],
            event["output_pts_s"],
        )
        return pts + offset

    # -- audio ------------------------------------------------------------------------------
    def _encode_audio(self, frame: av.AudioFrame) -> list[EncodedChunk]:
        if frame.pts is None or frame.time_base is None:
            raise ValueError("audio frame without pts/time_base")
        self.audio_frames_in += 1
        if frame.sample_rate not in _ADTS_RATES:
            self._drop_audio("sample rate", f"audio sample rate {frame.sample_rate} cannot be carried as AAC")
            return []
        time_base = Fraction(frame.time_base)
        start = self._place("audio", _to_ts(frame.pts, time_base))
        self._audio_end = start + _to_ts(frame.samples, Fraction(1, frame.sample_rate))
        saved = frame.pts
        frame.pts = round(start * TS_TIME_BASE / time_base)  # (the caller's frame: put back below)
        try:
            if self._audio is None:
                enc = av.CodecContext.create(self.audio_codec, "w")
                enc.sample_rate = frame.sample_rate
                enc.layout = frame.layout.name
                enc.format = "fltp"
                enc.time_base = Fraction(1, frame.sample_rate)
                enc.open()
                self._audio = enc
                self._resampler = av.AudioResampler(
                    format="fltp", layout=frame.layout.name, rate=frame.sample_rate, frame_size=enc.frame_size
                )
            assert self._resampler is not None
            # the resampler re-frames to the encoder's frame size and keeps the timeline (1/rate)
            packets = [p for f in self._resampler.resample(frame) for p in self._audio.encode(f)]
        except (av.error.FFmpegError, ValueError) as exc:
            self._drop_audio("encoder error", str(exc))
            return []
        finally:
            frame.pts = saved
        for packet in packets:
            self._mux_audio_packet(packet)
        return self._chunk() if self._mux is not None else []

    def _drop_audio(self, reason: str, message: str, count: int = 1) -> None:
        first = reason not in self.audio_dropped
        self.audio_dropped[reason] = self.audio_dropped.get(reason, 0) + count
        self.audio_error = message
        logger.log(
            logging.WARNING if first else logging.DEBUG,  # (once per reason, the counts say the rest)
            "[%s] audio dropped (%s): %s",
            self.stream_id,
            reason,
            message,
        )

    # -- muxing -----------------------------------------------------------------------------
    def _start_segment(self, start_pts: int) -> None:
        self._segment += 1
        self._segment_start = start_pts
        self._mux = av.open(self._sink, "w", format="mpegts", container_options=self._mux_options)
        self._segment_audio_dts = None
        self._mux_video = self._mux.add_mux_stream("h264", width=self.width, height=self.height)
        self._mux_video.time_base = TS_TIME_BASE
        self._mux_audio = None
        if self._audio is not None:
            self._mux_audio = self._mux.add_mux_stream("aac", rate=self._audio.sample_rate)
            self._mux_audio.time_base = TS_TIME_BASE
        logger.debug("[%s] segment %d starts at pts %d", self.stream_id, self._segment, start_pts)

    def _end_segment(self) -> list[EncodedChunk]:
        assert self._mux is not None
        self._mux.close()
        data = self._sink.take()
        seg = self._segment
        self._mux = None
        self.segments_out += 1
        return [EncodedChunk(seg, data, end=True)]

    def _mux_video_packet(self, packet: av.Packet) -> None:
        assert self._mux is not None and self._mux_video is not None
        packet.stream = self._mux_video
        self._mux.mux(packet)
        if self._held_audio and self._mux_audio is not None:
            self._mux_held_audio()

    def _mux_audio_packet(self, packet: av.Packet) -> None:
        assert self._audio is not None
        if packet.pts is not None and packet.pts < 0:
            # AAC's priming packet sits 1024 samples before the first input: MPEG-TS cannot
            # carry a negative pts, and clamping it would shift the audio by a frame
            return
        adts = _adts_header(packet.size, self._audio.sample_rate, self._audio.layout.nb_channels)
        framed = av.Packet(adts + bytes(packet))
        framed.pts, framed.dts = packet.pts, packet.dts
        framed.duration = packet.duration
        framed.time_base = packet.time_base
        if self._mux is None or self._mux_audio is None:
            # no segment yet, or this one started before audio did: the next segment takes it
            self._held_audio.append(framed)
            while len(self._held_audio) > _MAX_HELD_AUDIO:
                self._held_audio.popleft()
                self._drop_audio("no video segment", f"more than {_MAX_HELD_AUDIO} audio packets before video")
            return
        self._held_audio.append(framed)
        self._mux_held_audio()

    def _mux_held_audio(self) -> None:
        assert self._mux is not None and self._mux_audio is not None
        while self._held_audio:
            packet = self._held_audio.popleft()
            dts = _to_ts(packet.dts if packet.dts is not None else packet.pts, packet.time_base)
            if self._segment_audio_dts is not None and dts <= self._segment_audio_dts:
                # the muxer would refuse it (EINVAL: dts not increasing)
                self._drop_audio("not after the last", f"audio dts {dts} not after {self._segment_audio_dts}")
                continue
            packet.stream = self._mux_audio
            try:
                self._mux.mux(packet)
            except av.error.FFmpegError as exc:
                self._drop_audio("muxer refused", f"audio packet at dts {dts}: {exc}")
                continue
            self._segment_audio_dts = dts
            self.audio_packets_out += 1

    def _chunk(self) -> list[EncodedChunk]:
        data = self._sink.take()
        return [EncodedChunk(self._segment, data)] if data else []
