"""A gate in front of the MPEG-TS demuxer that keeps damaged data away from the decoder.

FFmpeg's demuxer resyncs over garbage and its H.264 decoder conceals what is missing, so a
damaged segment would come out as damaged frames, silently. The gate checks each 188-byte
packet (sync byte, per-PID continuity counter) and holds back the bytes of the video PES in
progress until it is known to be whole, and passes it on at its last byte:

- when its header gives its length (our encoder writes it), once that many bytes are in;
- when it has none (PES_packet_length 0: FFmpeg's default for video, so Livepeer's and most
  publishers' TS), at the packet that ends it: the one whose adaptation field carries stuffing,
  which a muxer adds only where the PES runs out of bytes (ISO 13818-1, 2.4.3.5). The gate then
  writes the PES's real length into its header, so that FFmpeg's demuxer emits it at once
  instead of waiting for the next PES to start (one frame interval; at the end of a stream,
  until the channel closes). A PES over 65535 bytes, which no length field can hold, or one
  that fills its last packet exactly, waits for the next PES start as before.

At a fault (lost sync, a continuity error: damage, or two streams joined in one segment, as when
a publisher restarts its encoder) the held PES is dropped, and so is everything after it up to
the next video keyframe (a PES start with the random access indicator, or an SPS / IDR NAL in
its first packet): frames before the fault come out intact, frames from that keyframe on too,
and none in between, which the decoder could only conceal. Every video PES dropped is counted
in ``lost_video`` (audio in ``lost_audio``). From the first fault on, the continuity counters
passed on are renumbered so that the demuxer, which saw none of the gap, does not mark the
packets after it corrupt.
"""

from __future__ import annotations

TS_PACKET = 188
_SYNC = 0x47
_NULL_PID = 0x1FFF
_PES_HEADER = 6  # start code, stream id, PES_packet_length


