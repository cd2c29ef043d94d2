"""Acceptance tests for the bounded per-session collections (session-bounds.md §2)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from cachetools import FIFOCache, LRUCache
from hypothesis import given, settings
from hypothesis import strategies as st

from token_optimizer import bounded
from token_optimizer.bounded import BoundedMap, BoundedSet, registry_stats, total_evictions

CAP = 2000


def sid(i: int) -> str:
    return f"session-{i}"


# ---------------------------------------------------------------- eviction waves


class BoundedContract:
    """What both bounded collections promise; run over each class (like cachetools'
    ``CacheTestMixin`` is run over every cache)."""

    def make(self, name: str, cap: int | None = None) -> Any:
        raise NotImplementedError

    def put(self, c: Any, key: str, value: int) -> None:
        raise NotImplementedError

    def test_wave_of_2500_keeps_newest_2000(self) -> None:
        c = self.make("wave")
        for i in range(2500):
            self.put(c, sid(i), i)
        assert len(c) == CAP
        assert all(sid(i) not in c for i in range(500))
        assert all(sid(i) in c for i in range(500, 2500))
        assert c.keys() == [sid(i) for i in range(500, 2500)]
        assert c.evictions == 500

    def test_cap_is_read_at_use_time(self, small_cap: int) -> None:
        c = self.make("retuned")
        for i in range(25):
            self.put(c, sid(i), i)
        assert len(c) == small_cap and c.keys()[0] == sid(25 - small_cap)

    def test_explicit_cap_and_never_the_key_just_written(self) -> None:
        c = self.make("one", cap=1)
        for i in range(5):
            self.put(c, sid(i), i)
            assert c.keys() == [sid(i)]
        assert c.evictions == 4

    def test_discard_and_clear(self) -> None:
        c = self.make("discard")
        self.put(c, "a", 1)
        self.put(c, "b", 2)
        assert c.discard("a") is True and c.discard("a") is False
        assert c.keys() == ["b"]
        c.clear()
        assert len(c) == 0

    def test_threads_stay_within_the_cap(self) -> None:
        c = self.make("threads")

        def work(t: int) -> None:
            for i in range(1500):
                self.put(c, f"{t}-{i}", i)

        ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(c) == CAP and c.evictions == 4 * 1500 - CAP


class TestBoundedSet(BoundedContract):
    def make(self, name: str, cap: int | None = None) -> BoundedSet[str]:
        return BoundedSet(name, cap=cap, register=False)

    def put(self, c: Any, key: str, value: int) -> None:
        c.add(key)


class TestBoundedMap(BoundedContract):
    def make(self, name: str, cap: int | None = None) -> BoundedMap[str, int]:
        return BoundedMap(name, cap=cap, register=False)

    def put(self, c: Any, key: str, value: int) -> None:
        c.set(key, value)

    def test_values_follow_their_keys(self) -> None:
        m = self.make("values")
        for i in range(2500):
            m.set(sid(i), i)
        assert [m[sid(i)] for i in range(500, 2500)] == list(range(500, 2500))


def test_map_refreshed_key_survives_second_wave_unrefreshed_neighbour_does_not() -> None:
    # With cap 2,000 a wave of 2,000 *new* keys flushes every older key, refreshed
    # or not, so the largest wave a refreshed key can survive is cap - 1 = 1,999.
    m: BoundedMap[str, int] = BoundedMap("refresh-map")
    for i in range(2500):
        m.set(sid(i), i)
    # sid(500) is the oldest survivor; refresh it, leave its neighbour sid(501) alone
    m.set(sid(500), -1)
    for i in range(2500, 2500 + CAP - 1):  # second wave of 1,999 new keys
        m.set(sid(i), i)
    assert len(m) == CAP
    assert m.get(sid(500)) == -1
    assert sid(501) not in m
    assert all(sid(i) not in m for i in range(501, 2500))
    assert m.keys()[0] == sid(500)
    assert m.evictions == 500 + 1999
    # boundary: the 2,000th new key of the wave evicts it too
    m.set("one-more", 0)
    assert sid(500) not in m


def test_map_refresh_in_a_full_2000_wave_keeps_key_only_if_refreshed_again() -> None:
    m: BoundedMap[str, int] = BoundedMap("refresh-map-2")
    for i in range(2500):
        m.set(sid(i), i)
    m.set(sid(500), -1)
    for i in range(2500, 4500):  # a full wave of 2,000 new keys...
        if i == 3500:
            m.set(sid(500), -2)  # ...during which the live session is touched again
        m.set(sid(i), i)
    assert m.get(sid(500)) == -2
    assert sid(501) not in m
    assert len(m) == CAP


def test_set_readded_key_does_not_survive_second_wave() -> None:
    s: BoundedSet[str] = BoundedSet("readd-set")
    for i in range(2500):
        s.add(sid(i))
    assert s.add(sid(500)) is False  # already present: no refresh
    s.add("first-of-wave")
    assert sid(500) not in s  # it stayed the oldest, so the first new key evicts it
    for i in range(2500, 2500 + CAP - 2):
        s.add(sid(i))
    assert len(s) == CAP
    assert sid(500) not in s
    assert s.keys()[0] == sid(2499)  # every pre-wave key but the newest is gone


def test_lowering_the_cap_at_run_time_trims_on_next_insert(monkeypatch: pytest.MonkeyPatch) -> None:
    s: BoundedSet[str] = BoundedSet("retune-set")
    m: BoundedMap[str, int] = BoundedMap("retune-map")
    for i in range(50):
        s.add(sid(i))
        m.set(sid(i), i)
    monkeypatch.setattr(bounded, "MAX_TRACKED_SESSIONS", 10)
    # nothing happens until the next write
    assert len(s) == 50 and len(m) == 50
    s.add("new")
    m.set("new", 0)
    assert len(s) == 10 and len(m) == 10
    assert s.keys() == [sid(i) for i in range(41, 50)] + ["new"]
    assert m.keys() == [sid(i) for i in range(41, 50)] + ["new"]
    assert s.evictions == 41 and m.evictions == 41
    assert s.cap == 10


def test_small_cap_fixture_applies(small_cap: int) -> None:
    m: BoundedMap[str, int] = BoundedMap("small")
    for i in range(25):
        m.set(sid(i), i)
    assert len(m) == small_cap


def test_just_written_key_is_never_evicted() -> None:
    m: BoundedMap[str, int] = BoundedMap("fixed", cap=1)
    m.set("a", 1)
    m.set("b", 2)
    assert m.keys() == ["b"]
    s: BoundedSet[str] = BoundedSet("fixed-set", cap=1)
    s.add("a")
    s.add("b")
    assert s.keys() == ["b"]


def test_eviction_counters_and_registry() -> None:
    before = total_evictions()
    m: BoundedMap[str, int] = BoundedMap("counted-map", cap=3)
    for i in range(10):
        m.set(sid(i), i)
    assert m.evictions == 7
    assert total_evictions() - before >= 7
    stats = [x for x in registry_stats() if x["name"] == "counted-map"]
    assert stats == [{"name": "counted-map", "size": 3, "cap": 3, "evictions": 7}]


def test_reads_do_not_reorder() -> None:
    m: BoundedMap[str, int] = BoundedMap("reads", cap=3)
    for k in "abc":
        m.set(k, ord(k))
    assert m.get("a") == ord("a")
    assert m["a"] == ord("a")
    assert "a" in m
    assert m.get_or_create("a", lambda: 0) == ord("a")  # existing key: a read
    list(m)
    m.items()
    m.set("d", 0)
    assert "a" not in m  # 'a' was still the oldest
    assert m.keys() == ["b", "c", "d"]

    s: BoundedSet[str] = BoundedSet("reads-set", cap=3)
    for k in "abc":
        s.add(k)
    assert "a" in s
    s.add("a")
    s.add("d")
    assert s.keys() == ["b", "c", "d"]


def test_map_update_with_refreshes_and_discard_removes() -> None:
    m: BoundedMap[str, int] = BoundedMap("upd", cap=3)
    for k in "abc":
        m.set(k, 1)
    assert m.update_with("a", lambda old: (old or 0) + 1) == 2
    m.set("d", 1)
    assert m.keys() == ["c", "a", "d"]
    assert m.discard("c") is True
    assert m.discard("c") is False
    assert m.pop("a") == 2
    assert m.keys() == ["d"]


def test_concurrent_adds_hold_the_cap() -> None:
    s: BoundedSet[str] = BoundedSet("threads-set", cap=100)
    m: BoundedMap[str, int] = BoundedMap("threads-map", cap=100)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(2000):
                s.add(f"{t}-{i}")
                m.set(f"{t}-{i % 300}", i)
                assert len(s) <= 101 and len(m) <= 101
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(s) == 100 and len(m) == 100
    assert s.evictions == 10 * 2000 - 100


# ---------------------------------------------------------------- cachetools pin


def test_cachetools_fifo_update_moves_key_to_newest() -> None:
    """bounded-maps.md §1.2: FIFOCache ``c[k] = v`` on an existing key is delete + insert.

    Upstream pinned this as documentation only (tkem/cachetools#395); this test
    makes a silent change visible. Eviction order is observed via popitem().
    """
    c: FIFOCache[str, int] = FIFOCache(maxsize=2)
    c["1"] = 1
    c["2"] = 2
    c["1"] = 11  # update: moves '1' to newest
    c["3"] = 3  # evicts '2', not '1'
    assert "2" not in c
    assert c["1"] == 11 and c["3"] == 3


def test_cachetools_fifo_guarded_add_matches_js_set_and_unguarded_does_not() -> None:
    guarded: FIFOCache[str, None] = FIFOCache(maxsize=2)
    for k in ("a", "b", "a"):
        if k not in guarded:
            guarded[k] = None
    guarded["c"] = None
    assert "a" not in guarded and "b" in guarded  # JS Set: 'a' stays oldest

    unguarded: FIFOCache[str, None] = FIFOCache(maxsize=2)
    for k in ("a", "b", "a"):
        unguarded[k] = None
    unguarded["c"] = None
    assert "b" not in unguarded and "a" in unguarded  # the re-set moved 'a'


def test_cachetools_fifo_reads_do_not_reorder_but_lru_reads_do() -> None:
    fifo: FIFOCache[str, int] = FIFOCache(maxsize=2)
    fifo["a"], fifo["b"] = 1, 2
    _ = fifo["a"], fifo.get("a"), ("a" in fifo)
    fifo["c"] = 3
    assert "a" not in fifo

    lru: LRUCache[str, int] = LRUCache(maxsize=2)
    lru["a"], lru["b"] = 1, 2
    _ = lru["a"]
    lru["c"] = 3
    assert "a" in lru and "b" not in lru  # why LRUCache is wrong for a JS Map


# ---------------------------------------------------------------- property tests


class JsSetModel:
    """JS ``Set`` insertion order plus the spec's eviction loop."""

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.evictions = 0

    def trim(self, just: int, cap: int) -> None:
        while len(self.keys) > cap:
            if self.keys[0] == just:
                break
            self.keys.pop(0)
            self.evictions += 1

    def add(self, k: int, cap: int) -> bool:
        if k in self.keys:
            return False
        self.keys.append(k)
        self.trim(k, cap)
        return True


class JsMapModel(JsSetModel):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[int, int] = {}

    def set(self, k: int, v: int, cap: int) -> None:
        if k in self.keys:
            self.keys.remove(k)
        self.keys.append(k)
        self.values[k] = v
        self.trim(k, cap)
        self.values = {x: self.values[x] for x in self.keys}

    def delete(self, k: int) -> bool:
        if k in self.keys:
            self.keys.remove(k)
            del self.values[k]
            return True
        return False


keys_st = st.integers(min_value=0, max_value=12)
set_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), keys_st),
        st.tuples(st.just("discard"), keys_st),
        st.tuples(st.just("has"), keys_st),
        st.tuples(st.just("cap"), st.integers(min_value=1, max_value=6)),
    ),
    max_size=80,
)
map_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys_st, st.integers(0, 99)),
        st.tuples(st.just("get"), keys_st, st.just(0)),
        st.tuples(st.just("pop"), keys_st, st.just(0)),
        st.tuples(st.just("get_or_create"), keys_st, st.integers(0, 99)),
        st.tuples(st.just("update_with"), keys_st, st.integers(0, 99)),
        st.tuples(st.just("cap"), st.integers(min_value=1, max_value=6), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=set_ops, start_cap=st.integers(min_value=1, max_value=6))
