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

At the first fault the held PES and everything after it are dropped: the frames before the fault
come out intact, and none after it.
"""

from __future__ import annotations

TS_PACKET = 188
_SYNC = 0x47
_NULL_PID = 0x1FFF
_PES_HEADER = 6  # start code, stream id, PES_packet_length


class TsGate:
    """Feed a segment's bytes with :meth:`push`; pass on what it returns. ``error`` says why
    the rest of the segment was dropped (``None`` while it is clean)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.offset = 0  # bytes of the segment checked so far
        self._partial = b""
        self._held = bytearray()
        self._cc: dict[int, int] = {}
        self._video_seen = False
        self._pes_pid: int | None = None  # the PES being held, while it is not whole yet
        self._pes_missing: int | None = None  # its bytes still to come (None: no length given)
        self._pes_start = 0  # where the PES header sits in the held bytes' first packet
        self._pes_size = 0  # PES bytes held so far (header included), for a length-less PES

    def push(self, data: bytes) -> bytes:
        if self.error is not None or not data:
            return b""
        buf = self._partial + bytes(data) if self._partial else bytes(data)
        whole = len(buf) - len(buf) % TS_PACKET
        self._partial = buf[whole:]
        out = bytearray()
        view = memoryview(buf)
        for start in range(0, whole, TS_PACKET):
            packet = view[start : start + TS_PACKET]
            fault = self._check(packet)
            if fault is not None:
                self.error = f"{fault} at byte {self.offset}"
                self._held.clear()
                self._partial = b""
                return bytes(out)
            self.offset += TS_PACKET
            pes_start = self._release_point(packet)
            if pes_start is not None:
                out += self._held
                self._held = bytearray(packet)
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
        return bytes(out)

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
        dropped)."""
        if self.error is not None:
            return b""
        if self._partial:
            self.error = f"truncated inside a packet at byte {self.offset + len(self._partial)}"
            # the held PES is whole if the cut packet was already starting the next one
            padded = memoryview(self._partial.ljust(TS_PACKET, b"\xff"))
            whole = self._check(padded) is None and self._release_point(padded) is not None
            out = bytes(self._held) if whole and self._pes_missing is None else b""
            self._held.clear()
            return out
        if self._pes_missing is not None:
            self.error = f"truncated: the last PES lacks {self._pes_missing} bytes at byte {self.offset}"
            self._held.clear()
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

    def _release_point(self, packet: memoryview) -> int | None:
        """Where the PES starts in ``packet`` if it starts a video PES (any PES while no video
        has been seen: audio only); ``None`` otherwise."""
        if not packet[1] & 0x40:  # payload_unit_start_indicator
            return None
        afc = (packet[3] >> 4) & 3
        start = 4 + (1 + packet[4] if afc & 2 else 0)
        if not afc & 1 or start + _PES_HEADER > TS_PACKET:
            return None
        head = packet[start : start + 4]
        if not (head[0] == 0 and head[1] == 0 and head[2] == 1):
            return None  # a table (PAT/PMT), not a PES
        if 0xE0 <= head[3] <= 0xEF:
            self._video_seen = True
            return start
        return None if self._video_seen else start


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
