"""``comfystream relay``: a trickle relay server on its own."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from .relay import TrickleRelay, add_relay_routes

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relay",
        help="run a trickle relay server",
        description="A trickle relay (the reference server's semantics): channels at http://HOST:PORT{PREFIX}/{name}.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3389)
    parser.add_argument("--prefix", default="", help="path prefix of the channels (default: the root)")
    parser.add_argument(
        "--idle-timeout", type=float, default=300.0, help="seconds before an idle channel is closed"
    )
    parser.add_argument(
        "--max-segment-mb", type=float, default=64.0, help="a larger segment is refused with 413 (default 64)"
    )
    parser.add_argument(
        "--max-channel-mb",
        type=float,
        default=256.0,
        help="what one channel's segments may hold; past it the oldest go early (default 256)",
    )
    parser.set_defaults(func=run_relay)


def run_relay(args: argparse.Namespace) -> int:
    app = web.Application()
    relay = TrickleRelay(
        idle_timeout=args.idle_timeout,
        max_segment_bytes=int(args.max_segment_mb * 1024 * 1024),
        max_channel_bytes=int(args.max_channel_mb * 1024 * 1024),
    )
    add_relay_routes(app, args.prefix, relay)
    print(f"trickle relay on http://{args.host}:{args.port}{args.prefix.rstrip('/')}/{{channel}}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0
