"""Bounded per-session collections.

Every per-session collection in the package goes through one of two helpers
that mirror JavaScript ``Set``/``Map`` insertion order:

* :class:`BoundedSet` -- add-once guards. Adding a key that is already present
  changes nothing and does not refresh its position.
* :class:`BoundedMap` -- values re-set on every turn. Setting an existing key
  moves it to the newest position (JS ``delete`` then ``set``).

Both evict oldest-first while their size exceeds the cap, never evicting the
key that was just written. Reads never reorder.

The cap is the module constant :data:`MAX_TRACKED_SESSIONS`, read at *use*
time, so assigning ``token_optimizer.bounded.MAX_TRACKED_SESSIONS = 10``
retunes every collection on its next write. A collection may also be given a
fixed ``cap`` of its own (used for small caches that are not per-session).

Implementation: an ``OrderedDict`` guarded by a ``threading.Lock``. The
cachetools ``FIFOCache`` has the right semantics for the map (and, with an
``in`` guard, for the set), but measured 3-5x slower at full churn; see
``bench/bench_bounded.py`` for the comparison that made the choice.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

MAX_TRACKED_SESSIONS = 2000
"""Cap shared by every per-session collection (the operator's tuning knob)."""

K = TypeVar("K")
V = TypeVar("V")

_registry_lock = threading.Lock()
_registry: weakref.WeakSet[_Bounded] = weakref.WeakSet()


def current_cap() -> int:
    """The cap in force right now (the module constant, at least 1)."""
    return max(1, int(MAX_TRACKED_SESSIONS))


class _Bounded:
    """Shared machinery: the ordered store, the lock and eviction counting."""

    __slots__ = ("__weakref__", "_cap", "_data", "_lock", "evictions", "name")

    def __init__(self, name: str, cap: int | None = None, register: bool = True) -> None:
        self.name = name
        self._cap = cap
        self._data: OrderedDict[object, object] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0
        if register:
            with _registry_lock:
                _registry.add(self)

    @property
    def cap(self) -> int:
        return max(1, self._cap) if self._cap is not None else current_cap()

    def _trim(self) -> None:
        """The one eviction rule: oldest first while over the cap. The caller holds
        the lock and has just written a key at the newest position.

        The cap is at least 1, so while the size exceeds it the oldest key is never
        the one just written ("never evict the key just written" holds by
        construction). Steady churn (one over the cap) takes a one-out fast path.
        """
        data = self._data
        cap = self._cap
        limit = MAX_TRACKED_SESSIONS if cap is None else cap
        size = len(data)
        if size <= limit:  # under the cap: nothing to do
            return
        if size == limit + 1 and limit >= 1:  # steady churn: one out, one in
            data.popitem(last=False)
            self.evictions += 1
            return
        limit = max(1, int(limit))
        popitem = data.popitem
        n = 0
        while len(data) > limit:
            popitem(last=False)
            n += 1
        self.evictions += n

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def discard(self, key: object) -> bool:
        """Remove ``key`` if present; True when something was removed."""
        with self._lock:
            return self._data.pop(key, _MISSING) is not _MISSING

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, int | str]:
        return {"name": self.name, "size": len(self._data), "cap": self.cap,
                "evictions": self.evictions}


_MISSING = object()


class BoundedSet(_Bounded, Generic[K]):
    """Add-once set with oldest-first eviction (JS ``Set`` order)."""

    __slots__ = ()

    def add(self, key: K) -> bool:
        """Add ``key`` once. Returns True when it was newly added.

        A key already present keeps its position (no recency refresh).
        """
        with self._lock:
            data = self._data
            if key in data:
                return False
            data[key] = None
            self._trim()
            return True

    def keys(self) -> list[K]:
        """Snapshot of the members, oldest first."""
        with self._lock:
            return list(self._data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())


class BoundedMap(_Bounded, Generic[K, V]):
    """Map whose ``set`` moves the key to newest (JS ``delete`` + ``set``)."""

    __slots__ = ()

    def set(self, key: K, value: V) -> None:
        with self._lock:
            data = self._data
            if key in data:
                data.move_to_end(key)
            data[key] = value
            self._trim()

    def get(self, key: K, default: V | None = None) -> V | None:
        """Read without reordering."""
        return self._data.get(key, default)  # type: ignore[return-value]

    def __getitem__(self, key: K) -> V:
        return self._data[key]  # type: ignore[return-value]

    def pop(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            return self._data.pop(key, default)  # type: ignore[return-value]

    def get_or_create(self, key: K, factory: Callable[[], V]) -> V:
        """Return the value for ``key``; create and insert it when absent.

        The check and the insert happen under one lock, so two threads asking
        for the same new key get the same object. An existing key is not
        reordered (it is a read).
        """
        with self._lock:
            data = self._data
            if key in data:
                return data[key]  # type: ignore[return-value]
            value = factory()
            data[key] = value
            self._trim()
            return value

    def update_with(self, key: K, fn: Callable[[V | None], V]) -> V:
        """Atomically compute a new value from the old one and set it (refresh)."""
        with self._lock:
            data = self._data
            old = data.pop(key, None)
            new = fn(old)  # type: ignore[arg-type]
            data[key] = new
            self._trim()
            return new

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._data)  # type: ignore[arg-type]

    def items(self) -> list[tuple[K, V]]:
        with self._lock:
            return list(self._data.items())  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())


def registry_stats() -> list[dict[str, int | str]]:
    """Size, cap and eviction count of every registered collection."""
    with _registry_lock:
        colls = list(_registry)
    return [c.stats() for c in colls]


def total_evictions() -> int:
    with _registry_lock:
        return sum(c.evictions for c in _registry)


class StripedLocks:
    """A fixed set of re-entrant locks picked by key hash.

    Gives per-session mutual exclusion without a per-session lock map (which
    would be one more collection growing with sessions): two keys may share a
    stripe, which only costs a little parallelism.
    """

    __slots__ = ("_locks",)

    def __init__(self, stripes: int = 64) -> None:
        self._locks = tuple(threading.RLock() for _ in range(max(1, stripes)))

    def for_key(self, key: object) -> threading.RLock:
        return self._locks[hash(key) % len(self._locks)]
