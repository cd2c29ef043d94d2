"""Write-behind: a first turn's index entry and hint sidecar are written after the hook."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from realhost.procs import wait_for
from test_runtime_features import NO_COOLDOWN, ctx, write_prior_session

from token_optimizer import write_behind
from token_optimizer.fsutil import StatePaths
from token_optimizer.hosts.openclaw_events import handle
from token_optimizer.runtime import TokenOptimizer
from token_optimizer.session_index import SessionIndex
from token_optimizer.write_behind import WriteBehind


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    return wait_for(cond, timeout, step=0.005)


def _recorder(**kw: Any) -> tuple[WriteBehind[int], list[int], threading.RLock]:
    """A queue whose apply records the items, with its lock."""
    lock = threading.RLock()
    seen: list[int] = []
    return WriteBehind("t", seen.extend, lock, **kw), seen, lock


@contextmanager
def held(*locks: threading.RLock) -> Iterator[None]:
    """Hold ``locks`` on another thread (as a slow disk write on the writer thread would)."""
    got, release = threading.Event(), threading.Event()

    def hold() -> None:
        for lk in locks:
            lk.acquire()
        got.set()
        release.wait(30)
        for lk in reversed(locks):
            lk.release()

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert got.wait(10)
    try:
        yield
    finally:
        release.set()
        t.join(10)


# ---------------------------------------------------------------- the queue itself


def test_items_applied_once_in_order_by_the_thread() -> None:
    wb, seen, _ = _recorder()
    for i in range(50):
        wb.submit(i)
    assert _wait(lambda: wb.applied == 50)
    assert seen == list(range(50))
    wb.close()


def test_drain_applies_in_the_callers_thread_and_is_reentrant() -> None:
    lock = threading.RLock()
    seen: list[tuple[int, str]] = []

    def apply(items: list[int]) -> None:
        wb.drain()  # the store reading itself while it writes: must not reorder
        seen.extend((i, threading.current_thread().name) for i in items)

    wb: WriteBehind[int] = WriteBehind("t", apply, lock)
    with held(lock):  # the thread cannot apply while the lock is held elsewhere
        wb.submit(1)
        wb.submit(2)
        time.sleep(0.05)
        assert seen == [] and wb.pending() == 2
    wb.drain()
    assert [i for i, _ in seen] == [1, 2]
    wb.close()


def test_a_full_queue_makes_the_submitter_write() -> None:
    wb, seen, lock = _recorder(max_pending=3)
    done = threading.Event()

    def submit_five() -> None:
        for i in range(5):
            wb.submit(i)
        done.set()

    with held(lock):
        t = threading.Thread(target=submit_five, daemon=True)
        t.start()
        time.sleep(0.1)
        assert not done.is_set()  # the 4th submit waits to write: the queue stays bounded
        assert wb.pending() == 4
    assert done.wait(10)
    wb.drain()
    assert seen == [0, 1, 2, 3, 4]
    wb.close()


def test_a_failing_apply_is_logged_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    lock = threading.RLock()
    seen: list[int] = []

    def apply(items: list[int]) -> None:
        if 13 in items:
            raise OSError("disk gone")
        seen.extend(items)

    wb: WriteBehind[int] = WriteBehind("t", apply, lock)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        wb.submit(13)
        assert _wait(lambda: wb.applied == 1)
        wb.submit(14)
        assert _wait(lambda: seen == [14])
    assert any("queued write(s) failed" in r.getMessage() for r in caplog.records)
    wb.close()


def test_idle_thread_ends_and_close_applies_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_behind, "IDLE_EXIT_S", 0.05)
    wb, seen, lock = _recorder()
    wb.submit(1)
    assert _wait(lambda: seen == [1])
    assert _wait(lambda: wb._thread is None)  # no thread left per idle store
    wb.submit(2)  # a new thread starts
    assert _wait(lambda: seen == [1, 2])
    with held(lock):
        wb.submit(3)
    wb.close()
    assert seen == [1, 2, 3]
    wb.submit(4)  # after close: written at once
    assert seen == [1, 2, 3, 4]


def test_the_worker_writes_in_a_quiet_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_behind, "MAX_DELAY_S", 30.0)
    wb, seen, _ = _recorder()
    with write_behind.hook_running():  # a hook is running: the worker waits
        wb.submit(1)
        time.sleep(0.2)
        assert seen == []
    assert _wait(lambda: seen == [1], 5)  # written once the hooks are quiet
    wb.close()


def test_busy_hooks_delay_a_write_at_most_max_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_behind, "MAX_DELAY_S", 0.1)
    wb, seen, _ = _recorder()
    with write_behind.hook_running():  # never quiet
        wb.submit(1)
        assert _wait(lambda: seen == [1], 5)
    wb.close()


# ---------------------------------------------------------------- the session index


def test_touch_later_is_read_back_at_once_and_keeps_order(paths: StatePaths) -> None:
    idx = SessionIndex(paths)
    with held(idx._lock):
        idx.touch_later("lane", "s1", agent="main", platform="cli")  # does not wait
        assert idx._writes.pending() == 1
    assert idx.get("lane") is not None and idx.get("lane")["session_id"] == "s1"  # type: ignore[index]
    # a synchronous touch after a handed-off one sees it (the rotation is reported)
    idx.touch_later("lane", "s2")
    assert idx.touch("lane", "s3") == "s2"
    other = SessionIndex(paths)  # another process on the same root
    assert other.get("lane")["session_id"] == "s3"  # type: ignore[index]
    assert other.get("lane")["agent"] == "main"  # type: ignore[index]
    idx.close()
    other.close()


def test_touch_later_refuses_what_touch_refuses(paths: StatePaths) -> None:
    idx = SessionIndex(paths)
    idx.touch_later("_README", "s1")
    idx.touch_later("lane", "")
    idx.touch_later("lane\ud800", "s1")
    assert idx._writes.pending() == 0 and idx.rejected == 1
    assert len(idx) == 0
    idx.close()


def test_touch_later_keeps_the_time_of_the_message(paths: StatePaths) -> None:
    now = [1_800_000_000.0]
    idx = SessionIndex(paths, clock=lambda: now[0])
    with held(idx._lock):
        idx.touch_later("lane", "s1")
        now[0] += 3600.0  # written an hour later (a stalled disk): still stamped at the message
    got = idx.get("lane")
    assert got is not None and got["updated_at"].startswith("2027-01-15T08:00:00")
    idx.close()


def test_close_writes_what_is_queued(paths: StatePaths) -> None:
    idx = SessionIndex(paths)
    with held(idx._lock):
        for i in range(20):
            idx.touch_later(f"lane-{i}", f"s{i}")
    idx.close()
    assert len(SessionIndex(paths)) == 20


# ---------------------------------------------------------------- a first turn


def test_first_turn_waits_for_neither_the_index_nor_the_sidecar(paths: StatePaths,
                                                                tmp_path: Path) -> None:
    ws = tmp_path / "billing-service"
    ws.mkdir()
    rt = TokenOptimizer(paths.root, settings=NO_COOLDOWN, cwd=str(ws))
    write_prior_session(rt, "old-1", str(ws))
    rt.wait_for_sweep(30)
    out: list[str] = []

    def turn() -> None:
        res = handle(rt, "agent_turn_prepare",
                     {"prompt": "migrate the billing exporter parquet writer tests"}, ctx("new-1"))
        out.append((res.result or {}).get("prependContext", ""))

    sidecar = paths.read_cache / "hint-serves-new-1.json"
    # Both stores busy (their locks held as a long write on a busy disk would): the turn
    # still returns its hint. Before the write-behind it waited for both.
    with held(rt.index._lock, rt.read_cache._lock):
        t = threading.Thread(target=turn, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "the first turn waited for a store write"
        assert "RECOVERED DATA" in out[0]
        assert not sidecar.exists()
    # ... and both are written right after
    assert _wait(lambda: sidecar.exists())
    assert list(json.loads(sidecar.read_text())) == [
        f"{ws}/billing/exporter.py edited to add the parquet writer"]
    assert _wait(lambda: SessionIndex(paths).is_persisted("agent:main:new-1"))
    rt.close()


def test_hint_follow_credit_sees_a_serve_still_queued(paths: StatePaths, tmp_path: Path) -> None:
    ws = tmp_path / "billing-service"
    (ws / "billing").mkdir(parents=True)
    rt = TokenOptimizer(paths.root, settings=NO_COOLDOWN, cwd=str(ws))
    f = ws / "billing" / "exporter.py"
    f.write_text("x = 1\n")
    with held(rt.read_cache._lock):
        rt.read_cache.record_hint_serve("s1", [str(f)])
        assert rt.read_cache._hint_writes.pending() == 1
    # the claim drains the queue first (whether or not the thread got there)
    assert rt.read_cache.claim_hint_follow("s1", str(f)) is True
    assert rt.read_cache.claim_hint_follow("s1", str(f)) is False
    rt.close()


def test_a_batch_is_one_transaction_and_a_bad_entry_loses_only_itself(
        paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = SessionIndex(paths)
    idx.touch("warm", "s0")  # the database exists
    before = idx.write_count
    real = idx._insert

    def insert(conn: sqlite3.Connection, key: str, e: Any) -> None:
        if key == "bad":
            raise ValueError("cannot store this one")
        real(conn, key, e)

    monkeypatch.setattr(idx, "_insert", insert)
    with held(idx._lock):
        for k in ("a", "bad", "b"):
            idx.touch_later(k, f"s-{k}")
    idx._writes.drain()
    assert idx.write_count == before + 1  # one commit for the three
    assert idx.is_persisted("a") and idx.is_persisted("b") and not idx.is_persisted("bad")
    idx.close()


def test_a_busy_database_falls_back_to_one_by_one(paths: StatePaths) -> None:
    idx = SessionIndex(paths, busy_timeout_s=0.05)
    idx.touch("warm", "s0")
    other = sqlite3.connect(str(idx.path), isolation_level=None)
    with held(idx._lock):
        for k in ("a", "b"):
            idx.touch_later(k, f"s-{k}")
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        idx._writes.drain()  # batch busy, then each busy: nothing raises
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert idx._writes.pending() == 0
    idx.touch_later("c", "s-c")
    idx._writes.drain()
    assert idx.is_persisted("c")
    idx.close()


_CHILD = """
import sys, time
from token_optimizer.events import Identity, TurnPrepare
from token_optimizer.policy import PolicySettings
from token_optimizer.runtime import TokenOptimizer
root, tag, n, linger = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rt = TokenOptimizer(root, settings=PolicySettings.from_env({}), cwd="/srv/p")
for i in range(n):
    sid = f"{tag}-{i}"
    rt.turn_prepare(TurnPrepare(Identity(sid, f"agent:main:{sid}", "main"), "fix the build",
                                cwd="/srv/p"))
print("done", flush=True)
time.sleep(linger)  # alive, never closed: the entries must already be visible
"""


def test_processes_on_one_root_see_and_keep_every_first_turn(paths: StatePaths) -> None:
    n = 150
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # a process that stays alive: its entries reach disk without a close (quiet moment)
    live = subprocess.Popen([sys.executable, "-c", _CHILD, str(paths.root), "live", str(n), "30"],
                            stdout=subprocess.PIPE, env=env)
    # two that exit normally while hammering the same root: nothing lost at exit
    quick = [subprocess.Popen([sys.executable, "-c", _CHILD, str(paths.root), f"q{k}", str(n), "0"],
                              env=env) for k in range(2)]
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == b"done"
        for p in quick:
            assert p.wait(120) == 0
        idx = SessionIndex(paths)
        assert _wait(lambda: sum(idx.is_persisted(f"agent:main:live-{i}") for i in range(n)) == n,
                     10)
        assert all(idx.is_persisted(f"agent:main:q{k}-{i}") for k in range(2) for i in range(n))
        assert len(idx) == 3 * n
        idx.close()
    finally:
        live.kill()
        live.wait(10)