class TsGate:
    """Feed a segment's bytes with :meth:`push`; pass on what it returns. ``error`` says what
    the first fault was (``None`` while the segment is clean); ``faults`` counts them."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.faults = 0
        self.video_pes_in = 0  # video PES (one frame each, as muxers write them) in the segment
        self.lost_video = 0  # ...of which dropped at faults
        self.lost_audio = 0  # other PES (audio) dropped at faults
        self.offset = 0  # bytes of the segment checked so far
        self._partial = b""
        self._held = bytearray()
        self._held_video = False  # the PES held is a video one
        self._cc: dict[int, int] = {}
        self._out_cc: dict[int, int] = {}  # the last counter passed on, per PID
        self._renumber = False  # a gap was cut out: counters passed on are renumbered
        self._resyncing = False  # after a fault: dropping up to the next keyframe
        self._video_seen = False
        self._pes_pid: int | None = None  # the PES being held, while it is not whole yet
        self._pes_missing: int | None = None  # its bytes still to come (None: no length given)
        self._pes_start = 0  # where the PES header sits in the held bytes' first packet
        self._pes_size = 0  # PES bytes held so far (header included), for a length-less PES

    def push(self, data: bytes) -> bytes:
        if not data:
            return b""
        buf = self._partial + bytes(data) if self._partial else bytes(data)
        out = bytearray()
        pos = 0
        while len(buf) - pos >= TS_PACKET:
            if self._resyncing and buf[pos] != _SYNC:
                nxt = _find_sync(buf, pos + 1)
                self.offset += nxt - pos
                pos = nxt
                continue
            raw = memoryview(buf)[pos : pos + TS_PACKET]
            fault = self._check(raw)
            if fault is not None:
                self._fault(f"{fault} at byte {self.offset}")
                if raw[0] != _SYNC:
                    continue  # (resyncing now: the scan above finds the next packet)
            self.offset += TS_PACKET
            pos += TS_PACKET
            if self._resyncing:
                kind = self._resync_kind(raw)
                if kind == "restart":
                    self._resyncing = False
                elif kind == "table":
                    out += self._renumbered(raw)
                    continue
                else:
                    continue
            packet = self._renumbered(raw)
            pes_start = self._release_point(packet)
            if pes_start is not None:
                out += self._held
                self._held = bytearray(packet)
                self._held_video = self._video_seen
                self.video_pes_in += self._held_video
                self._pes_pid = _pid(packet)
                length = (packet[pes_start + 4] << 8) | packet[pes_start + 5]
                self._pes_missing = length + _PES_HEADER - (TS_PACKET - pes_start) if length else None
                self._pes_start, self._pes_size = pes_start, TS_PACKET - pes_start
                if self._pes_missing is None and _stuffed(packet) and self._close_unbounded():
                    out += self._take_held()
            elif self._pes_pid is None:
                out += packet  # no PES held (tables, or after a whole one): nothing to wait for
                continue
            else:
                self._held += packet
                if _pid(packet) == self._pes_pid:
                    if self._pes_missing is not None:
                        self._pes_missing -= _payload_size(packet)
                    else:
                        self._pes_size += _payload_size(packet)
                        if _stuffed(packet) and self._close_unbounded():
                            out += self._take_held()
                            continue
            if self._pes_missing is not None and self._pes_missing <= 0:
                out += self._held  # the PES is whole: the demuxer can emit it now
                self._held.clear()
                self._pes_pid = self._pes_missing = None
        self._partial = buf[pos:]
        return bytes(out)

    def _fault(self, what: str) -> None:
        """Drop the PES held and everything up to the next keyframe."""
        self.faults += 1
        if self.error is None:
            self.error = what
        self._drop_held()
        self._cc.clear()  # (a joined stream numbers its PIDs afresh: one fault, not one per PID)
        self._resyncing = True
        self._renumber = True

    def _drop_held(self) -> None:
        if self._held:
            if self._held_video:
                self.lost_video += 1
            else:
                self.lost_audio += 1
        self._held.clear()
        self._pes_pid = self._pes_missing = None

    def _resync_kind(self, packet: memoryview) -> str:
        """While resyncing: "restart" (a video keyframe starts here), "table" (PAT/PMT/SI, passed
        on: a joined stream may bring its own) or "drop" (counted when it starts a PES)."""
        if not packet[1] & 0x40:
            return "drop"
        start = _payload_start(packet)
        if start is None or start + _PES_HEADER > TS_PACKET:
            return "drop"
        head = packet[start : start + 4]
        if not (head[0] == 0 and head[1] == 0 and head[2] == 1):
            return "table"
        video = 0xE0 <= head[3] <= 0xEF
        if not video and self._video_seen:
            self.lost_audio += 1
            return "drop"
        if not video or _random_access(packet) or _has_keyframe_nal(packet[start:]):
            return "restart"  # (audio only: every audio PES can be decoded alone)
        self.video_pes_in += 1
        self.lost_video += 1
        return "drop"

    def _renumbered(self, packet: memoryview) -> memoryview | bytearray:
        """``packet``, with its continuity counter made to follow the last one passed on for its
        PID once a gap has been cut out (the demuxer must see no discontinuity)."""
        afc = (packet[3] >> 4) & 3
        pid = _pid(packet)
        if pid == _NULL_PID or not afc & 1:
            return packet
        cc = packet[3] & 0x0F
        if self._renumber and pid in self._out_cc:
            cc = (self._out_cc[pid] + 1) & 0x0F
            fixed = bytearray(packet)
            fixed[3] = (fixed[3] & 0xF0) | cc
            self._out_cc[pid] = cc
            return fixed
        self._out_cc[pid] = cc
        return packet

    def _close_unbounded(self) -> bool:
        """The length-less PES held has just ended: give it its length (False if none fits)."""
        length = self._pes_size - _PES_HEADER
        if length > 0xFFFF:
            return False
        at = self._pes_start + 4
        self._held[at : at + 2] = length.to_bytes(2, "big")
        return True

    def _take_held(self) -> bytes:
        out = bytes(self._held)
        self._held.clear()
        self._pes_pid = self._pes_missing = None
        return out

    def finish(self) -> bytes:
        """The end of the segment: the last PES goes through, unless the segment was cut
        inside a packet or short of the PES's own length (then that PES is incomplete and is
        dropped, and counted)."""
        if self._resyncing:
            self._partial = b""
            return b""
        if self._partial:
            what = f"truncated inside a packet at byte {self.offset + len(self._partial)}"
            self.error = self.error or what
            self.faults += 1
            # the held PES is whole if the cut packet was already starting the next one
            padded = memoryview(self._partial.ljust(TS_PACKET, b"\xff"))
            self._partial = b""
            whole = self._check(padded) is None and self._release_point(padded) is not None
            if whole and self._video_seen:  # a video frame began in the cut packet: lost
                self.video_pes_in += 1
                self.lost_video += 1
            if whole and self._pes_missing is None:
                out = bytes(self._held)
                self._held.clear()
                return out
            self._drop_held()
            return b""
        if self._pes_missing is not None:
            self.error = self.error or f"truncated: the last PES lacks {self._pes_missing} bytes at byte {self.offset}"
            self.faults += 1
            self._drop_held()
            return b""
        out, self._held = bytes(self._held), bytearray()
        return out

    def _check(self, packet: memoryview) -> str | None:
        if packet[0] != _SYNC:
            return "lost sync"
        pid = _pid(packet)
        afc = (packet[3] >> 4) & 3
        if afc == 0:
            return "reserved adaptation field control"
        if pid == _NULL_PID or not afc & 1:
            return None  # the continuity counter only counts packets with a payload
        cc = packet[3] & 0x0F
        discontinuity = afc & 2 and packet[4] > 0 and packet[5] & 0x80
        last = self._cc.get(pid)
        self._cc[pid] = cc
        if last is None or discontinuity or cc == (last + 1) & 0x0F or cc == last:
            return None  # (a repeated counter is an allowed duplicate)
        return f"continuity error on pid {pid} (expected {(last + 1) & 0x0F}, got {cc})"

    def _release_point(self, packet: memoryview | bytearray) -> int | None:
        """Where the PES starts in ``packet`` if it starts a video PES (any PES while no video
        has been seen: audio only); ``None`` otherwise."""
        if not packet[1] & 0x40:  # payload_unit_start_indicator
            return None
        start = _payload_start(packet)
        if start is None or start + _PES_HEADER > TS_PACKET:
            return None
        head = packet[start : start + 4]
        if not (head[0] == 0 and head[1] == 0 and head[2] == 1):
            return None  # a table (PAT/PMT), not a PES
        if 0xE0 <= head[3] <= 0xEF:
            self._video_seen = True
            return start
        return None if self._video_seen else start


def _payload_start(packet) -> int | None:
    afc = (packet[3] >> 4) & 3
    if not afc & 1:
        return None
    return 4 + (1 + packet[4] if afc & 2 else 0)


def _random_access(packet) -> bool:
    """The adaptation field's random_access_indicator (muxers set it on keyframes)."""
    afc = (packet[3] >> 4) & 3
    return bool(afc & 2 and packet[4] > 0 and packet[5] & 0x40)


