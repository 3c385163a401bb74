"""`comfystream serve`: the HTTP server (stream API, and what the other feature modules add)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
from pathlib import Path

from aiohttp import web

from comfystream.comfyui import WorkspaceError, check_workspace
from comfystream.comfyui.commands import add_model_paths_argument
from comfystream.pipeline.scheduling import DEFAULT_MAX_LATENCY_MS
from server.config import ServerConfig, parse_gpus
from server.http.listen import (
    MAX_DEFAULT_JOB_WORKERS,
    QuietAccessLogger,
    default_job_workers,
    describe_bind_error,
    listening_sockets,
)

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
    add_model_paths_argument(parser)
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
        "--warm-workers",
        type=int,
        default=1,
        help="idle engine-loaded workers kept ready, refilled after each take, so that a stream's "
        "first frames are processed ones (default 1; 0: each stream spawns its worker)",
    )
    parser.add_argument(
        "--max-latency-ms",
        type=float,
        default=DEFAULT_MAX_LATENCY_MS,
        help="default latency budget of a stream: a frame that could not come out within it is "
        f"skipped (default {DEFAULT_MAX_LATENCY_MS:.0f}; a stream's params.max_latency_ms overrides it)",
    )
    parser.add_argument(
        "--gpus",
        default=None,
        help="GPU indices to place workers on, e.g. 0,1 (default: all nvidia-smi lists; none: CPU)",
    )
    parser.add_argument(
        "--interrupt-grace-s",
        type=float,
        default=2.0,
        metavar="S",
        help="a job still running S seconds after /interrupt has its worker killed and replaced (default 2)",
    )
    parser.add_argument(
        "--frame-timeout-s",
        type=float,
        default=10.0,
        metavar="S",
        help="a stream's worker holding one frame longer than S seconds is replaced (default 10)",
    )
    parser.add_argument(
        "--worker-max-rss-mb",
        type=float,
        default=None,
        metavar="MB",
        help="a stream's worker whose resident memory passes MB is replaced between two frames "
        "(default: no limit)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads in each worker (default: cores / --max-streams, at least 1)",
    )
    parser.add_argument(
        "--no-shared-weights",
        dest="shared_weights",
        action="store_false",
        help="each worker keeps its own copy of the models it loads (default: workers that load the "
        "same weights map one copy, in /dev/shm)",
    )
    parser.add_argument(
        "--shared-weights-gpu",
        action="store_true",
        help="workers on a GPU map one copy of the weights per GPU, kept by a holder process (CUDA "
        "IPC; experimental: not yet measured on a GPU)",
    )
    parser.add_argument(
        "--preload-prompt",
        dest="preload_prompts",
        action="append",
        default=[],
        metavar="FILE",
        help="an API-format workflow (or a list of them) every warm worker loads and warms up before "
        "a stream takes it, so that a stream with the same models processes from its first frame "
        "(repeatable)",
    )
    parser.add_argument(
        "--preload-size",
        default="512x512",
        metavar="WxH",
        help="the frame size preloaded workers warm up at (default 512x512)",
    )
    parser.add_argument(
        "--streams-per-gpu",
        type=int,
        default=None,
        metavar="N",
        help="at most N workers (streams) per GPU (default: as many as its free memory holds)",
    )
    parser.add_argument(
        "--gpu-min-free-mib",
        type=int,
        default=1024,
        metavar="MIB",
        help="free GPU memory a new worker needs; a GPU with less takes none (default 1024)",
    )
    parser.add_argument("--relay", action="store_true", help="also serve a trickle relay under /trickle/")
    parser.add_argument(
        "--relay-max-segment-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="with --relay: a segment larger than this is refused with 413 (default 64)",
    )
    parser.add_argument(
        "--relay-max-channel-mb",
        type=float,
        default=256.0,
        metavar="MB",
        help="with --relay: what one channel's segments may hold; past it the oldest go early (default 256)",
    )
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
        default=default_job_workers(),
        help="worker processes that run one-shot prompts (POST /prompt, /tasks) in parallel "
        f"(default: the cores this process may use, at most {MAX_DEFAULT_JOB_WORKERS}; here "
        f"{default_job_workers()})",
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
    _add_livepeer_flags(parser)
    parser.add_argument(
        "--user-dir",
        type=Path,
        default=None,
        help="the editor's settings and saved workflows (default: the workspace's user/, or ./user)",
    )
    parser.add_argument(
        "--allow-origin",
        dest="allowed_origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser origin (scheme://host[:port], or *) allowed to change state besides the "
        "server's own, e.g. a UI served elsewhere (repeatable; default: same origin only)",
    )
    parser.add_argument(
        "--allow-stream-host",
        dest="allowed_stream_hosts",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a host that stream URLs (subscribe, publish, control, events) may name (repeatable; "
        "default: any). With --relay the server's own relay is always allowed",
    )
    # The dispatcher has a global --log-level; this one lets it follow the subcommand too.
    parser.add_argument("--log-level", dest="log_level", default=argparse.SUPPRESS, help="logging level")
    parser.set_defaults(func=run)


def _add_livepeer_flags(parser: argparse.ArgumentParser) -> None:
    """Auth and orchestrator registration (README "Running as a Livepeer worker"). The environment
    variables are pytrickle's and ai-runner's names; a flag wins over its variable."""
    group = parser.add_argument_group("Livepeer worker (auth and orchestrator registration)")
    group.add_argument(
        "--auth-token",
        default=None,
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on the API (env AUTH_TOKEN); /health stays open. "
        "Off by default on 127.0.0.1; on any other address a token is generated unless --no-auth",
    )
    group.add_argument("--no-auth", action="store_true", help="serve the API without a token on any address")
    group.add_argument("--orch-url", default=None, help="register with this orchestrator (env ORCH_URL)")
    group.add_argument("--orch-secret", default=None, help="the orchestrator's secret (env ORCH_SECRET)")
    group.add_argument("--capability-name", default=None, help="env CAPABILITY_NAME (default comfystream)")
    group.add_argument(
        "--capability-url",
        default=None,
        help="where the orchestrator reaches this server (env CAPABILITY_URL; default http://localhost:PORT)",
    )
    group.add_argument(
        "--capability-capacity",
        type=int,
        default=None,
        help="streams the orchestrator may send here (env CAPABILITY_CAPACITY; default --max-streams)",
    )
    group.add_argument(
        "--capability-price-per-unit",
        type=int,
        default=None,
        help="env CAPABILITY_PRICE_PER_UNIT (default 0)",
    )
    group.add_argument(
        "--capability-price-scaling", type=int, default=None, help="env CAPABILITY_PRICE_SCALING (default 1)"
    )
    group.add_argument(
        "--capability-currency",
        default=None,
        help="the price's currency: wei, eth or a price-feed currency (env CAPABILITY_PRICE_CURRENCY; default wei)",
    )


def livepeer_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> dict:
    """ServerConfig's auth and registration fields from the flags and the environment."""
    from server.http.auth import resolve_token
    from server.livepeer.registration import settings_from

    env = dict(os.environ) if env is None else env
    token, generated = resolve_token(
        args.host, getattr(args, "auth_token", None) or env.get("AUTH_TOKEN"), getattr(args, "no_auth", False)
    )
    if generated:
        logger.warning(
            "listening on %s without --auth-token: the API requires a generated token (given to the "
            "orchestrator when registering); pass --auth-token / AUTH_TOKEN to call it yourself, or "
            "--no-auth to serve it open",
            args.host,
        )
    registration = settings_from(
        orch_url=getattr(args, "orch_url", None),
        orch_secret=getattr(args, "orch_secret", None),
        name=getattr(args, "capability_name", None),
        url=getattr(args, "capability_url", None),
        capacity=getattr(args, "capability_capacity", None),
        price_per_unit=getattr(args, "capability_price_per_unit", None),
        price_scaling=getattr(args, "capability_price_scaling", None),
        currency=getattr(args, "capability_currency", None),
        token=token,
        port=args.port,
        env=env,
    )
    name = (registration.name if registration else None) or env.get("CAPABILITY_NAME") or "comfystream"
    return {"auth_token": token, "registration": registration, "pipeline_name": name}


