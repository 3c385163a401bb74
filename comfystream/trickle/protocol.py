"""Names and numbers of the trickle protocol (go-livepeer's trickle server is the reference)."""

from __future__ import annotations

HEADER_SEQ = "Lp-Trickle-Seq"  # the seq a response (or a finished POST) is about
HEADER_LATEST = "Lp-Trickle-Latest"  # the next seq the publisher will write
HEADER_CLOSED = "Lp-Trickle-Closed"  # the channel has ended ("terminated")
HEADER_RESET = "Lp-Trickle-Reset"  # a publisher that restarted: close the segments before its seq

STATUS_SEGMENT_GONE = 470  # the channel exists, the segment does not (any more, or not yet)

SEQ_NEXT = -1  # the next segment to be written (the live edge)
SEQ_CURRENT = -2  # the segment being written now

WINDOW = 5  # segments a relay keeps per channel

KEEPALIVE_MESSAGE = {"keep": "alive"}  # sent on control channels; carries nothing


class TrickleError(Exception):
    """A trickle channel could not be read or written (after the retries)."""
