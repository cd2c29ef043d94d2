"""The ``token-optimizer`` command line.

Every subcommand lives in :mod:`token_optimizer.commands`, apart from the stores
whose state it shows: each module there exposes ``register_cli(subparsers)``,
which adds parsers whose ``func`` default takes the parsed namespace and returns
an exit code. This module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in help order.
CLI_MODULES = (
    "token_optimizer.commands.demo",
    "token_optimizer.commands.sessions",
    "token_optimizer.commands.checkpoints",
    "token_optimizer.commands.state",
    "token_optimizer.commands.v5",
    "token_optimizer.commands.openclaw",
    "token_optimizer.commands.audit",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-optimizer",
        description="Keep long agent sessions cheap and coherent; inspect and prune its state.",
    )
    parser.add_argument("--home", help="state root (default: $TOKEN_OPTIMIZER_HOME or ~/.openclaw/token-optimizer)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        mod = importlib.import_module(name)
        mod.register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
