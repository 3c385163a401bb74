"""The `comfystream` command: each subcommand lives with the layer it drives."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that each offer `register(subparsers)`; the parser's `func(args) -> int` runs the command.
COMMAND_MODULES = (
    "comfystream.comfyui.workflow_commands",  # validate, execute
    "comfystream.trickle.commands",  # relay
    "server.commands",  # serve
    "comfystream.comfyui.commands",  # setup-workspace, workspace-info, make-test-checkpoint
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfystream", description="Run ComfyUI workflows on live video.")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