def read_preload_prompts(paths: list[str]) -> list[dict]:
    """Every prompt of every `--preload-prompt` file (one API-format prompt, or a list of them)."""
    from comfystream.json_limits import loads
    from comfystream.prompts import PromptFormatError, normalize_prompts

    prompts: list[dict] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                prompts.extend(normalize_prompts(loads(f.read())))
        except OSError as exc:
            raise ValueError(f"--preload-prompt {path}: {exc.strerror}") from exc
        except (ValueError, PromptFormatError) as exc:
            raise ValueError(f"--preload-prompt {path}: {exc}") from exc
    return prompts


def parse_size(value: str, flag: str) -> tuple[int, int]:
    """`512x288` -> (512, 288)."""
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"{flag}: expected WIDTHxHEIGHT, e.g. 512x512, got {value!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"{flag}: a size must be positive, got {value!r}")
    return width, height


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from server.webrtc.ice import parse_ice_servers

    parse_ice_servers(args.ice_servers)  # a bad URL is a usage error (IceServerError is a ValueError)
    if args.max_streams < 1:
        raise ValueError("--max-streams must be at least 1")
    if args.warm_workers < 0:
        raise ValueError("--warm-workers cannot be negative")
    if args.job_workers < 0:
        raise ValueError("--job-workers cannot be negative")
    if args.streams_per_gpu is not None and args.streams_per_gpu < 1:
        raise ValueError("--streams-per-gpu must be at least 1")
    if args.gpu_min_free_mib < 0:
        raise ValueError("--gpu-min-free-mib cannot be negative")
    if args.max_latency_ms <= 0:
        raise ValueError("--max-latency-ms must be positive")
    if args.interrupt_grace_s <= 0 or args.frame_timeout_s <= 0:
        raise ValueError("--interrupt-grace-s and --frame-timeout-s must be positive")
    if args.worker_max_rss_mb is not None and args.worker_max_rss_mb <= 0:
        raise ValueError("--worker-max-rss-mb must be positive")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise ValueError("--torch-threads must be at least 1")
    from server.http.origin_check import OriginPolicy

    OriginPolicy(args.allowed_origins)  # a bad origin is a usage error
    return ServerConfig(
        allowed_origins=list(args.allowed_origins),
        allowed_stream_hosts=list(args.allowed_stream_hosts),
        host=args.host,
        port=args.port,
        workspace=args.workspace,
        custom_nodes=list(args.custom_nodes),
        extra_model_paths=[Path(p) for p in args.extra_model_paths],
        max_streams=args.max_streams,
        warm_workers=args.warm_workers,
        max_latency_ms=args.max_latency_ms,
        gpus=parse_gpus(args.gpus),
        streams_per_gpu=args.streams_per_gpu,
        gpu_min_free_mib=args.gpu_min_free_mib,
        interrupt_grace_s=args.interrupt_grace_s,
        frame_timeout_s=args.frame_timeout_s,
        torch_threads=args.torch_threads,
        worker_max_rss_mb=args.worker_max_rss_mb,
        shared_weights=args.shared_weights,
        shared_weights_gpu=args.shared_weights_gpu,
        preload_prompts=read_preload_prompts(args.preload_prompts),
        preload_size=parse_size(args.preload_size, "--preload-size"),
        relay=args.relay,
        relay_max_segment_bytes=int(args.relay_max_segment_mb * 1024 * 1024),
        relay_max_channel_bytes=int(args.relay_max_channel_mb * 1024 * 1024),
        ice_servers=list(args.ice_servers),
        job_workers=args.job_workers,
        job_workers_at_startup=True,
        input_dir=args.input_dir,
        output_dir=args.output_dir,
        user_dir=args.user_dir,
        log_level=str(getattr(args, "log_level", "INFO")),
        **livepeer_settings(args),
    )