def _has_keyframe_nal(pes) -> bool:
    """Whether a video PES's first bytes hold an H.264 SPS or IDR slice (what a decoder can
    start from), for muxers that set no random access indicator."""
    if len(pes) < 9:
        return False
    body = bytes(pes[9 + pes[8] :])  # past the PES header and its optional fields
    return has_h264_keyframe(body)


def has_h264_keyframe(data: bytes) -> bool:
    """An SPS (7) or IDR slice (5) NAL unit among the Annex B start codes of ``data``."""
    at = data.find(b"\x00\x00\x01")
    while at >= 0 and at + 3 < len(data):
        if data[at + 3] & 0x1F in (5, 7):
            return True
        at = data.find(b"\x00\x00\x01", at + 3)
    return False


def _find_sync(buf: bytes, start: int) -> int:
    """The next offset from ``start`` that looks like a packet start (a sync byte, and another one
    a packet later when the buffer reaches that far); the buffer's end if none."""
    at = buf.find(b"\x47", start)
    while at >= 0:
        if at + TS_PACKET >= len(buf) or buf[at + TS_PACKET] == _SYNC:
            return at
        at = buf.find(b"\x47", at + 1)
    return len(buf)


def _pid(packet: memoryview) -> int:
    return ((packet[1] & 0x1F) << 8) | packet[2]


def _stuffed(packet: memoryview) -> bool:
    """Whether the packet's adaptation field holds stuffing bytes (more bytes than its flags need)."""
    afc = (packet[3] >> 4) & 3
    if not afc & 2 or not afc & 1:
        return False
    length = packet[4]
    if length == 0:
        return True  # a one-byte adaptation field: stuffing of exactly one byte
    flags = packet[5]
    need = 1 + (6 if flags & 0x10 else 0) + (6 if flags & 0x08 else 0) + (1 if flags & 0x04 else 0)
    if flags & 0x02:  # transport private data: its own length byte
        if 5 + need >= TS_PACKET:
            return False
        need += 1 + packet[5 + need]
    if flags & 0x01:  # adaptation field extension: its own length byte
        if 5 + need >= TS_PACKET:
            return False
        need += 1 + packet[5 + need]
    return length > need


def _payload_size(packet: memoryview) -> int:
    afc = (packet[3] >> 4) & 3
    if not afc & 1:
        return 0
    return TS_PACKET - 4 - (1 + packet[4] if afc & 2 else 0)
