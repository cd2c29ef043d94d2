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

from token_optimizer.commands.stateroot import HOME_HELP

# Modules that contribute subcommands, in help order.
CLI_MODULES = (
    "token_optimizer.commands.demo",
    "token_optimizer.commands.sessions",
    "token_optimizer.commands.checkpoints",
    "token_optimizer.commands.config",
    "token_optimizer.commands.state",
    "token_optimizer.commands.v5",
    "token_optimizer.commands.openclaw",
    "token_optimizer.commands.audit",
    "token_optimizer.commands.insight",
    "token_optimizer.commands.dashboard",
)

# A command whose module is known is dispatched without importing the others: the audit
# commands are run often (``scan --json`` from scripts) and the session/plugin modules
# pull in a good deal at import time. ``tests/test_audit_commands.py`` checks this table
# against what the modules register; a command missing here only costs the full import.
COMMAND_MODULES = {
    "detect": "token_optimizer.commands.audit",
    "scan": "token_optimizer.commands.audit",
    "report": "token_optimizer.commands.audit",
    "audit": "token_optimizer.commands.audit",
    "budget": "token_optimizer.commands.audit",
}



def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """``--home`` and ``-v`` on a subcommand's parser too (``demo --home DIR``).

    Their default is ``SUPPRESS``: a subcommand sets them only when they are given after
    it, and then its value wins over one given before the subcommand.
    """
    known = {opt for a in parser._actions for opt in a.option_strings}
    if "--home" not in known:
        parser.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
    if "--verbose" not in known and "-v" not in known:
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="log to stderr at debug level")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_global_options(child)



def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after the global options), if any."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--home":
            i += 2
            continue
        if a.startswith("--home=") or a in ("-v", "--verbose"):
            i += 1
            continue
        return None if a.startswith("-") else a
    return None


def build_parser(modules: Sequence[str] = CLI_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-optimizer",
        description="Keep long agent sessions cheap and coherent; inspect and prune its state.",
    )
    parser.add_argument("--home", help=HOME_HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        mod = importlib.import_module(name)
        mod.register_cli(sub)
    for child in dict.fromkeys(sub.choices.values()):
        _add_global_options(child)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = COMMAND_MODULES.get(_command_of(argv) or "")
    parser = build_parser((only,) if only else CLI_MODULES)
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
