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
    parser.set_defaults(func=run_relay)


def run_relay(args: argparse.Namespace) -> int:
    app = web.Application()
    add_relay_routes(app, args.prefix, TrickleRelay(idle_timeout=args.idle_timeout))
    print(f"trickle relay on http://{args.host}:{args.port}{args.prefix.rstrip('/')}/{{channel}}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0
