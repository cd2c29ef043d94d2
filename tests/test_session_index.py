"""Session index (issue #7; session-bounds.md §3-§5) and its operator config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import session_index as si
from token_optimizer.config import (
    DEFAULT_SESSION_STORE_MAX_AGE_DAYS,
    ENV_SESSION_STORE_MAX_AGE_DAYS,
    Config,
)
from token_optimizer.fsutil import StatePaths, sanitize_checkpoint_id
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
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.session_index.write_text(json.dumps({README_KEY: "x", **entries}))


def entry(sid: str, *, created: float, updated: float, **kw: Any) -> dict[str, Any]:
    return {"session_id": sid, "created_at": iso(created), "updated_at": iso(updated), **kw}


def on_disk(paths: StatePaths) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(paths.session_index.read_text())
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
    before = os.stat(paths.session_index)
    idx = make(paths)
    assert idx.prune_old_entries(days) == 0
    assert idx.prune_candidates(days) == []
    assert "k" in idx.entries()
    after = os.stat(paths.session_index)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert idx.flush_count == 0


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


def test_no_write_when_nothing_removed(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    write_index(paths, {"k": entry("s", created=T0 - 10 * DAY, updated=T0 - 10 * DAY)})
    before = os.stat(paths.session_index)
    idx = make(paths)
    writes: list[Path] = []
    real = si.atomic_write  # type: ignore[attr-defined]

    def spy(p: Path, d: Any, *a: Any, **k: Any) -> None:
        writes.append(p)
        real(p, d, *a, **k)

    monkeypatch.setattr(si, "atomic_write", spy)
    assert idx.prune_old_entries(90) == 0
    assert idx.prune_old_entries(1) == 1  # sanity: the patched writer is the one used
    assert writes == [paths.session_index]
    assert before.st_ino != os.stat(paths.session_index).st_ino


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
    assert oct(paths.session_index.stat().st_mode & 0o777) == "0o600"


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
    idx = make(paths, clock, flush_interval_s=0.0)
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
    real = si.remove_tree_safely  # type: ignore[attr-defined]
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

    monkeypatch.setattr(si, "remove_tree_safely", removing)
    assert idx.prune_old_entries(90) == 2
    assert calls == ["first"]
    assert not (paths.checkpoints / "first").exists()
    assert (paths.checkpoints / "second" / "a.md").exists()
    assert set(after_crash(paths)) == {"k2-new"}  # the revived entry is in the journal
    idx.close()
    assert set(on_disk(paths)) == {README_KEY, "k2-new"}


# ---------------------------------------------------------------- scheduling


def test_maybe_prune_hourly_gate(paths: StatePaths) -> None:
    clock = Clock()
    write_index(paths, {"a": entry("s1", created=T0 - 100 * DAY, updated=T0 - 100 * DAY)})
    idx = make(paths, clock)
    assert idx.maybe_prune(90, now=T0) == 1  # first tick prunes immediately
    # a new expired entry appears (e.g. imported); ticks within the hour do not prune
    idx.touch("b", "s2")
    idx._entries["b"].updated_s = T0 - 100 * DAY
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


def test_readme_is_first_key_and_never_an_entry(paths: StatePaths) -> None:
    idx = make(paths)
    idx.touch("k1", "s1", platform="discord")
    idx.touch("k2", "s2")
    idx.close()
    raw_text = paths.session_index.read_text()
    raw = json.loads(raw_text)
    assert next(iter(raw)) == README_KEY
    assert raw_text.lstrip().startswith('{\n  "_README": ')
    readme = raw[README_KEY]
    assert "routing index" in readme and "NOT the list of all sessions" in readme
    assert "state.db" in readme and "sessions/" in readme
    again = SessionIndex(paths)
    assert set(again.entries()) == {"k1", "k2"}
    assert README_KEY not in again.entries()
    assert again.get(README_KEY) is None
    assert again.entries()["k1"]["platform"] == "discord"
    # a second save keeps exactly one sentinel, first
    again.touch("k3", "s3")
    again.close()
    raw2 = on_disk(paths)
    assert list(raw2) == [README_KEY, "k1", "k2", "k3"]


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
    assert set(after_crash(paths)) == {"k"}  # the journal holds it even over a corrupt index
    idx.close()
    assert (paths.root / "session-index.json.corrupt").read_text() == "{not json"
    assert list(on_disk(paths)) == [README_KEY, "k"]


def test_symlinked_index_is_refused(
    paths: StatePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"evil": entry("x", created=T0, updated=T0)}))
    paths.root.mkdir(parents=True)
    paths.session_index.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)
        assert idx.entries() == {}
        assert idx.touch("k", "s") is None
        idx.close()  # the full write is refused...
    assert set(after_crash(paths)) == {"k"}  # ...but the journal keeps the entry
    assert "evil" in target.read_text() and '"k"' not in target.read_text()
    assert paths.session_index.is_symlink()
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_file_mode_and_atomic_no_temp_left(paths: StatePaths) -> None:
    idx = make(paths)
    idx.touch("k", "s")
    assert journal(paths).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in paths.root.iterdir()] == [si.JOURNAL_NAME]
    idx.close()
    assert paths.session_index.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in paths.root.iterdir()] == ["session-index.json"]


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
    # one real message: exactly one entry, durable at once (one journal line)
    idx.touch("agent:main:web:dm:7", "sid-7")
    assert [r["key"] for r in journal_lines(paths)] == ["agent:main:web:dm:7"]
    assert list(after_crash(paths)) == ["agent:main:web:dm:7"]
    idx.close()
    raw = on_disk(paths)
    assert list(raw) == [README_KEY, "agent:main:web:dm:7"]
    assert raw["agent:main:web:dm:7"]["platform"] == "web"
    assert "persisted" not in raw["agent:main:web:dm:7"]
    assert not any("persist" in k or "pending" in k for k in raw["agent:main:web:dm:7"])
    assert sorted(p.name for p in paths.root.iterdir()) == ["session-index.json"]


def test_pending_marks_are_bounded(paths: StatePaths, small_cap: int) -> None:
    idx = make(paths)
    for i in range(50):
        idx.note_session(f"k{i}", f"s{i}")
    assert idx.pending_count() == small_cap


def test_failed_deferred_write_is_warned_and_retried(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The journal cannot be appended to, so the whole index is written instead,
    # and that fails once too: the entry is retried on the next message.
    idx = make(paths, flush_interval_s=3600)
    real = si.atomic_write  # type: ignore[attr-defined]
    fail = {"n": 1}

    def flaky(p: Path, d: Any, *a: Any, **k: Any) -> None:
        if fail["n"]:
            fail["n"] -= 1
            raise OSError("disk full")
        real(p, d, *a, **k)

    def no_journal(p: Path, d: bytes) -> bool:
        raise OSError("journal disk full")

    monkeypatch.setattr(si, "atomic_write", flaky)
    monkeypatch.setattr(si, "_append_durable", no_journal)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx.touch("k", "s")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("journal disk full" in r.getMessage() for r in warned)
    assert any(
        "session index write" in r.getMessage() and "disk full" in r.getMessage() for r in warned
    )
    assert not paths.session_index.exists()
    idx.touch("k", "s")  # next message retries (despite the long flush interval)
    assert list(on_disk(paths)) == [README_KEY, "k"]


def test_reset_defers_the_write_and_reports_rotation_once(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock, flush_interval_s=3600)
    assert idx.touch("lane", "s1") is None
    first = journal(paths).read_bytes()
    clock.t += 10
    # /new: a session_start with a new id under the same key -> no write yet
    idx.note_session("lane", "s2")
    assert (
        idx.touch("lane", "s2", real_message=False) is None
    )  # already reported? no: first report below
    assert journal(paths).read_bytes() == first
    assert not paths.session_index.exists()
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


# ---------------------------------------------------------------- coalesced writes


def test_touches_are_coalesced(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("k", "s")
    # new entry: one journal line at once, no index rewrite
    assert (idx.flush_count, idx.journal_count) == (0, 1)
    st = os.stat(journal(paths))
    for i in range(1, 500):
        clock.t = T0 + i * 0.05
        idx.touch("k", "s")
    assert (idx.flush_count, idx.journal_count) == (0, 1)
    assert os.stat(journal(paths)).st_size == st.st_size
    assert not paths.session_index.exists()
    assert after_crash(paths)["k"]["updated_at"] == iso(T0)
    clock.t = T0 + 31
    idx.touch("k", "s")
    assert idx.flush_count == 1
    assert on_disk(paths)["k"]["updated_at"] == iso(T0 + 31)
    assert not journal(paths).exists()


def test_crash_loses_only_updated_at_never_an_entry(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("a", "s1")
    clock.t += 5
    idx.touch("a", "s1")
    clock.t += 5
    idx.touch("b", "s2")
    clock.t += 5
    idx.touch("a", "s1")
    # "crash": no close; a new process reads the index and replays the journal
    survivor = SessionIndex(paths, clock=clock)
    assert set(survivor.entries()) == {"a", "b"}
    # updated_at is at most one flush interval stale (the last flush was at T0)
    stale = survivor.entries()["a"]["updated_at"]
    assert iso(clock.t - survivor.flush_interval_s) <= stale <= iso(clock.t)


def test_session_end_and_close_flush(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("k", "s")
    clock.t += 3
    idx.touch("k", "s")
    idx.note_session("other", "o")
    idx.end_session("k")
    assert on_disk(paths)["k"]["updated_at"] == iso(T0 + 3)
    n = idx.flush_count
    idx.close()  # nothing dirty: no write
    assert idx.flush_count == n
    clock.t += 3
    idx.touch("k", "s")
    idx.close()
    assert on_disk(paths)["k"]["updated_at"] == iso(T0 + 6)
    idx.end_session("other")
    assert idx.get("other") is None


def test_tick_flushes_when_due(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("k", "s")
    clock.t += 1
    idx.touch("k", "s")
    idx.tick()
    assert idx.flush_count == 0  # the new entry went to the journal; nothing due yet
    clock.t += 40
    idx.maybe_prune(90)  # hook-driven tick also flushes when due
    assert on_disk(paths)["k"]["updated_at"] == iso(T0 + 1)


def test_heartbeat_does_not_refresh_activity(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("k", "s")
    clock.t += 100 * DAY
    idx.touch("k", "s", real_message=False)
    assert idx.get("k")["updated_at"] == iso(T0)  # type: ignore[index]
    assert idx.prune_old_entries(90) == 1


# ---------------------------------------------------------------- journal (urgent changes)


def test_new_entries_rotation_suspension_survive_a_crash_via_journal(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_index(paths, {"old": entry("o1", created=T0 - DAY, updated=T0 - DAY, note="x")})
    before = paths.session_index.read_bytes()
    writes: list[Path] = []
    real = si.atomic_write  # type: ignore[attr-defined]

    def spy(p: Path, d: Any, *a: Any, **k: Any) -> None:
        writes.append(p)
        real(p, d, *a, **k)

    monkeypatch.setattr(si, "atomic_write", spy)
    clock = Clock()
    idx = make(paths, clock)
    for i in range(50):
        clock.t += 0.1
        idx.touch(f"new-{i}", f"n{i}", platform="discord", agent="ops")
    idx.touch("old", "o2")  # rotation of a loaded entry
    idx.set_suspended("new-3", True)
    idx.touch("new-4", "n4", platform="slack")  # label change
    assert writes == [] and idx.flush_count == 0  # no full rewrite on the message path
    assert idx.journal_count == 53
    assert paths.session_index.read_bytes() == before
    got = after_crash(paths, clock)
    assert list(got) == ["old", *(f"new-{i}" for i in range(50))]
    assert got == idx.entries()
    assert got["old"]["session_id"] == "o2" and got["old"]["note"] == "x"
    assert got["new-3"]["suspended"] is True
    assert got["new-4"]["platform"] == "slack" and got["new-4"]["agent"] == "ops"
    lines = journal_lines(paths)
    assert lines[0] == {"op": "put", "key": "new-0", "entry": idx.entries()["new-0"]}
    assert all(b"\n" not in json.dumps(r).encode() for r in lines)  # one compact line each


def test_recovered_journal_is_absorbed_by_the_next_flush(paths: StatePaths) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("a", "s1")
    idx.touch("b", "s2")
    del idx  # crash
    again = make(paths, clock)
    assert set(again.entries()) == {"a", "b"}
    assert journal(paths).exists()
    again.close()  # the replayed state is written out and the journal removed
    assert set(on_disk(paths)) == {README_KEY, "a", "b"}
    assert not journal(paths).exists()
    assert set(after_crash(paths)) == {"a", "b"}


def test_journal_reset_after_flush_and_replay_is_idempotent(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("a", "s1")
    idx.set_suspended("a", True)
    idx.touch("b", "s2")
    assert len(journal_lines(paths)) == 3
    clock.t += 20
    idx.touch("a", "s1")  # coalesced: only in memory
    idx.end_session()
    assert not journal(paths).exists()  # the flush wrote the index, then dropped the journal
    assert on_disk(paths)["a"]["updated_at"] == iso(T0 + 20)
    # The next urgent change starts a fresh journal.
    idx.touch("c", "s3")
    assert [r["key"] for r in journal_lines(paths)] == ["c"]

    # Crash between the index write and the journal removal: the old lines
    # are replayed over an index that already holds them.
    stale = journal(paths).read_bytes()
    clock.t += 10
    idx.touch("c", "s3")
    idx.flush()
    assert not journal(paths).exists()
    journal(paths).write_bytes(stale)
    got = after_crash(paths, clock)
    assert got == idx.entries()
    assert got["c"]["updated_at"] == iso(T0 + 30)  # not moved back to the line's T0 + 20


def test_torn_last_journal_line_is_skipped_and_appends_continue(
    paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    idx = make(paths, clock)
    idx.touch("a", "s1")
    idx.touch("b", "s2")
    # A crash in the middle of the third append leaves half a line.
    with journal(paths).open("ab") as f:
        f.write(b'{"op":"put","key":"c","entry":{"session_id":"s3","crea')
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        again = make(paths, clock)
    assert set(again.entries()) == {"a", "b"}
    msgs = [r.getMessage() for r in caplog.records]
    assert any("torn last line 3" in m for m in msgs), msgs
    assert all(m.startswith("[token-optimizer] ") for m in msgs)
    # A new line after the torn one stays readable.
    again.touch("d", "s4")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert set(after_crash(paths, clock)) == {"a", "b", "d"}
    assert any("skipping line 3" in r.getMessage() for r in caplog.records)


def test_invalid_journal_lines_are_skipped_with_a_warning(
    paths: StatePaths, caplog: pytest.LogCaptureFixture
) -> None:
    write_index(paths, {"keep": entry("k1", created=T0, updated=T0)})
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


def test_pruned_entry_is_not_resurrected_by_the_journal(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    idx = make(paths, clock, flush_interval_s=1000 * DAY)  # only the prune writes the index
    idx.touch("gone", "s1")
    idx.touch("stays", "s2")
    clock.t += 100 * DAY
    idx.touch("stays", "s2")
    assert idx.prune_old_entries(90) == 1
    assert not journal(paths).exists()  # the prune's full write dropped the journal
    assert set(after_crash(paths, clock)) == {"stays"}

    # Crash between the prune's index write and the journal removal: the
    # journal still has the key's "put", but a "del" line was appended first.
    idx.touch("gone", "s3")
    clock.t += 100 * DAY
    idx.touch("stays", "s2")
    monkeypatch.setattr(idx, "_reset_journal_locked", lambda: None)
    assert idx.prune_old_entries(90) == 1
    assert [(r["op"], r["key"]) for r in journal_lines(paths)] == [("put", "gone"), ("del", "gone")]
    assert set(after_crash(paths, clock)) == {"stays"}
    # ... and a later re-creation of the key is replayed normally.
    idx.touch("gone", "s4")
    assert after_crash(paths, clock)["gone"]["session_id"] == "s4"


def test_prune_of_entries_unknown_to_the_journal_appends_nothing(paths: StatePaths) -> None:
    write_index(paths, {"old": entry("o", created=T0 - 200 * DAY, updated=T0 - 200 * DAY)})
    idx = make(paths)
    assert idx.prune_old_entries(90) == 1
    assert idx.journal_count == 0 and not journal(paths).exists()


def test_symlinked_journal_is_refused(
    paths: StatePaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere.jsonl"
    evil = {"op": "put", "key": "evil", "entry": entry("x", created=T0, updated=T0)}
    target.write_text(json.dumps(evil) + "\n")
    write_index(paths, {"k": entry("s", created=T0, updated=T0)})
    journal(paths).symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)
        assert list(idx.entries()) == ["k"]  # the symlinked journal is ignored
        idx.touch("new", "n1")  # cannot append through it: the whole index is written
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "journal refused" in msgs and "symlink" in msgs
    assert "journal append failed" in msgs
    assert target.read_text() == json.dumps(evil) + "\n"
    assert journal(paths).is_symlink()
    assert set(on_disk(paths)) == {README_KEY, "k", "new"}
    assert set(after_crash(paths)) == {"k", "new"}
    idx.close()
    assert journal(paths).is_symlink()  # never removed or followed
    assert target.read_text() == json.dumps(evil) + "\n"


def test_journal_append_failure_falls_back_to_a_full_write(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = make(paths, flush_interval_s=3600)

    def no_journal(p: Path, d: bytes) -> bool:
        raise OSError("read-only")

    monkeypatch.setattr(si, "_append_durable", no_journal)
    idx.touch("k", "s")
    assert idx.flush_count == 1 and list(on_disk(paths)) == [README_KEY, "k"]


def test_close_journals_what_it_cannot_write(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = make(paths, flush_interval_s=3600)
    real_append = si._append_durable
    state = {"journal_ok": False}

    def flaky_journal(p: Path, d: bytes) -> bool:
        if not state["journal_ok"]:
            raise OSError("journal busy")
        return real_append(p, d)

    def no_index(p: Path, d: Any, *a: Any, **k: Any) -> None:
        raise OSError("index read-only")

    monkeypatch.setattr(si, "_append_durable", flaky_journal)
    monkeypatch.setattr(si, "atomic_write", no_index)
    idx.touch("k", "s")  # neither the journal nor the index could take it
    assert not journal(paths).exists() and not paths.session_index.exists()
    state["journal_ok"] = True
    idx.close()  # the full write fails again; the journal takes the entry
    assert set(after_crash(paths)) == {"k"}


def test_journal_growth_triggers_a_full_write(
    paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(si, "JOURNAL_COMPACT_BYTES", 1000)
    idx = make(paths, flush_interval_s=3600)
    sizes: list[int] = []
    for i in range(60):
        idx.touch(f"k{i}", f"s{i}")
        sizes.append(journal(paths).stat().st_size if journal(paths).exists() else 0)
    # compacted when the journal outgrew max(limit, index size): amortised O(1)
    assert 2 <= idx.flush_count < 10
    index_size = paths.session_index.stat().st_size
    assert max(sizes) < max(1000, index_size) + 200
    assert set(after_crash(paths)) == {f"k{i}" for i in range(60)}


def test_journal_refuses_fifo(paths: StatePaths, caplog: pytest.LogCaptureFixture) -> None:
    paths.root.mkdir(parents=True)
    os.mkfifo(journal(paths))
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        idx = make(paths)  # must not block on the FIFO
        idx.touch("k", "s")
    assert "not a regular file" in " ".join(r.getMessage() for r in caplog.records)
    assert set(on_disk(paths)) == {README_KEY, "k"}


def test_cli_reads_index_plus_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    root = tmp_path / "state"
    p = seed_for_cli(root)
    clock = Clock(time.time() - 150 * DAY)
    idx = SessionIndex(p, clock=clock, flush_interval_s=1e12)
    idx.touch("agent:main:telegram:dm:5", "stale-5")  # expired, only in the journal
    clock.t += 150 * DAY
    idx.touch("agent:main:telegram:dm:4", "journal-4")  # only in the journal
    idx.touch("agent:main:telegram:dm:1", "rotated-1")  # rotation, only in the journal
    del idx  # the gateway died without flushing
    assert set(on_disk(p)) == {README_KEY, *(f"agent:main:telegram:dm:{i}" for i in (1, 2, 3))}

    assert run_cli(["--home", str(root), "sessions", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["session_key"]: r for r in out["sessions"]}
    assert out["count"] == 5
    assert rows["agent:main:telegram:dm:4"]["session_id"] == "journal-4"
    assert rows["agent:main:telegram:dm:1"]["session_id"] == "rotated-1"
    assert journal(p).exists()  # listing writes nothing

    assert run_cli(["--home", str(root), "prune", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["keys"]) == ["agent:main:telegram:dm:2", "agent:main:telegram:dm:5"]
    assert journal(p).exists()

    assert run_cli(["--home", str(root), "prune", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["removed"] == 2 and out["remaining"] == 3
    assert not journal(p).exists()
    assert set(on_disk(p)) == {
        README_KEY,
        "agent:main:telegram:dm:1",
        "agent:main:telegram:dm:3",
        "agent:main:telegram:dm:4",
    }
    assert on_disk(p)["agent:main:telegram:dm:1"]["session_id"] == "rotated-1"
    assert set(after_crash(p)) == {f"agent:main:telegram:dm:{i}" for i in (1, 3, 4)}


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
    si.register_cli(sub)
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
    assert out["count"] == 3 and out["index"] == str(p.session_index)
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
    before = p.session_index.read_bytes()
    assert run_cli(["--home", str(root), "prune", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["dry_run"] is True
        and out["removed"] == 1
        and out["keys"] == ["agent:main:telegram:dm:2"]
    )
    assert p.session_index.read_bytes() == before
    assert (p.checkpoints / "stale-2").exists()

    assert run_cli(["--home", str(root), "prune", "--max-age-days", "200"]) == 0
    assert "Pruned 0 of 3" in capsys.readouterr().out
    assert p.session_index.read_bytes() == before

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
