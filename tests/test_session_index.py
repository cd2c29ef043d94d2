"""Session index (issue #7; session-bounds.md §3-§5) and its operator config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import fsutil
from token_optimizer import session_index as si
from token_optimizer.commands import sessions as sessions_cmd
from token_optimizer.config import (
    DEFAULT_SESSION_STORE_MAX_AGE_DAYS,
    ENV_SESSION_STORE_MAX_AGE_DAYS,
    Config,
)
from token_optimizer.fsutil import StatePaths, resolve_paths, sanitize_checkpoint_id
from token_optimizer.jsutil import iso_from_ms
from token_optimizer.session_index import README_KEY, SessionIndex

DAY = 86400.0
T0 = 1_800_000_000.0  # a fixed "now" for the fake clock


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def iso(seconds: float) -> str:
    return iso_from_ms(seconds * 1000)


def write_index(paths: StatePaths, entries: dict[str, Any]) -> None:
    """Seed through a legacy ``session-index.json``, imported at once into the database."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.session_index.write_text(json.dumps({README_KEY: "x", **entries}))
    seeded = SessionIndex(paths, clock=Clock())
    len(seeded)
    seeded.close()


def entry(sid: str, *, created: float, updated: float, **kw: Any) -> dict[str, Any]:
    return {"session_id": sid, "created_at": iso(created), "updated_at": iso(updated), **kw}


def db_path(paths: StatePaths) -> Path:
    return paths.root / si.DB_NAME


def on_disk(paths: StatePaths) -> dict[str, Any]:
    """What another process reads from the database: the README first, then the entries."""
    con = sqlite3.connect(f"file:{db_path(paths)}?mode=ro", uri=True)
    try:
        data: dict[str, Any] = {README_KEY: con.execute("SELECT text FROM _README").fetchone()[0]}
        for key, sid, created, updated, susp, platform, agent, extra in con.execute(
            "SELECT key, session_id, created_at, updated_at, suspended, platform, agent, extra "
            "FROM entries ORDER BY rowid"
        ):
            e: dict[str, Any] = {"session_key": key, "session_id": sid, "created_at": created,
                                 "updated_at": updated, "suspended": bool(susp)}
            e.update({k: v for k, v in json.loads(extra or "{}").items() if k not in e})
            if platform is not None:
                e["platform"] = platform
            if agent is not None:
                e["agent"] = agent
            data[key] = e
    finally:
        con.close()
    return data


def make(paths: StatePaths, clock: Clock | None = None, **kw: Any) -> SessionIndex:
    return SessionIndex(paths, clock=clock or Clock(), **kw)


def journal(paths: StatePaths) -> Path:
    return paths.root / si.JOURNAL_NAME


def journal_lines(paths: StatePaths) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal(paths).read_text().splitlines() if line]


def after_crash(paths: StatePaths, clock: Clock | None = None) -> dict[str, dict[str, Any]]:
    """What a new process sees when the old one died without flush/close."""
    return SessionIndex(paths, clock=clock or Clock()).entries()


# ---------------------------------------------------------------- §3 pruning


def test_age_is_measured_by_updated_at_not_created_at(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "old-but-active": entry("s1", created=T0 - 400 * DAY, updated=T0 - 1 * DAY),
            "young-but-idle": entry("s2", created=T0 - 91 * DAY, updated=T0 - 91 * DAY),
            "created-recently-updated-long-ago": entry(
                "s3", created=T0 - 1 * DAY, updated=T0 - 100 * DAY
            ),
        },
    )
    idx = make(paths)
    assert idx.prune_old_entries(90) == 2
    assert set(idx.entries()) == {"old-but-active"}


def test_cutoff_boundary(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "just-inside": entry("a", created=T0 - 90 * DAY + 5, updated=T0 - 90 * DAY + 5),
            "just-outside": entry("b", created=T0 - 90 * DAY - 5, updated=T0 - 90 * DAY - 5),
        },
    )
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    assert set(idx.entries()) == {"just-inside"}


@pytest.mark.parametrize("days", [0, -1, -90])
def test_zero_and_negative_disable(paths: StatePaths, days: int) -> None:
    write_index(paths, {"k": entry("s", created=T0 - 900 * DAY, updated=T0 - 900 * DAY)})
    idx = make(paths)
    assert idx.prune_old_entries(days) == 0
    assert idx.prune_candidates(days) == []
    assert "k" in idx.entries()
    assert idx.write_count == 0


def test_suspended_entries_survive(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "paused": entry("s1", created=T0 - 300 * DAY, updated=T0 - 300 * DAY, suspended=True),
            "idle": entry("s2", created=T0 - 300 * DAY, updated=T0 - 300 * DAY, suspended=False),
        },
    )
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    assert list(idx.entries()) == ["paused"]
    assert on_disk(paths)["paused"]["suspended"] is True


def test_active_work_callback_is_called_with_session_key_and_protects(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "agent:main:telegram:dm:1": entry(
                "sid-1", created=T0 - 200 * DAY, updated=T0 - 200 * DAY
            ),
            "agent:main:telegram:dm:2": entry(
                "sid-2", created=T0 - 200 * DAY, updated=T0 - 200 * DAY
            ),
        },
    )
    seen: list[str] = []

    def busy(key: str) -> bool:
        seen.append(key)
        return key == "agent:main:telegram:dm:1"

    idx = make(paths, active_work=busy)
    assert idx.prune_old_entries(90) == 1
    assert set(seen) == {"agent:main:telegram:dm:1", "agent:main:telegram:dm:2"}
    assert list(idx.entries()) == ["agent:main:telegram:dm:1"]


