"""Host-side helpers of the Hermes adapter that hold no session state of their own.

* :class:`ContextWindows`: a model's context window without touching the network;
* :class:`StateDb`: read-only lookups in Hermes' ``state.db`` (WAL-aware);
* :class:`BackgroundWorker`: one daemon thread for work that must leave the
  caller's thread (Hermes runs some hooks on its event loop).

The Hermes lookups themselves (its config, its offline window table, where its
``state.db`` is) are passed in by :mod:`token_optimizer.hosts.hermes`, the only
module that imports Hermes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from token_optimizer.bounded import BoundedMap
from token_optimizer.quality import context_window_for_model
from token_optimizer.sqlite_util import ro_uri

log = logging.getLogger("token_optimizer.hosts.hermes")

CONFIG_TTL_S = 5.0
"""How long a ``model.context_length`` read from Hermes' config is reused."""
STATE_DB_TIMEOUT_S = 0.25
"""Busy timeout of the (rare) read-only ``state.db`` lookups."""


def _p(msg: str) -> str:
    return "[token-optimizer] " + msg


def _no_config() -> Mapping[str, Any]:
    return {}


def _no_table() -> Mapping[str, int]:
    return {}


def _no_path() -> Path | None:
    return None


class ContextWindows:
    """Context window for a model, without ever touching the network.

    Order: Hermes ``model.context_length`` (re-read at most every
    :data:`CONFIG_TTL_S`), Hermes' offline ``DEFAULT_CONTEXT_LENGTHS`` (longest
    key contained in the lowercased model id, as Hermes matches it), then
    :func:`token_optimizer.quality.context_window_for_model`.
    """

    def __init__(
        self,
        config: Callable[[], Mapping[str, Any]] = _no_config,
        table: Callable[[], Mapping[str, int]] = _no_table,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._table_fn = table
        self._clock = clock
        self._lock = threading.Lock()
        self._cfg_value: int | None = None
        self._cfg_at = -1e18
        self._sorted: list[tuple[str, int]] | None = None
        self._memo: BoundedMap[str, int] = BoundedMap("hermes_window_memo", cap=256,
                                                      register=False)

    def configured(self) -> int | None:
        now = self._clock()
        with self._lock:
            if now - self._cfg_at < CONFIG_TTL_S:
                return self._cfg_value
        value: int | None = None
        try:
            model = self._config().get("model")
            raw = model.get("context_length") if isinstance(model, Mapping) else None
            if isinstance(raw, str):
                raw = int(raw.strip())
            if isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
                value = int(raw)
        except Exception:
            value = None
        with self._lock:
            self._cfg_value, self._cfg_at = value, now
        return value

    def _table(self) -> list[tuple[str, int]]:
        if self._sorted is None:
            items: list[tuple[str, int]] = []
            try:
                for k, v in self._table_fn().items():
                    if isinstance(k, str) and isinstance(v, int) and v > 0:
                        items.append((k.lower(), v))
            except Exception:
                items = []
            items.sort(key=lambda kv: len(kv[0]), reverse=True)
            self._sorted = items
        return self._sorted

    def for_model(self, model: str | None) -> int:
        cfg = self.configured()
        if cfg:
            return cfg
        name = (model or "").lower()
        cached = self._memo.get(name)
        if cached is not None:
            return cached
        window = 0
        if name:
            for key, length in self._table():
                if key in name:
                    window = length
                    break
        if not window:
            window = context_window_for_model(model)
        self._memo.set(name, window)
        return window


class StateDb:
    """Read-only lookups in Hermes' ``state.db``.

    Opened as ``file:<path>?mode=ro`` for each lookup, never with
    ``immutable=1`` (an immutable reader ignores the WAL and misses every
    write Hermes has not checkpointed yet). ``PRAGMA query_only`` is set and
    the connection is closed straight away. Used once per newly seen session
    id, on agent threads only.
    """

    def __init__(self, path: Callable[[], Path | None] | Path | None = _no_path) -> None:
        self._path = path

    def path(self) -> Path | None:
        p = self._path() if callable(self._path) else self._path
        return Path(p) if p else None

    def lineage(self, session_id: str) -> tuple[str | None, str | None] | None:
        """``(parent_session_id, parent's end_reason)`` or None when unknown."""
        p = self.path()
        if p is None or not p.is_file():
            return None
        con: sqlite3.Connection | None = None
        try:
            uri = ro_uri(p)
            con = sqlite3.connect(uri, uri=True, timeout=STATE_DB_TIMEOUT_S,
                                  check_same_thread=False)
            con.execute("PRAGMA query_only = ON")
            row = con.execute("SELECT parent_session_id FROM sessions WHERE id = ?",
                              (session_id,)).fetchone()
            if row is None:
                return None
            parent = row[0] if isinstance(row[0], str) and row[0] else None
            if parent is None:
                return (None, None)
            prow = con.execute("SELECT end_reason FROM sessions WHERE id = ?",
                               (parent,)).fetchone()
            reason = prow[0] if prow is not None and isinstance(prow[0], str) else None
            return (parent, reason)
        except Exception:
            log.debug(_p("state.db lookup failed"), exc_info=True)
            return None
        finally:
            if con is not None:
                with contextlib.suppress(Exception):
                    con.close()


class BackgroundWorker:
    """One daemon thread draining a FIFO of callables (started lazily)."""

    def __init__(self, name: str = "token-optimizer-hermes") -> None:
        self._name = name
        self._q: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.Queue())
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._q.put((fn, fut))
        return fut

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # a task must never kill the worker
                        log.debug(_p("background task failed"), exc_info=True)
                        fut.set_exception(exc)
            finally:
                self._q.task_done()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every task submitted so far has run; False on timeout."""
        marker = self.submit(lambda: None)
        try:
            marker.result(timeout=timeout)
            return True
        except Exception:
            return False

    def is_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued tasks, then end the thread (a later submit restarts it)."""
        with self._lock:
            t = self._thread
            if t is None or not t.is_alive():
                return
            self._q.put(None)
        t.join(timeout)
