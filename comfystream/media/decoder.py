"""MPEG-TS segments -> av.VideoFrame / av.AudioFrame, decoded while the bytes arrive.

Every trickle segment starts with a keyframe and carries its own PAT/PMT, so each one is
demuxed on its own: a truncated or corrupt segment is logged and the rest of it skipped (a
:class:`~.tsgate.TsGate` keeps damaged data from the decoder), and the next one decodes
cleanly. PyAV's demuxer pulls bytes through a blocking ``read()``, so streaming decoding runs
on one thread per decoder that reads from a queue fed by :meth:`SegmentDecoder.feed`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import av
import av.error

from .tsgate import TS_PACKET, TsGate

logger = logging.getLogger(__name__)

Frame = av.VideoFrame | av.AudioFrame
FrameCallback = Callable[[Frame], None]

# Probe as little as possible: decoding starts as soon as PAT/PMT and the keyframe are in.
# (Not fflags=nobuffer: it drops the packets read while probing.) noparse: each PES is one
# whole access unit (as MPEG-TS muxers write them), so it goes to the decoder as it is; the
# H.264 parser would hold every frame back until the next one starts.
_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0", "fflags": "+noparse+nofillin"}


@dataclass
class DecoderStats:
    segments: int = 0
    corrupt_segments: int = 0
    video_frames: int = 0
    audio_frames: int = 0


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
        self.fault: str | None = None  # why (part of) the segment was skipped

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
        video: bool = True,
        audio: bool = True,
    ) -> None:
        self.on_frame = on_frame
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
        try:
            container = av.open(source, mode="r", format="mpegts", options=_OPEN_OPTIONS)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            source.fault = source.fault or f"cannot open: {exc}"
            return
        try:
            streams = []
            if self.video and container.streams.video:
                vs = container.streams.video[0]
                vs.thread_type = "SLICE"  # frame threading would hold frames back
                streams.append(vs)
            if self.audio and container.streams.audio:
                streams.append(container.streams.audio[0])
            if not streams:
                source.fault = source.fault or "no audio or video stream"
                return
            for packet in container.demux(streams):
                if packet.is_corrupt:
                    source.fault = f"corrupt {packet.stream.type} packet at pts {packet.pts}"
                    return
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    if isinstance(frame, av.VideoFrame):
                        self.stats.video_frames += 1
                    else:
                        self.stats.audio_frames += 1
                    emit(frame)
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            source.fault = source.fault or f"decode error: {exc}"
        finally:
            container.close()

    def _finish(self, source: _ByteQueue) -> None:
        self.stats.segments += 1
        if source.fault is not None:
            self.stats.corrupt_segments += 1
            logger.warning(
                "[%s] segment %d (%d bytes) damaged, the rest of it skipped: %s",
                self.stream_id,
                self.stats.segments,
                source.bytes_in,
                source.fault,
            )