def test_callback_recognising_only_session_ids_does_not_protect(paths: StatePaths) -> None:
    # Namespace regression guard: the guard is keyed by session KEY; a host
    # callback that only knows ids never matches, so the entry is pruned.
    write_index(
        paths,
        {
            "agent:main:slack:group:C1": entry(
                "20250101_000000_abcd1234", created=T0 - 200 * DAY, updated=T0 - 200 * DAY
            )
        },
    )
    live_ids = {"20250101_000000_abcd1234"}
    idx = make(paths, active_work=lambda x: x in live_ids)
    assert idx.prune_old_entries(90) == 1
    assert idx.entries() == {}


def test_pending_restore_counts_as_suspended(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "queued": entry("s1", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
            "plain": entry("s2", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
        },
    )
    calls: list[str] = []

    def pending(key: str) -> bool:
        calls.append(key)
        return key == "queued"

    idx = make(paths, pending_restore=pending)
    assert idx.prune_old_entries(90) == 1
    assert list(idx.entries()) == ["queued"]
    assert "queued" in calls


def test_callbacks_only_consulted_for_expired_entries(paths: StatePaths) -> None:
    write_index(paths, {"fresh": entry("s1", created=T0, updated=T0 - 1)})
    calls: list[str] = []

    def cb(key: str) -> bool:
        calls.append(key)
        return False

    idx = make(paths, active_work=cb)
    assert idx.prune_old_entries(90) == 0
    assert calls == []


@pytest.mark.parametrize("which", ["active_work", "pending_restore"])
def test_raising_callback_keeps_entry_and_logs_debug(
    paths: StatePaths, caplog: pytest.LogCaptureFixture, which: str
) -> None:
    write_index(
        paths,
        {
            "boom": entry("s1", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
            "ok": entry("s2", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
        },
    )

    def cb(key: str) -> bool:
        if key == "boom":
            raise RuntimeError("registry unavailable")
        return False

    idx = SessionIndex(paths, clock=Clock(), **{which: cb})  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="token_optimizer"):
        assert idx.prune_old_entries(90) == 1
    assert list(idx.entries()) == ["boom"]
    msgs = [r for r in caplog.records if "registry unavailable" in r.getMessage()]
    assert msgs and msgs[0].levelno == logging.DEBUG
    assert msgs[0].getMessage().startswith("[token-optimizer] ")


def test_callback_assignable_after_construction(paths: StatePaths) -> None:
    write_index(paths, {"k": entry("s", created=T0 - 200 * DAY, updated=T0 - 200 * DAY)})
    idx = make(paths)
    idx.active_work = lambda key: key == "k"
    assert idx.prune_old_entries(90) == 0




def test_file_on_disk_reflects_post_prune_state(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "keep": entry("s1", created=T0 - 5 * DAY, updated=T0 - 5 * DAY, platform="telegram"),
            "drop": entry("s2", created=T0 - 95 * DAY, updated=T0 - 95 * DAY),
            "_note": "ignored",
        },
    )
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    raw = on_disk(paths)
    assert list(raw) == [README_KEY, "keep"]
    assert raw["keep"]["session_id"] == "s1"
    assert raw["keep"]["platform"] == "telegram"
    assert set(SessionIndex(paths).entries()) == {"keep"}
    assert oct(db_path(paths).stat().st_mode & 0o777) == "0o600"


def test_pruned_key_gets_a_fresh_session_later(paths: StatePaths) -> None:
    clock = Clock()
    write_index(paths, {"k": entry("old", created=T0 - 100 * DAY, updated=T0 - 100 * DAY)})
    idx = make(paths, clock)
    assert idx.prune_old_entries(90) == 1
    # the key is gone: a returning user is a new entry, not a rotation
    assert idx.touch("k", "new") is None
    got = idx.get("k")
    assert got is not None and got["session_id"] == "new" and got["created_at"] == iso(T0)


def test_prune_is_safe_against_concurrent_updates(paths: StatePaths) -> None:
    clock = Clock()
    old = {
        f"old-{i}": entry(f"o{i}", created=T0 - 200 * DAY, updated=T0 - 200 * DAY)
        for i in range(300)
    }
    write_index(paths, old)
    idx = make(paths, clock)
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    def toucher(n: int) -> None:
        try:
            start.wait()
            for i in range(150):
                idx.touch(f"live-{n}-{i % 20}", f"id-{n}-{i % 20}")
                # also refresh some old entries concurrently: those must survive
                if i < 10:
                    idx.touch(f"old-{n * 10 + i}", f"o{n * 10 + i}")
        except BaseException as e:
            errors.append(e)

    def pruner() -> None:
        try:
            start.wait()
            for _ in range(20):
                idx.prune_old_entries(90)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=toucher, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=pruner))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    idx.prune_old_entries(90)
    idx.close()
    expected = {f"live-{n}-{i}" for n in range(4) for i in range(20)} | {
        f"old-{k}" for k in range(40)
    }
    assert set(idx.entries()) == expected
    assert set(SessionIndex(paths).entries()) == expected
    raw = on_disk(paths)
    assert all(raw[f"old-{k}"]["session_id"] == f"o{k}" for k in range(40))
    assert all(
        raw[f"live-{n}-{i}"]["session_id"] == f"id-{n}-{i}" for n in range(4) for i in range(20)
    )


