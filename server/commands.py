"""`comfystream serve`: the HTTP server (stream API, and what the other feature modules add)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiohttp import web

from comfystream.comfyui import WorkspaceError, check_workspace
from server.config import ServerConfig, parse_gpus

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the HTTP server", description="Run the comfystream HTTP server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--workspace", type=Path, default=None, help="a ComfyUI workspace: its nodes and models"
    )
    parser.add_argument(
        "--custom-nodes",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of custom node packages (repeatable)",
    )
    parser.add_argument(
        "--max-streams", type=int, default=8, help="concurrent streams; more get 503 (default 8)"
    )
    parser.add_argument(
        "--warm-workers", type=int, default=0, help="idle engine-loaded workers kept ready (default 0)"
    )
    parser.add_argument(
        "--gpus", default=None, help="GPU indices to place workers on, e.g. 0,1 (default: all visible)"
    )
    parser.add_argument("--relay", action="store_true", help="also serve a trickle relay under /trickle/")
    parser.add_argument(
        "--ice-server",
        dest="ice_servers",
        action="append",
        default=[],
        metavar="URL",
        help="a STUN/TURN server for WebRTC (repeatable): stun:host:port, turn:user:pass@host:port, "
        "turn:host:port?username=..&credential=..; none: host candidates only",
    )
    parser.add_argument(
        "--job-workers",
        type=int,
        default=1,
        help="worker processes that run one-shot prompts (POST /prompt, /tasks) in parallel (default 1)",
    )
    parser.add_argument(
        "--input-dir",
        type=Path,
        default=None,
        help="input images folder (default: the workspace's, or ./input)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="output images folder (default: the workspace's, or ./output)",
    )
    # The dispatcher has a global --log-level; this one lets it follow the subcommand too.
    parser.add_argument("--log-level", dest="log_level", default=argparse.SUPPRESS, help="logging level")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from server.webrtc.ice import parse_ice_servers

    parse_ice_servers(args.ice_servers)  # a bad URL is a usage error (IceServerError is a ValueError)
    if args.max_streams < 1:
        raise ValueError("--max-streams must be at least 1")
    if args.warm_workers < 0:
        raise ValueError("--warm-workers cannot be negative")
    if args.job_workers < 0:
        raise ValueError("--job-workers cannot be negative")
    return ServerConfig(
        host=args.host,
        port=args.port,
        workspace=args.workspace,
        custom_nodes=list(args.custom_nodes),
        max_streams=args.max_streams,
        warm_workers=args.warm_workers,
        gpus=parse_gpus(args.gpus),
        relay=args.relay,
        ice_servers=list(args.ice_servers),
        job_workers=args.job_workers,
        job_workers_at_startup=True,
        input_dir=args.input_dir,
        output_dir=args.output_dir,
        log_level=str(getattr(args, "log_level", "INFO")),
    )


def run(args: argparse.Namespace) -> int:
    from server.app import create_app

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"comfystream serve: {exc}")
        return 2
    logging.getLogger().setLevel(getattr(logging, config.log_level.upper(), logging.INFO))
    try:
        if config.workspace is not None:
            check_workspace(config.workspace)  # a bad --workspace fails here, before anything starts
        app = create_app(config)
    except WorkspaceError as exc:
        print(f"comfystream serve: {exc}")
        return 2
    logger.info(
        "serving on http://%s:%d%s",
        config.host,
        config.port,
        " (with a trickle relay at /trickle/)" if config.relay else "",
    )
    # run_app handles SIGINT and SIGTERM: shutdown stops every stream and frees every worker.
    web.run_app(app, host=config.host, port=config.port, print=None, shutdown_timeout=config.stop_timeout_s)
    return 0
