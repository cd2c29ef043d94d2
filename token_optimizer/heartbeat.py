"""``heartbeat-<host>.json``: when a host last ran one of our hooks.

The runtime rewrites ``<state root>/heartbeat-<host>.json`` (``{"pid", "host", "lastHookAt",
"lastHookAtMs", "version"}``) on the first hook of the process and then at most once a
minute (a monotonic-clock check per hook; no fsync: losing one beat to a crash is harmless).
``token-optimizer doctor`` reads it to say whether hooks were seen recently and by which
package version. One file per host, so two hosts sharing a state root
(``TOKEN_OPTIMIZER_HOME``) do not overwrite each other's beat. A write failure (read-only
root, full disk) is logged once at debug level and retried at the next interval; it never
reaches the hook.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from token_optimizer import __version__
from token_optimizer.fsutil import StatePaths, open_checked_dir
from token_optimizer.jsutil import dumps_compact, iso_now, loads, now_ms

log = logging.getLogger("token_optimizer")

INTERVAL_S = 60.0
HOSTS = ("openclaw", "hermes")
_MAX_BYTES = 4096


def filename(host: str) -> str:
    return f"heartbeat-{re.sub(r'[^a-z0-9_-]', '_', host.lower())}.json"


class Heartbeat:
    """Throttled writer; :meth:`beat` is safe to call on every hook."""

    def __init__(self, paths: StatePaths, host: str | None, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 interval_s: float = INTERVAL_S) -> None:
        self.paths = paths
        self.host = host
        self._monotonic = monotonic
        self.interval_s = interval_s
        self._next = 0.0  # monotonic time of the next allowed write (0: write now)
        self._lock = threading.Lock()
        self.failures = 0

    def beat(self) -> bool:
        """Rewrite the file when the interval has passed; True when written. Never raises."""
        if self.host is None:
            return False
        try:
            now = self._monotonic()
            with self._lock:
                if now < self._next:
                    return False
                self._next = now + self.interval_s
            doc = {"pid": os.getpid(), "host": self.host, "lastHookAt": iso_now(),
                   "lastHookAtMs": now_ms(), "version": __version__}
            with open_checked_dir(self.paths.root, self.paths.root, create=True) as d:
                d.atomic_write(filename(self.host), dumps_compact(doc), durable=False)
            return True
        except Exception:
            self.failures += 1
            if self.failures == 1:
                log.debug("[token-optimizer] heartbeat not written", exc_info=True)
            return False


def read(paths: StatePaths, host: str) -> dict[str, Any] | None:
    """The host's last heartbeat, or ``None`` (missing, unreadable or not an object)."""
    try:
        with open_checked_dir(paths.root, paths.root) as d:
            data = loads(d.read_bytes(filename(host), max_bytes=_MAX_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
