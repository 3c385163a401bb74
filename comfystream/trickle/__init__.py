"""The trickle protocol: subscriber, publisher, control, events and data channels, a stream's five
as one (StreamChannels), and a relay server.

See docs/DESIGN.md section 6 and go-livepeer's ``trickle/`` (the reference).
"""

from .channels import StreamChannels
from .control import ControlSubscriber
from .data import DataPublisher
from .events import EventsPublisher
from .media_io import FramePublisher, FrameSubscriber
from .pacing import PacedQueue, SegmentPacer
from .protocol import TrickleError
from .publisher import SegmentWriter, TricklePublisher
from .relay import RELAY_KEY, TrickleRelay, add_relay_routes, create_relay_app
from .subscriber import TrickleSegment, TrickleSubscriber

__all__ = [
    "RELAY_KEY",
    "ControlSubscriber",
    "DataPublisher",
    "EventsPublisher",
    "FramePublisher",
    "FrameSubscriber",
    "PacedQueue",
    "SegmentPacer",
    "StreamChannels",
    "SegmentWriter",
    "TrickleError",
    "TricklePublisher",
    "TrickleRelay",
    "TrickleSegment",
    "TrickleSubscriber",
    "add_relay_routes",
    "create_relay_app",
]
