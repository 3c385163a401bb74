"""MPEG-TS segments -> av.VideoFrame / av.AudioFrame, decoded while the bytes arrive.

Every trickle segment starts with a keyframe and carries its own PAT/PMT, so each one is
demuxed on its own. A :class:`~.tsgate.TsGate` keeps damaged data from the decoder: at a fault
(damage, a truncated segment, two streams joined in one) the frames up to the next keyframe are
dropped, and decoding goes on from there. Every frame that does not come out is counted
(``DecoderStats.video_lost``, and ``on_loss`` is told with the reason); the next segment decodes
cleanly whatever happened to this one. PyAV's demuxer pulls bytes through a blocking ``read()``, so streaming decoding runs
on one thread per decoder that reads from a queue fed by :meth:`SegmentDecoder.feed`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import av.error

from .tsgate import TS_PACKET, TsGate, has_h264_keyframe

logger = logging.getLogger(__name__)

Frame = av.VideoFrame | av.AudioFrame
FrameCallback = Callable[[Frame], None]
LossCallback = Callable[[int, int, str], None]  # (video frames lost, audio packets lost, why)

# Probe as little as possible: decoding starts as soon as PAT/PMT and the keyframe are in.
# (Not fflags=nobuffer: it drops the packets read while probing.) noparse: each PES is one
# whole access unit (as MPEG-TS muxers write them), so it goes to the decoder as it is; the
# H.264 parser would hold every frame back until the next one starts.
_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fflags": "+noparse+nofillin"}
# ...but FFmpeg's demuxer cuts a PES longer than 200 KiB (MAX_PES_PAYLOAD: a 1080p keyframe at a
# few Mbit/s, any 4K one) into packets of about that size, the ones after the first without a
# pts; without the parser they would reach the decoder as frames of their own (and fail). A
# packet that big may have been cut: it waits for its tail, and the pieces are decoded as one.
_MAX_PES_PAYLOAD = 200 * 1024
_MAY_BE_CUT = _MAX_PES_PAYLOAD - TS_PACKET


@dataclass
class DecoderStats:
    segments: int = 0
    corrupt_segments: int = 0
    video_frames: int = 0
    audio_frames: int = 0
    video_lost: int = 0  # video frames of the input that did not come out (damage, decode errors)
    audio_lost: int = 0  # audio packets likewise
    last_fault: str | None = None


# FFmpeg's MPEG-TS demuxer opens only once its first read holds enough 188-byte packets to be
# sure of the packet size (7 with a partial buffer, measured): a segment whose first frame is
# small (PAT + PMT + a keyframe of 3 packets) waited for the next 2 frames' bytes before its first
# frame came out. Null packets (PID 0x1FFF, which every demuxer discards) after the segment's first
# bytes make up the count, with a margin for the 192/204-byte scores.
_PROBE_PACKETS = 16
_NULL_PACKET = b"\x47\x1f\xff\x10" + b"\xff" * 184


class _ByteQueue:
    """A file-like whose ``read`` blocks until bytes arrive; ``b""`` once the segment ended."""

    def __init__(self) -> None:
        self._chunks: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._current = memoryview(b"")
        self._ended = False
        self._gate = TsGate()
        self._padded = False  # the segment's first bytes went out with their null packets
        self.bytes_in = 0
        self.fault: str | None = None  # why (part of) the segment was lost
        self.video_out = 0  # frames decoded from it
        self.audio_lost = 0  # audio packets the decoder lost (the gate counts its own)

    def put(self, data: bytes) -> None:
        if data:
            self.bytes_in += len(data)
            passed = self._gate.push(data)
            if passed:
                self._chunks.put(self._pad_first(passed))

    def _pad_first(self, passed: bytes) -> bytes:
        if self._padded:
            return passed
        self._padded = True
        packets, rest = divmod(len(passed), TS_PACKET)
        if rest or packets >= _PROBE_PACKETS:  # (the gate passes whole packets)
            return passed
        return passed + _NULL_PACKET * (_PROBE_PACKETS - packets)

    def end(self) -> None:
        rest = self._gate.finish()
        if rest:
            self._chunks.put(rest)
        if self._gate.error is not None and self.fault is None:
            self.fault = self._gate.error
        self._chunks.put(None)

    @property
    def gate(self) -> TsGate:
        return self._gate

    def read(self, n: int = -1) -> bytes:
        while not self._current:
            if self._ended:
                return b""
            item = self._chunks.get()
            if item is None:
                self._ended = True
                return b""
            self._current = memoryview(item)
        if n < 0 or n >= len(self._current):
            out, self._current = self._current, memoryview(b"")
        else:
            out, self._current = self._current[:n], self._current[n:]
        return out.tobytes()


class SegmentDecoder:
    """Feed the bytes of one segment after another; frames come out with ``pts``/``time_base``.

    Streaming use (frames are handed to ``on_frame`` on the decoder's thread)::

        dec = SegmentDecoder(on_frame=cb, stream_id="s1")
        dec.feed(chunk); dec.feed(chunk); dec.end_segment()   # as the bytes arrive
        dec.close()

    Whole-segment use, in the caller's thread: ``frames = dec.decode_segment(data)``.
    """

    def __init__(
        self,
        on_frame: FrameCallback | None = None,
        *,
        stream_id: str = "",
        on_loss: LossCallback | None = None,
        video: bool = True,
        audio: bool = True,
    ) -> None:
        self.on_frame = on_frame
        self.on_loss = on_loss  # told on the decoder's thread, once per segment that lost frames
        self.stream_id = stream_id
        self.video = video
        self.audio = audio
        self.stats = DecoderStats()
        self._segments: queue.SimpleQueue[_ByteQueue | None] = queue.SimpleQueue()
        self._current: _ByteQueue | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- streaming ------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes of the current segment (a segment starts with the first feed after
        :meth:`end_segment`)."""
        if self._closed:
            raise RuntimeError("SegmentDecoder is closed")
        if self.on_frame is None:
            raise RuntimeError("streaming decoding needs on_frame; use decode_segment() otherwise")
        if self._current is None:
            self._current = _ByteQueue()
            self._ensure_thread()
            self._segments.put(self._current)
        self._current.put(data)

    def end_segment(self) -> None:
        """The current segment is complete (or was cut short: it is decoded as far as it goes)."""
        if self._current is not None:
            self._current.end()
            self._current = None

    def close(self, timeout: float = 5.0) -> None:
        """Finish the segment in progress and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self.end_segment()
        self._segments.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("[%s] decoder thread did not stop within %.1fs", self.stream_id, timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"segment-decoder-{self.stream_id or id(self)}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        assert self.on_frame is not None
        while True:
            source = self._segments.get()
            if source is None:
                return
            self._decode(source, self.on_frame)
            # drain what is left of a segment we gave up on, up to its end
            while source.read(1 << 20):
                pass
            self._finish(source)

    # -- whole segment ----------------------------------------------------------------------
    def decode_segment(self, data: bytes) -> list[Frame]:
        """Decode one complete segment in the calling thread."""
        source = _ByteQueue()
        source.put(data)
        source.end()
        frames: list[Frame] = []
        self._decode(source, frames.append)
        self._finish(source)
        return frames

    # -- core -------------------------------------------------------------------------------
    def _decode(self, source: _ByteQueue, emit: FrameCallback) -> None:
        """Decode what the gate lets through. Which frames did not come out is worked out in
        :meth:`_finish` (the gate counts the segment's video PES, one frame each); here a failure
        is only described."""
        try:
            container = av.open(source, mode="r", format="mpegts", options=_OPEN_OPTIONS)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            source.fault = source.fault or f"cannot open: {exc}"
            return
        try:
            streams = []
            video = None
            if self.video and container.streams.video:
                video = container.streams.video[0]
                video.thread_type = "SLICE"  # frame threading would hold frames back
                streams.append(video)
            if self.audio and container.streams.audio:
                streams.append(container.streams.audio[0])
            if not streams:
                source.fault = source.fault or "no audio or video stream"
                return
            pieces: list[av.Packet] = []  # a video packet the demuxer may have cut, and its tail so far
            broken = False  # a video packet failed: the ones after it wait for a keyframe
            for packet in container.demux(streams):
                if packet.stream is video:
                    if pieces and packet.pts is None and packet.size:
                        pieces.append(packet)  # more of a PES over 200 KiB
                        if packet.size > _MAY_BE_CUT:
                            continue
                        packet, pieces = _joined(pieces, video), []
                    elif pieces:  # a new frame (or the end): the one waiting was whole
                        broken = self._decode_video(_joined(pieces, video), emit, source, broken)
                        pieces = []
                    if packet.size > _MAY_BE_CUT:
                        pieces.append(packet)
                        continue
                    broken = self._decode_video(packet, emit, source, broken)
                    continue
                if packet.is_corrupt:
                    source.fault = source.fault or f"corrupt audio packet at pts {packet.pts}"
                    source.audio_lost += 1
                    continue
                try:
                    for frame in packet.decode():
                        if frame.pts is not None:
                            self.stats.audio_frames += 1
                            emit(frame)
                except av.error.FFmpegError as exc:
                    source.fault = source.fault or f"audio decode error: {exc}"
                    source.audio_lost += 1
            if pieces and video is not None:  # (the demuxer ended without its flush packet)
                self._decode_video(_joined(pieces, video), emit, source, broken)
                for frame in video.codec_context.decode(None):
                    self._emit_video(frame, emit, source)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            source.fault = source.fault or f"demux error: {exc}"
        finally:
            container.close()

    def _decode_video(self, packet: av.Packet, emit: FrameCallback, source: _ByteQueue, broken: bool) -> bool:
        """Decode one video packet; returns whether decoding is broken (a packet failed: those
        after it refer to it, so they are dropped up to the next keyframe)."""
        if (broken or packet.is_corrupt) and packet.size:
            if packet.is_corrupt or not has_h264_keyframe(bytes(packet)):
                source.fault = source.fault or f"corrupt video packet at pts {packet.pts}"
                return True
        try:
            for frame in packet.decode():
                self._emit_video(frame, emit, source)
        except av.error.FFmpegError as exc:
            source.fault = source.fault or f"decode error at pts {packet.pts}: {exc}"
            return True
        return False

    def _emit_video(self, frame: av.VideoFrame, emit: FrameCallback, source: _ByteQueue) -> None:
        if frame.pts is None:
            source.fault = source.fault or "a decoded frame without pts"
            return
        self.stats.video_frames += 1
        source.video_out += 1
        emit(frame)

    def _finish(self, source: _ByteQueue) -> None:
        self.stats.segments += 1
        gate = source.gate
        video_lost = max(gate.video_pes_in - source.video_out, gate.lost_video)
        audio_lost = gate.lost_audio + source.audio_lost
        if source.fault is None and not video_lost and not audio_lost:
            return
        self.stats.corrupt_segments += 1
        self.stats.video_lost += video_lost
        self.stats.audio_lost += audio_lost
        reason = source.fault or "frames did not decode"
        self.stats.last_fault = reason
        logger.log(
            logging.WARNING if video_lost or audio_lost else logging.INFO,  # (streams joined cleanly)
            "[%s] segment %d (%d bytes): %d video frame(s), %d audio packet(s) lost: %s",
            self.stream_id,
            self.stats.segments,
            source.bytes_in,
            video_lost,
            audio_lost,
            reason,
        )
        if self.on_loss is not None and (video_lost or audio_lost):
            try:
                self.on_loss(video_lost, audio_lost, reason)
            except Exception:
                logger.exception("[%s] on_loss failed", self.stream_id)


def _joined(pieces: list[av.Packet], stream: Any) -> av.Packet:
    """The pieces the demuxer cut a PES into, as one packet with the first one's timestamps."""
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    packet = av.Packet(b"".join(bytes(p) for p in pieces))
    packet.pts, packet.dts, packet.time_base = first.pts, first.dts, first.time_base
    packet.stream = stream
    return packet