def run(args: argparse.Namespace) -> int:
    from server.app import create_app
    from server.runtime.native_heap import cap_malloc_arenas
    from server.runtime.shutdown import setup_signal_handling
    from server.runtime.thread_pool import default_executor
    from server.streams.manager import STREAM_MANAGER_KEY

    cap_malloc_arenas()  # before any thread allocates: a long-running server must not grow

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"comfystream serve: {exc}")
        return 2
    level = getattr(logging, config.log_level.upper(), logging.INFO)
    logging.getLogger().setLevel(level)
    if level > logging.DEBUG:
        # aioice says INFO for every candidate pair of every WebRTC connection; its warnings stay.
        logging.getLogger("aioice").setLevel(max(level, logging.WARNING))
    try:
        if config.workspace is not None:
            check_workspace(config.workspace)  # a bad --workspace fails here, before anything starts
    except WorkspaceError as exc:
        print(f"comfystream serve: {exc}")
        return 2
    try:
        # Bound before anything spawns: a port in use is one line and exit 2, not two workers
        # started and stopped and a traceback from run_app.
        socks = listening_sockets(config.host, config.port)
    except OSError as exc:
        print(f"comfystream serve: {describe_bind_error(config.host, config.port, exc)}")
        return 2
    try:
        app = create_app(config)
    except WorkspaceError as exc:
        for sock in socks:
            sock.close()
        print(f"comfystream serve: {exc}")
        return 2
    app.cleanup_ctx.insert(0, default_executor)  # first up, last down
    logger.info(
        "serving on http://%s:%d%s",
        config.host,
        config.port,
        " (with a trickle relay at /trickle/)" if config.relay else "",
    )
    # SIGINT and SIGTERM stop every stream (and free its worker) while the server still serves its
    # relay, then run_app's shutdown closes the rest (server.runtime.shutdown).
    setup_signal_handling(app, lambda: app[STREAM_MANAGER_KEY].stop_all("server shutting down"))
    web.run_app(
        app,
        sock=socks,
        print=None,
        access_log_class=QuietAccessLogger,
        shutdown_timeout=config.stop_timeout_s,
        handle_signals=False,
    )
    # Everything is closed. The interpreter's last collections would walk every object torch and
    # the engine made (1-2 s here); frozen objects are left to the process exit instead.
    gc.freeze()
    return 0