def test_bad_max_age_type_is_ignored(paths: StatePaths) -> None:
    write_index(paths, {"k": entry("s", created=T0 - 200 * DAY, updated=T0 - 200 * DAY)})
    idx = make(paths)
    assert idx.prune_old_entries("30") == 0  # type: ignore[arg-type]
    assert idx.prune_old_entries(None) == 0  # type: ignore[arg-type]
    assert "k" in idx.entries()


# ---------------------------------------------------------------- per-session state removal


def seed_session_files(paths: StatePaths, sid: str, agent: str = "main") -> list[Path]:
    from token_optimizer.fsutil import sanitize_removing

    ck = paths.checkpoints / sanitize_checkpoint_id(sid)
    ck.mkdir(parents=True, exist_ok=True)
    (ck / "20260101-compact.md").write_text("cp")
    (ck / "manifest.jsonl").write_text("{}\n")
    paths.decisions.mkdir(parents=True, exist_ok=True)
    rc = sanitize_removing(sid, "unknown")
    files = [
        paths.read_cache / f"{agent}-{rc}.json",
        paths.decisions / f"{rc}.jsonl",
        paths.read_cache / f"hint-serves-{rc}.json",
    ]
    for f in files:
        f.write_text("{}")
    return [ck, *files]


def test_prune_removes_per_session_state(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "agent:main:telegram:dm:1": entry(
                "sess:old/1",
                created=T0 - 200 * DAY,
                updated=T0 - 200 * DAY,
                agent="ops",
                platform="plat",
            ),
            "agent:main:telegram:dm:2": entry("sess-live", created=T0, updated=T0),
        },
    )
    dead = seed_session_files(paths, "sess:old/1", agent="ops")
    dead_keyagent = seed_session_files(paths, "sess:old/1", agent="main")  # agent from key
    dead_platform = seed_session_files(paths, "sess:old/1", agent="plat")  # runtime passes it
    live = seed_session_files(paths, "sess-live", agent="main")
    other = paths.read_cache / "main-somethingelse.json"
    other.write_text("{}")
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    for p in dead + dead_keyagent + dead_platform:
        assert not p.exists(), p
    for p in [*live, other]:
        assert p.exists(), p
    assert paths.checkpoints.is_dir() and paths.decisions.is_dir()


