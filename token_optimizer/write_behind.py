"""Write-behind: a store's small writes, handed off by a hook and made just after it.

A new session's first turn records two things on disk: the session index entry
(a SQLite transaction) and the continuity hint's sidecar (a new file and a
rename). Each is small, but each waits on the file system's journal, and on a
busy disk that wait is longer than everything else the turn does. Neither
decides what the turn returns, so the hook queues them here and one daemon
thread per store makes them in the next quiet moment.

Rules:

* **Read your writes.** The store applies queued items under its own lock, and
  every read of the store first calls :meth:`WriteBehind.drain`, which applies
  what is still queued in the caller's thread. Inside the process nothing ever
  sees the store without an item that was submitted before the read.
* **Order.** Items are applied once each, in the order they were submitted.
* **Out of the way.** The worker writes in a quiet moment: when no hook has run in the
  process for :data:`QUIET_S` (the runtime marks its hooks with :func:`hook_running`), or
  at the latest :data:`MAX_DELAY_S` after it was woken.
* **Bounded.** At most ``max_pending`` items wait; the submit that would go past
  it applies the queue itself (the hook then pays for the write, as it would
  without this module).
* **Shutdown.** :meth:`close` applies what is queued and ends the thread; an
  ``atexit`` handler does the same for every instance still open (SIGTERM
  reaches it too: the OpenClaw worker turns it into ``SystemExit``). What a
  ``kill -9`` takes away is what was queued in the second before it:
  bookkeeping the hook's reply did not depend on, never a checkpoint decision
  (the policy store writes those through before the capture is reported).
* A failing ``apply`` is logged and its items dropped; it never kills the thread
  and never raises into the submitting hook.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger("token_optimizer")

T = TypeVar("T")

DEFAULT_MAX_PENDING = 256
IDLE_EXIT_S = 5.0
"""A worker with nothing to do for this long ends (no thread is left per idle store)."""
QUIET_S = 0.02
"""The worker writes once no hook has run in the process for this long, so its writes go
together in the gaps between hooks instead of competing with a hook for the interpreter."""
MAX_DELAY_S = 1.0
"""... or once its oldest item has waited this long, however busy the hooks are."""

_activity = threading.Lock()
_active_hooks = 0
_last_hook_end = 0.0  # time.monotonic()


@contextlib.contextmanager
def hook_running() -> Iterator[None]:
    """Mark a host hook as running in this process (the workers wait for a quiet moment)."""
    global _active_hooks, _last_hook_end
    with _activity:
        _active_hooks += 1
    try:
        yield
    finally:
        with _activity:
            _active_hooks -= 1
            _last_hook_end = time.monotonic()


def _quiet_for(now: float) -> float:
    """Seconds since the last hook ended; 0 while one runs."""
    with _activity:
        return 0.0 if _active_hooks else now - _last_hook_end

_open: weakref.WeakSet[WriteBehind[object]] = weakref.WeakSet()


class WriteBehind(Generic[T]):
    """Items applied by ``apply(items)`` under ``lock``, on a daemon thread or in :meth:`drain`."""

    def __init__(self, name: str, apply: Callable[[list[T]], None], lock: threading.RLock,
                 *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.name = name
        self._apply = apply
        self._lock = lock
        self.max_pending = max(1, int(max_pending))
        self._items: list[T] = []
        self._qlock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._applying = False
        self.applied = 0
        """Items handed to ``apply`` so far (tests, benchmarks)."""
        _open.add(self)  # type: ignore[arg-type]

    def submit(self, item: T) -> None:
        """Queue ``item``; returns without touching the disk (unless the queue is full)."""
        with self._qlock:
            self._items.append(item)
            full = len(self._items) > self.max_pending
            if not full and not self._closed:
                self._ensure_thread()
        if full or self._closed:
            self.drain()
        else:
            self._wake.set()

    def pending(self) -> int:
        with self._qlock:
            return len(self._items)

    def drain(self) -> None:
        """Apply every item submitted so far, in this thread if the worker has not yet.

        Re-entrant: called from inside ``apply`` (the store reading itself while it
        writes) it does nothing, so items are never applied out of order.
        """
        with self._lock:
            if self._applying:
                return
            with self._qlock:
                items, self._items = self._items, []
            if not items:
                return
            self._applying = True
            try:
                self._apply(items)
            except Exception:
                log.warning("[token-optimizer] %s: %d queued write(s) failed", self.name,
                            len(items), exc_info=True)
            finally:
                self._applying = False
                self.applied += len(items)

    def _ensure_thread(self) -> None:
        # called with _qlock held
        t = self._thread
        if t is not None and t.is_alive():
            return
        t = threading.Thread(target=self._run, name=f"token-optimizer-{self.name}", daemon=True)
        self._thread = t
        t.start()

    def _run(self) -> None:
        while True:
            if not self._wake.wait(IDLE_EXIT_S):
                with self._qlock:
                    if not self._items:  # idle: end; the next submit starts a new thread
                        self._thread = None
                        return
            self._wake.clear()
            self._wait_for_quiet()
            self.drain()
            if self._closed:
                return

    def _wait_for_quiet(self) -> None:
        start = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            quiet = _quiet_for(now)
            if quiet >= QUIET_S or now - start >= MAX_DELAY_S:
                return
            time.sleep(max(QUIET_S - quiet, 0.002))

    def close(self, timeout: float = 10.0) -> None:
        """Apply what is queued and end the thread (a later submit applies at once)."""
        with self._qlock:
            self._closed = True
            t = self._thread
        self._wake.set()
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self.drain()


@atexit.register
def _drain_all() -> None:
    for wb in list(_open):
        try:
            wb.close(timeout=2.0)
        except Exception:
            log.debug("write-behind close at exit failed", exc_info=True)
