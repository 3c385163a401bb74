"""The trickle protocol: subscriber, publisher, control and events channels, and a relay server.

See docs/DESIGN.md section 6 and go-livepeer's ``trickle/`` (the reference).
"""

from .control import ControlSubscriber
from .data import DataPublisher
from .events import EventsPublisher
from .media_io import FramePublisher, FrameSubscriber
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
    "SegmentWriter",
    "TrickleError",
    "TricklePublisher",
    "TrickleRelay",
    "TrickleSegment",
    "TrickleSubscriber",
    "add_relay_routes",
    "create_relay_app",
]