def test_prune_keeps_state_shared_with_a_live_session(paths: StatePaths) -> None:
    # "a:b" and "a_b" sanitise to the same checkpoint directory name.
    write_index(
        paths,
        {
            "k-dead": entry("a:b", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
            "k-live": entry("a_b", created=T0, updated=T0),
        },
    )
    ck = paths.checkpoints / sanitize_checkpoint_id("a_b")
    ck.mkdir(parents=True)
    (ck / "x.md").write_text("keep me")
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    assert (ck / "x.md").read_text() == "keep me"


def test_prune_never_follows_symlinks(paths: StatePaths, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.md").write_text("do not delete")
    outside_file = tmp_path / "outside.json"
    outside_file.write_text("do not delete")
    write_index(paths, {"k": entry("victim", created=T0 - 200 * DAY, updated=T0 - 200 * DAY)})
    paths.checkpoints.mkdir(parents=True)
    paths.read_cache.mkdir(parents=True)
    (paths.checkpoints / "victim").symlink_to(outside, target_is_directory=True)
    (paths.read_cache / "default-victim.json").symlink_to(outside_file)
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    assert (outside / "precious.md").read_text() == "do not delete"
    assert outside_file.read_text() == "do not delete"


def test_prune_refuses_symlinked_read_cache_dir(paths: StatePaths, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "default-victim.json").write_text("x")
    write_index(paths, {"k": entry("victim", created=T0 - 200 * DAY, updated=T0 - 200 * DAY)})
    paths.read_cache.symlink_to(outside, target_is_directory=True)
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    assert (outside / "default-victim.json").exists()


def test_file_removal_runs_outside_the_lock_and_spares_revived_ids(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_index(
        paths,
        {
            "k1": entry("first", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
            "k2": entry("second", created=T0 - 200 * DAY, updated=T0 - 200 * DAY),
        },
    )
    for sid in ("first", "second"):
        (paths.checkpoints / sid).mkdir(parents=True)
        (paths.checkpoints / sid / "a.md").write_text("x")
    idx = make(paths)
    real = fsutil.remove_tree_safely  # the checkpoint store removes its own directories
    calls: list[str] = []

    def removing(path: Path, root: Path) -> int:
        calls.append(path.name)
        if len(calls) == 1:
            # another thread brings "second" back while "first" is being removed;
            # it must not block on the index lock
            t = threading.Thread(target=idx.touch, args=("k2-new", "second"))
            t.start()
            t.join(timeout=5)
            assert not t.is_alive()
        return int(real(path, root))

    monkeypatch.setattr(fsutil, "remove_tree_safely", removing)
    assert idx.prune_old_entries(90) == 2
    assert calls == ["first"]
    assert not (paths.checkpoints / "first").exists()
    assert (paths.checkpoints / "second" / "a.md").exists()
    assert set(after_crash(paths)) == {"k2-new"}  # the revived entry was committed
    idx.close()
    assert set(on_disk(paths)) == {README_KEY, "k2-new"}


# ---------------------------------------------------------------- scheduling


def test_maybe_prune_hourly_gate(paths: StatePaths) -> None:
    clock = Clock()
    write_index(paths, {"a": entry("s1", created=T0 - 100 * DAY, updated=T0 - 100 * DAY)})
    idx = make(paths, clock)
    assert idx.maybe_prune(90, now=T0) == 1  # first tick prunes immediately
    # a new expired entry appears (e.g. imported); ticks within the hour do not prune
    clock.t = T0 - 100 * DAY
    idx.touch("b", "s2")
    clock.t = T0
    assert idx.maybe_prune(90, now=T0 + 60) is None
    assert idx.maybe_prune(90, now=T0 + 3599) is None
    assert "b" in idx.entries()
    assert idx.maybe_prune(90, now=T0 + 3600) == 1
    assert idx.maybe_prune(90, now=T0 + 3601) is None
    assert idx.maybe_prune(90, now=T0 + 7200) == 0


def test_maybe_prune_uses_injected_clock_by_default(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    assert idx.maybe_prune(90) == 0
    clock.t += 1800
    assert idx.maybe_prune(90) is None
    clock.t += 1800
    assert idx.maybe_prune(90) == 0


def test_maybe_prune_disabled_still_gated(paths: StatePaths) -> None:
    write_index(paths, {"a": entry("s1", created=T0 - 100 * DAY, updated=T0 - 100 * DAY)})
    idx = make(paths)
    assert idx.maybe_prune(0, now=T0) == 0
    assert idx.maybe_prune(90, now=T0 + 10) is None
    assert "a" in idx.entries()


# ---------------------------------------------------------------- §4 file format




def test_load_skips_underscore_keys_and_non_objects(
    paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    paths.root.mkdir(parents=True)
    paths.session_index.write_text(
        json.dumps(
            {
                "_README": "legacy",
                "_meta": {"session_id": "looks-real"},
                "good": entry("s1", created=T0, updated=T0, model_override={"model": "m"}),
                "bad-list": [1, 2],
                "bad-str": "oops",
                "no-id": {"created_at": iso(T0)},
            }
        )
    )
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)
    assert list(idx.entries()) == ["good"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "bad-list" in warned and "bad-str" in warned and "no-id" in warned
    assert all(r.getMessage().startswith("[token-optimizer] ") for r in caplog.records)
    # unknown fields survive a save
    idx.touch("other", "s2")
    idx.close()
    assert on_disk(paths)["good"]["model_override"] == {"model": "m"}


def test_unreadable_updated_at_falls_back_to_created_at(paths: StatePaths) -> None:
    write_index(
        paths,
        {
            "a": {"session_id": "s1", "created_at": iso(T0 - 200 * DAY), "updated_at": "garbage"},
            "b": {"session_id": "s2", "updated_at": 12},
        },
    )
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1  # a (by created_at); b counts as seen now
    assert list(idx.entries()) == ["b"]


def test_hermes_style_naive_timestamps_are_read(paths: StatePaths) -> None:
    from datetime import datetime

    naive = datetime.fromtimestamp(T0 - 100 * DAY).isoformat()
    write_index(paths, {"a": {"session_id": "s1", "created_at": naive, "updated_at": naive}})
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1


def test_corrupt_file_is_kept_aside_not_lost(paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    paths.session_index.write_text("{not json")
    idx = make(paths)
    assert idx.entries() == {}
    idx.touch("k", "s")
    assert set(after_crash(paths)) == {"k"}  # committed even over a corrupt legacy index
    idx.close()
    assert (paths.root / "session-index.json.corrupt").read_text() == "{not json"
    assert list(on_disk(paths)) == [README_KEY, "k"]






# ---------------------------------------------------------------- §5 lazy creation


def test_handshake_only_sessions_leave_nothing_on_disk(paths: StatePaths) -> None:
    idx = make(paths)
    for i in range(1000):
        idx.note_session(f"agent:main:web:dm:{i}", f"sid-{i}", platform="web")
        idx.touch(f"agent:main:web:dm:{i}", f"sid-{i}", real_message=False)  # heartbeat
    idx.flush()
    idx.maybe_prune(90)
    idx.close()
    assert not paths.root.exists()
    assert len(idx) == 0
    assert idx.get("agent:main:web:dm:5") == {
        "session_key": "agent:main:web:dm:5",
        "session_id": "sid-5",
        "created_at": iso(T0),
        "updated_at": iso(T0),
        "suspended": False,
        "platform": "web",
        "persisted": False,
    }
    # one real message: exactly one entry, visible to another process at once
    idx.touch("agent:main:web:dm:7", "sid-7")
    assert list(after_crash(paths)) == ["agent:main:web:dm:7"]
    idx.close()
    raw = on_disk(paths)
    assert list(raw) == [README_KEY, "agent:main:web:dm:7"]
    assert raw["agent:main:web:dm:7"]["platform"] == "web"
    assert "persisted" not in raw["agent:main:web:dm:7"]
    assert not any("persist" in k or "pending" in k for k in raw["agent:main:web:dm:7"])
    names = {p.name for p in paths.root.iterdir()}
    assert si.DB_NAME in names and names <= {si.DB_NAME + s for s in ("", "-wal", "-shm")}


def test_pending_marks_are_bounded(paths: StatePaths, small_cap: int) -> None:
    idx = make(paths)
    for i in range(50):
        idx.note_session(f"k{i}", f"s{i}")
    assert idx.pending_count() == small_cap




def test_reset_defers_the_write_and_reports_rotation_once(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    assert idx.touch("lane", "s1") is None
    first = on_disk(paths)
    clock.t += 10
    # /new: a session_start with a new id under the same key -> no write yet
    idx.note_session("lane", "s2")
    assert (
        idx.touch("lane", "s2", real_message=False) is None
    )  # already reported? no: first report below
    assert on_disk(paths) == first
    assert idx.get("lane")["persisted"] is False  # type: ignore[index]
    clock.t += 10
    assert idx.touch("lane", "s2") is None  # rotation was seen on the transient mark
    raw = after_crash(paths)
    assert raw["lane"]["session_id"] == "s2"
    assert raw["lane"]["created_at"] == iso(T0 + 10)


def test_rotation_returns_previous_id(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    assert idx.touch("lane", "s1") is None
    assert idx.touch("lane", "s1") is None
    clock.t += 5
    assert idx.touch("lane", "s2") == "s1"
    assert idx.touch("lane", "s2") is None
    assert after_crash(paths)["lane"]["session_id"] == "s2"  # rotation durable at once
    # rotation seen first through a transient mark is reported there, once
    assert idx.touch("lane", "s3", real_message=False) == "s2"
    assert idx.touch("lane", "s3") is None


def test_rotation_after_suspend_starts_unsuspended(paths: StatePaths) -> None:
    idx = make(paths)
    idx.touch("lane", "s1")
    idx.set_suspended("lane", True)
    assert after_crash(paths)["lane"]["suspended"] is True  # suspension durable at once
    assert idx.touch("lane", "s2") == "s1"
    assert after_crash(paths)["lane"]["suspended"] is False


def test_bad_input_is_ignored(paths: StatePaths) -> None:
    idx = make(paths)
    assert idx.touch("", "s") is None
    assert idx.touch("k", "") is None
    assert idx.touch(None, "s") is None  # type: ignore[arg-type]
    assert idx.touch("_README", "s") is None
    idx.set_suspended("nope", True)
    assert not paths.root.exists()


# ---------------------------------------------------------------- crash safety (every change committed)




def test_crash_loses_nothing(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("a", "s1")
    clock.t += 5
    idx.touch("a", "s1")
    clock.t += 5
    idx.touch("b", "s2")
    clock.t += 5
    idx.touch("a", "s1")
    # "crash": no close; a new process reads the index
    survivor = SessionIndex(paths, clock=clock)
    assert set(survivor.entries()) == {"a", "b"}
    # every touch was committed when made: updated_at is the last one's
    assert survivor.entries()["a"]["updated_at"] == iso(clock.t)




def test_heartbeat_does_not_refresh_activity(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("k", "s")
    clock.t += 100 * DAY
    idx.touch("k", "s", real_message=False)
    assert idx.get("k")["updated_at"] == iso(T0)  # type: ignore[index]
    assert idx.prune_old_entries(90) == 1


# ---------------------------------------------------------------- legacy journal import




def test_invalid_journal_lines_are_skipped_with_a_warning(
    paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    paths.root.mkdir(parents=True)
    paths.session_index.write_text(json.dumps({"keep": entry("k1", created=T0, updated=T0)}))
    good = {"op": "put", "key": "ok", "entry": entry("s1", created=T0, updated=T0)}
    lines = [
        json.dumps(good),
        "not json",
        "[1, 2]",
        json.dumps({"op": "put", "key": "_README", "entry": entry("x", created=T0, updated=T0)}),
        json.dumps({"op": "put", "key": "_meta", "entry": entry("x", created=T0, updated=T0)}),
        json.dumps({"op": "del", "key": "_README"}),
        json.dumps({"op": "put", "key": "no-id", "entry": {"created_at": iso(T0)}}),
        json.dumps({"op": "put", "key": "not-obj", "entry": "oops"}),
        json.dumps({"op": "zap", "key": "keep"}),
        json.dumps({"op": "put", "entry": entry("x", created=T0, updated=T0)}),
        "",
        "\x00\x00\x00",
    ]
    journal(paths).write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)
    assert list(idx.entries()) == ["keep", "ok"]
    assert idx.get("_README") is None and idx.get("_meta") is None
    warned = " ".join(r.getMessage() for r in caplog.records)
    for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 12):
        assert f"line {n} " in warned, n
    assert "line 1 " not in warned and "line 11 " not in warned
    idx.close()
    assert list(on_disk(paths)) == [README_KEY, "keep", "ok"]


















# ---------------------------------------------------------------- config


def test_config_defaults_and_rules(caplog: pytest.LogCaptureFixture) -> None:
    assert Config().session_store_max_age_days == 90 == DEFAULT_SESSION_STORE_MAX_AGE_DAYS
    assert Config.from_dict({}).session_store_max_age_days == 90
    assert Config.from_dict(None).session_store_max_age_days == 90
    assert Config.from_dict({"session_store_max_age_days": None}).session_store_max_age_days == 90
    assert Config.from_dict({"session_store_max_age_days": 0}).session_store_max_age_days == 0
    assert Config.from_dict({"session_store_max_age_days": 30}).session_store_max_age_days == 30
    assert Config.from_dict({"sessionStoreMaxAgeDays": 14}).session_store_max_age_days == 14
    assert (
        Config.from_dict(
            {"sessionStoreMaxAgeDays": 14, "session_store_max_age_days": 7}
        ).session_store_max_age_days
        == 7
    )
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert Config.from_dict({"session_store_max_age_days": -5}).session_store_max_age_days == 0
        for bad in ["abc", [1], {"a": 1}, True, float("nan")]:
            assert (
                Config.from_dict({"session_store_max_age_days": bad}).session_store_max_age_days
                == 90
            )
    assert len([r for r in caplog.records if r.getMessage().startswith("[token-optimizer] ")]) == 6
    assert Config.from_dict({"session_store_max_age_days": 45.9}).session_store_max_age_days == 45
    assert Config.from_dict({"session_store_max_age_days": " 12 "}).session_store_max_age_days == 12
    assert Config(session_store_max_age_days=-3).session_store_max_age_days == 0
    assert Config.from_dict([1, 2]).session_store_max_age_days == 90  # type: ignore[arg-type]
    assert Config.from_dict({"unrelated": 1}).session_store_max_age_days == 90


@pytest.mark.parametrize("days", [0, 1, 30, 90, 365])
def test_config_round_trip(days: int) -> None:
    c = Config(session_store_max_age_days=days)
    d = c.to_dict()
    assert d == {"session_store_max_age_days": days}
    assert Config.from_dict(json.loads(json.dumps(d))) == c


def test_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Config.from_env({}).session_store_max_age_days == 90
    assert Config.from_env({ENV_SESSION_STORE_MAX_AGE_DAYS: "7"}).session_store_max_age_days == 7
    assert Config.from_env({ENV_SESSION_STORE_MAX_AGE_DAYS: "-1"}).session_store_max_age_days == 0
    assert (
        Config.from_env({ENV_SESSION_STORE_MAX_AGE_DAYS: "soon"}).session_store_max_age_days == 90
    )
    assert Config.from_env({ENV_SESSION_STORE_MAX_AGE_DAYS: ""}).session_store_max_age_days == 90
    monkeypatch.setenv(ENV_SESSION_STORE_MAX_AGE_DAYS, "21")
    assert Config.from_env().session_store_max_age_days == 21
    # env wins over the plugin config when set; the plugin config applies otherwise
    assert Config.merged({"sessionStoreMaxAgeDays": 5}).session_store_max_age_days == 21
    assert Config.merged({"sessionStoreMaxAgeDays": 5}, env={}).session_store_max_age_days == 5


# ---------------------------------------------------------------- CLI


def own_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token-optimizer")
    parser.add_argument("--home")
    sub = parser.add_subparsers(dest="command")
    sessions_cmd.register_cli(sub)
    return parser


def run_cli(argv: list[str]) -> int:
    """Prefer the real ``cli.main``; fall back to our own parser while sibling modules are missing."""
    try:
        from token_optimizer import cli

        cli.build_parser()
    except ImportError:
        args = own_parser().parse_args(argv)
        return int(args.func(args))
    return cli.main(argv)


def seed_for_cli(root: Path) -> StatePaths:
    from token_optimizer.fsutil import resolve_paths

    p = resolve_paths(root)
    import time

    now = time.time()
    write_index(
        p,
        {
            "agent:main:telegram:dm:1": entry(
                "fresh-1", created=now - 3 * DAY, updated=now - 3600, platform="telegram"
            ),
            "agent:main:telegram:dm:2": entry(
                "stale-2", created=now - 200 * DAY, updated=now - 120 * DAY
            ),
            "agent:main:telegram:dm:3": entry(
                "paused-3", created=now - 200 * DAY, updated=now - 120 * DAY, suspended=True
            ),
        },
    )
    seed_session_files(p, "stale-2")
    return p


def test_cli_sessions_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "state"
    p = seed_for_cli(root)
    assert run_cli(["--home", str(root), "sessions", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 3 and out["index"] == str(db_path(p))
    rows = {r["session_key"]: r for r in out["sessions"]}
    assert rows["agent:main:telegram:dm:1"]["session_id"] == "fresh-1"
    assert 3500 < rows["agent:main:telegram:dm:1"]["age_seconds"] < 3700
    assert rows["agent:main:telegram:dm:3"]["suspended"] is True
    assert rows["agent:main:telegram:dm:2"]["size_bytes"] > 0
    assert rows["agent:main:telegram:dm:1"]["size_bytes"] == 0
    assert out["sessions"][0]["session_key"] == "agent:main:telegram:dm:1"
    assert run_cli(["--home", str(root), "sessions"]) == 0
    text = capsys.readouterr().out
    assert "SESSION KEY" in text and "stale-2" in text and "yes" in text and "3 session(s)" in text
    # listing never writes
    assert on_disk(p)["agent:main:telegram:dm:2"]["session_id"] == "stale-2"


def test_cli_sessions_empty_root_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "nothing"
    assert run_cli(["--home", str(root), "sessions"]) == 0
    assert "No sessions" in capsys.readouterr().out
    assert not root.exists()


def test_cli_prune_dry_run_then_real(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "state"
    p = seed_for_cli(root)
    before = on_disk(p)
    assert run_cli(["--home", str(root), "prune", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["dry_run"] is True
        and out["removed"] == 1
        and out["keys"] == ["agent:main:telegram:dm:2"]
    )
    assert on_disk(p) == before
    assert (p.checkpoints / "stale-2").exists()

    assert run_cli(["--home", str(root), "prune", "--max-age-days", "200"]) == 0
    assert "Pruned 0 of 3" in capsys.readouterr().out
    assert on_disk(p) == before

    assert run_cli(["--home", str(root), "prune"]) == 0
    text = capsys.readouterr().out
    assert "Pruned 1 of 3" in text and "agent:main:telegram:dm:2" in text
    assert set(on_disk(p)) == {README_KEY, "agent:main:telegram:dm:1", "agent:main:telegram:dm:3"}
    assert not (p.checkpoints / "stale-2").exists()


def test_cli_prune_zero_disables_and_env_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "state"
    p = seed_for_cli(root)
    assert run_cli(["--home", str(root), "prune", "--max-age-days", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["disabled"] is True and out["removed"] == 0
    monkeypatch.setenv(ENV_SESSION_STORE_MAX_AGE_DAYS, "0")
    assert run_cli(["--home", str(root), "prune"]) == 0
    assert "disabled" in capsys.readouterr().out
    assert len(on_disk(p)) == 4
    monkeypatch.setenv(ENV_SESSION_STORE_MAX_AGE_DAYS, "1")
    assert run_cli(["--home", str(root), "prune", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 1  # dm:2 only; dm:1 is an hour old


def test_register_cli_own_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "state"
    seed_for_cli(root)
    args = own_parser().parse_args(
        ["--home", str(root), "prune", "--dry-run", "--max-age-days", "90"]
    )
    assert args.func(args) == 0
    assert "Would prune 1 of 3" in capsys.readouterr().out


# ---------------------------------------------------------------- SQLite store (issue 11)


def test_readme_table_and_reserved_keys(paths: StatePaths) -> None:
    idx = make(paths)
    idx.touch("k1", "s1", platform="discord")
    idx.touch("_README", "x")
    idx.touch("_meta", "y")
    raw = on_disk(paths)
    assert list(raw) == [README_KEY, "k1"]
    readme = raw[README_KEY]
    assert "routing index" in readme and "NOT the list of all sessions" in readme
    assert "state.db" in readme and "sessions/" in readme
    con = sqlite3.connect(db_path(paths))
    assert con.execute("SELECT count(*) FROM _README").fetchone()[0] == 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert make(paths).get(README_KEY) is None


def test_every_change_is_visible_to_another_process_at_once(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("lane", "s1", platform="telegram")
    clock.t += 50
    idx.touch("lane", "s1")
    idx.set_suspended("lane", True)
    # no flush, no close: a crash now loses nothing
    seen = after_crash(paths)["lane"]
    assert seen["updated_at"] == iso(T0 + 50) and seen["suspended"] is True
    assert seen["platform"] == "telegram"
    assert idx.touch("lane", "s2") == "s1"
    assert after_crash(paths)["lane"]["session_id"] == "s2"
    assert after_crash(paths)["lane"]["suspended"] is False  # a new conversation starts unsuspended


def test_memory_holds_no_entries(paths: StatePaths) -> None:
    idx = make(paths)
    for i in range(3000):
        idx.touch(f"k{i}", f"s{i}")
    assert len(idx) == 3000 and idx.pending_count() == 0
    assert not any(isinstance(v, dict) and len(v) >= 3000 for v in vars(idx).values())
    assert idx.get("k1234") is not None and idx.get("k1234")["persisted"] is True  # type: ignore[index]


def test_unencodable_key_is_refused_and_poisons_nothing(
    paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    idx = make(paths)
    idx.touch("good-1", "s1")
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert idx.touch("bad-\ud800", "s-bad") is None
        assert idx.touch("bad-2", "s\udc00") is None
        assert idx.touch("bad-3", "s3", agent="a\ud800") is None
        idx.note_session("bad-\ud800", "x")
    for i in range(5):
        idx.touch(f"later-{i}", f"t{i}")
    idx.flush()
    idx.set_suspended("bad-\ud800", True)
    assert idx.get("bad-\ud800") is None or idx.get("bad-\ud800")["persisted"] is False  # type: ignore[index]
    assert idx.is_persisted("bad-\ud800") is False
    idx.close()  # gateway_stop: never raises
    assert set(after_crash(paths)) == {"good-1", *(f"later-{i}" for i in range(5))}
    assert idx.rejected == 4  # the transient mark too
    assert sum("not valid Unicode" in r.getMessage() for r in caplog.records) == 1


def test_symlinked_database_is_refused(
    paths: StatePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths.root.mkdir(parents=True)
    target = tmp_path / "evil.sqlite3"
    target.write_bytes(b"")
    db_path(paths).symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)
        idx.touch("k", "s")
    assert list(idx.entries()) == ["k"]  # kept in memory for this process
    assert target.read_bytes() == b"" and db_path(paths).is_symlink()
    assert any("not a regular file" in r.getMessage() for r in caplog.records)


def test_corrupt_database_is_kept_aside_and_a_new_one_started(
    paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    paths.root.mkdir(parents=True)
    db_path(paths).write_bytes(b"garbage, not sqlite" * 200)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)
        idx.touch("k", "s")
        idx.touch("k2", "s2")
    assert set(after_crash(paths)) == {"k", "k2"}
    aside = paths.root / (si.DB_NAME + ".corrupt")
    assert aside.read_bytes().startswith(b"garbage")
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1


def test_legacy_json_and_journal_are_imported_once(paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    paths.session_index.write_text(json.dumps(
        {README_KEY: "x", "a": entry("s1", created=T0, updated=T0, suspended=True)}))
    (paths.root / si.JOURNAL_NAME).write_text(
        json.dumps({"op": "put", "key": "b", "entry": entry("s2", created=T0, updated=T0)}) + "\n")
    idx = make(paths)
    assert set(idx.entries()) == {"a", "b"} and idx.entries()["a"]["suspended"] is True
    assert not paths.session_index.exists()
    assert (paths.root / "session-index.json.imported").exists()
    assert (paths.root / (si.JOURNAL_NAME + ".imported")).exists()
    # an old version writing the JSON again later is not re-imported over newer state
    paths.session_index.write_text(json.dumps({"c": entry("s3", created=T0, updated=T0)}))
    assert set(make(paths).entries()) == {"a", "b"}


def test_write_failure_keeps_the_transient_mark_and_retries(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    idx = make(paths)
    idx.note_session("k", "s", platform="web")
    real = SessionIndex._insert
    fail = {"on": True}

    def flaky(self: SessionIndex, conn: sqlite3.Connection, key: str, e: Any) -> None:
        if fail["on"]:
            raise sqlite3.OperationalError("disk I/O error")
        real(self, conn, key, e)

    monkeypatch.setattr(SessionIndex, "_insert", flaky)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx.touch("k", "s")
    assert idx.get("k")["persisted"] is False  # type: ignore[index]
    assert any("disk I/O error" in r.getMessage() for r in caplog.records)
    fail["on"] = False
    idx.touch("k", "s")
    assert after_crash(paths)["k"]["platform"] == "web"


def test_prune_rechecks_entries_refreshed_by_another_process(paths: StatePaths) -> None:
    clock = Clock()
    write_index(paths, {"k": entry("s", created=T0 - 100 * DAY, updated=T0 - 100 * DAY)})
    pruner = make(paths, clock)
    other = make(paths, clock)

    def refresh_meanwhile(key: str) -> bool:
        other.touch(key, "s")  # the gateway sees a message while the CLI prunes
        return False

    pruner.active_work = refresh_meanwhile
    assert pruner.prune_old_entries(90) == 0
    assert set(after_crash(paths)) == {"k"}


def test_orphan_read_cache_files_of_sessions_without_user_turns_are_pruned(
    paths: StatePaths,
) -> None:
    clock = Clock()
    idx = make(paths, clock)
    rc = paths.read_cache
    (rc / "decisions").mkdir(parents=True)
    old = T0 - 100 * DAY
    files = {
        "cron": [rc / "main-cron-1.json", rc / "hint-serves-cron-1.json",
                 rc / "decisions" / "cron-1.jsonl"],
        "live": [rc / "main-live-1.json", rc / "decisions" / "live-1.jsonl"],
        "recent": [rc / "main-beat-2.json"],
        "other": [rc / "config.json", rc / "decisions" / "notes.txt"],
    }
    for group in files.values():
        for f in group:
            f.write_text("{}")
            if f.name != "main-beat-2.json":
                os.utime(f, (old, old))
    idx.touch("agent:main:live", "live-1")  # an entry owns these, however old the files are
    idx.note_session("hb", "beat-2")
    assert idx.prune_old_entries(90) == 0
    assert not any(f.exists() for f in files["cron"])
    assert all(f.exists() for f in files["live"] + files["recent"] + files["other"])


def test_two_processes_hammering_one_root_lose_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "state"
    script = (
        "import sys\n"
        "from token_optimizer.fsutil import resolve_paths\n"
        "from token_optimizer.session_index import SessionIndex\n"
        "tag, n = sys.argv[1], int(sys.argv[2])\n"
        "idx = SessionIndex(resolve_paths(sys.argv[3]))\n"
        "for i in range(n):\n"
        "    idx.touch(f'{tag}-{i}', f'{tag}-sid-{i}')\n"
        "    idx.touch('shared', f'{tag}-{i}')\n"
        "    if i % 50 == 0:\n"
        "        idx.prune_old_entries(90)\n"
        "idx.close()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, tag, "400", str(root)])
             for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    got = SessionIndex(resolve_paths(root)).entries()
    assert {k for k in got if k != "shared"} == {f"{t}-{i}" for t in "ab" for i in range(400)}
    assert got["shared"]["session_id"] in {"a-399", "b-399"}
    # Two processes creating the index at once: neither sets the other's file aside.
    assert not list(root.glob("*.corrupt"))


def test_cli_prune_sticks_while_a_gateway_index_is_open(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "state"
    p = resolve_paths(root)
    now = time.time()
    write_index(p, {"old": entry("s-old", created=now - 400 * DAY, updated=now - 400 * DAY),
                    "new": entry("s-new", created=now, updated=now)})
    gateway = SessionIndex(p)  # the running gateway's index
    gateway.touch("live", "s-live")
    out = subprocess.run(
        [sys.executable, "-m", "token_optimizer", "--home", str(root), "prune", "--json",
         "--max-age-days", "90"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout)["keys"] == ["old"]
    gateway.touch("live", "s-live")
    gateway.touch("another", "s-2")
    gateway.close()
    assert set(SessionIndex(p).entries()) == {"new", "live", "another"}


def test_most_recent_session_id_is_one_query(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    idx = make(paths, clock)
    assert idx.most_recent_session_id() is None  # no index yet: nothing created
    assert not paths.root.exists()
    for i in range(5):
        clock.t += 10
        idx.touch(f"k{i}", f"s{i}")
    clock.t += 10
    idx.touch("k1", "s1")  # refreshed: now the newest
    assert idx.most_recent_session_id() == "s1"
    clock.t += 10
    idx.touch("k9", "s9")
    idx.touch("k8", "s8")  # same second as s9: the one stored last wins, as before
    monkeypatch.setattr(SessionIndex, "entries", lambda self: pytest.fail("loads every entry"))
    assert idx.most_recent_session_id() == "s8"
    idx.touch("k3", "s3", real_message=False)  # a transient mark is not on record
    assert idx.most_recent_session_id() == "s8"
    idx.close()
