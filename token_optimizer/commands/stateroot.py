"""The one rule every command uses to pick its state root.

In order, the first that applies wins:

1. ``--home DIR``;
2. ``TOKEN_OPTIMIZER_HOME``;
3. the host in use is Hermes -- named with ``--host hermes``, or, without
   ``--host``, the first host whose config file exists (OpenClaw first, see
   :func:`token_optimizer.commands.hostconfig.detect`) -- then
   ``<HERMES_HOME>/token-optimizer`` (:func:`token_optimizer.hosts.hermes_home.state_root`);
4. ``$OPENCLAW_STATE_DIR/token-optimizer`` (default ``~/.openclaw/token-optimizer``).

So on a Hermes-only machine every command (``sessions``, ``prune``,
``checkpoints``, ``restore``, ``savings``, ``dashboard``, ``config``,
``doctor`` ...) reads the state the Hermes plugin writes.
"""

from __future__ import annotations

import argparse

from token_optimizer import settings
from token_optimizer.fsutil import StatePaths, resolve_paths

HOME_HELP = ("state root (default: $TOKEN_OPTIMIZER_HOME, else <HERMES_HOME>/token-optimizer when "
             "Hermes is the host in use, else $OPENCLAW_STATE_DIR/token-optimizer, "
             "i.e. ~/.openclaw/token-optimizer)")

SOURCE_FLAG = "--home"
SOURCE_ENV = "TOKEN_OPTIMIZER_HOME"
SOURCE_HERMES = "hermes"
SOURCE_OPENCLAW = "openclaw"


def host_in_use(named: str | None = None) -> str | None:
    """``named``, else the first host whose config file exists, else None."""
    if named:
        return named
    from token_optimizer.commands import hostconfig

    found = hostconfig.detect()
    return found[0].host if found else None


def resolve(home: str | None, host: str | None = None, *,
            detect: bool = True) -> tuple[StatePaths, str]:
    """The state paths and which rule chose them (``--home``, ``TOKEN_OPTIMIZER_HOME``,
    ``hermes`` or ``openclaw``). ``host`` is the host in use when the caller knows it;
    with ``detect`` and no ``host`` the installed hosts decide (see the module docstring)."""
    if home is not None:
        return resolve_paths(home), SOURCE_FLAG
    if settings.env_raw(settings.HOME):
        return resolve_paths(None), SOURCE_ENV
    if host is None and detect:
        host = host_in_use()
    if host == "hermes":
        from token_optimizer.hosts import hermes_home

        root = hermes_home.state_root()
        if root is not None:
            return resolve_paths(root), SOURCE_HERMES
    return resolve_paths(None), SOURCE_OPENCLAW


def state_paths(args: argparse.Namespace, host: str | None = None) -> StatePaths:
    """The state paths for a parsed command line (``--home``, then ``--host`` if the
    command has one, then the rule in the module docstring)."""
    return describe(args, host)[0]


def describe(args: argparse.Namespace, host: str | None = None) -> tuple[StatePaths, str]:
    """:func:`state_paths` plus the rule that chose the root."""
    named = host if host is not None else getattr(args, "host", None)
    return resolve(getattr(args, "home", None), named)


_LABELS = {
    SOURCE_FLAG: "from --home",
    SOURCE_ENV: "from TOKEN_OPTIMIZER_HOME",
    SOURCE_HERMES: "Hermes: <HERMES_HOME>/token-optimizer",
    SOURCE_OPENCLAW: "OpenClaw: $OPENCLAW_STATE_DIR/token-optimizer",
}


def label(source: str) -> str:
    """A short human phrase for the rule that chose the root (for text output)."""
    return _LABELS.get(source, source)