def test_bounded_set_matches_js_set_model(ops: list[tuple[Any, ...]], start_cap: int) -> None:
    saved = bounded.MAX_TRACKED_SESSIONS
    bounded.MAX_TRACKED_SESSIONS = start_cap
    try:
        cap = start_cap
        s: BoundedSet[int] = BoundedSet("prop-set", register=False)
        model = JsSetModel()
        for op in ops:
            if op[0] == "add":
                assert s.add(op[1]) == model.add(op[1], cap)
            elif op[0] == "discard":
                present = op[1] in model.keys
                if present:
                    model.keys.remove(op[1])
                assert s.discard(op[1]) == present
            elif op[0] == "has":
                assert (op[1] in s) == (op[1] in model.keys)
            else:
                cap = op[1]
                bounded.MAX_TRACKED_SESSIONS = cap
            assert s.keys() == model.keys
            assert s.evictions == model.evictions
    finally:
        bounded.MAX_TRACKED_SESSIONS = saved


@settings(max_examples=300, deadline=None)
@given(ops=map_ops, start_cap=st.integers(min_value=1, max_value=6))
def test_bounded_map_matches_js_map_model(ops: list[tuple[Any, ...]], start_cap: int) -> None:
    saved = bounded.MAX_TRACKED_SESSIONS
    bounded.MAX_TRACKED_SESSIONS = start_cap
    try:
        cap = start_cap
        m: BoundedMap[int, int] = BoundedMap("prop-map", register=False)
        model = JsMapModel()
        for name, k, v in ops:
            if name == "set":
                m.set(k, v)
                model.set(k, v, cap)
            elif name == "get":
                assert m.get(k) == model.values.get(k)
            elif name == "pop":
                expected = model.values.get(k)
                model.delete(k)
                assert m.pop(k) == expected
            elif name == "get_or_create":
                if k in model.keys:
                    assert m.get_or_create(k, lambda v=v: v) == model.values[k]
                else:
                    assert m.get_or_create(k, lambda v=v: v) == v
                    model.keys.append(k)
                    model.values[k] = v
                    model.trim(k, cap)
                    model.values = {x: model.values[x] for x in model.keys}
            elif name == "update_with":
                old = model.values.get(k)
                new = (old or 0) + v
                assert m.update_with(k, lambda o, v=v: (o or 0) + v) == new
                model.set(k, new, cap)
            else:
                cap = k
                bounded.MAX_TRACKED_SESSIONS = cap
            assert m.keys() == model.keys
            assert dict(m.items()) == model.values
            assert m.evictions == model.evictions
    finally:
        bounded.MAX_TRACKED_SESSIONS = saved
