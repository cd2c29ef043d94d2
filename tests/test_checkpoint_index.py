"""The SQLite checkpoint index behind continuity's candidate discovery (issue 11, item 5)."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from token_optimizer import checkpoint_index as ci
from token_optimizer.checkpoint_index import CheckpointIndex
from token_optimizer.continuity import Continuity
from token_optimizer.fsutil import StatePaths, safe_file
from token_optimizer.jsutil import iso_from_ms, now_ms, parse_iso_ms

DAY = 86_400_000


def write(paths: StatePaths, sid: str, *, age_ms: float = 3_600_000, name: str | None = None,
          trigger: str = "compact", body: str = "x") -> Path:
    d = paths.checkpoints / sid
    d.mkdir(parents=True, exist_ok=True)
    iso = iso_from_ms(now_ms() - age_ms)
    f = d / (name or f"{iso.replace(':', '-').replace('.', '-')}-{trigger}.md")
    f.write_text(body)
    with open(d / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({"file": str(f), "trigger": trigger, "createdAt": iso}) + "\n")
    return f


def scan(paths: StatePaths, days: float) -> list[tuple[str, str, str, float]]:
    """A brute-force reading of analysis.md section 6.4, for comparison."""
    root = Path(os.path.realpath(paths.checkpoints))
    cutoff = now_ms() - days * DAY
    out: list[tuple[str, str, str, float]] = []
    for name in sorted(os.listdir(root)):
        d = root / name
        if d.is_symlink() or not d.is_dir():
            continue
        m = d / "manifest.jsonl"
        if not safe_file(m, d):
            continue
        for line in m.read_text().split("\n"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or not (row.get("file") and row.get("trigger")
                                                 and row.get("createdAt")):
                continue
            ts = parse_iso_ms(row["createdAt"])
            if math.isnan(ts) or ts < cutoff or not safe_file(Path(row["file"]), d):
                continue
            out.append((os.path.realpath(row["file"]), name, row["trigger"], ts))
    out.sort(key=lambda r: -r[3])
    return out


def rows(idx: CheckpointIndex, days: float = 7, limit: int | None = None) -> list[tuple[str, str, str, float]]:
    return [r[:4] for r in idx.newest(days, now_ms(), limit)]


def test_matches_a_full_scan_through_random_changes(paths: StatePaths) -> None:
    rnd = random.Random(7)
    paths.checkpoints.mkdir(parents=True)
    idx = CheckpointIndex(paths)
    sids = [f"s{i}" for i in range(40)]
    for step in range(60):
        sid = rnd.choice(sids)
        action = rnd.random()
        if action < 0.6:
            write(paths, sid, age_ms=rnd.choice([1000, 3_600_000, 3 * DAY, 8 * DAY]),
                  name=f"c{step}.md", trigger=rnd.choice(["compact", "progressive-50"]))
        elif not (paths.checkpoints / sid).exists():
            continue
        elif action < 0.8:
            files = sorted((paths.checkpoints / sid).glob("*.md"))
            if files:
                files[0].unlink()  # the 7-day cleanup, or a user
        else:
            with open(paths.checkpoints / sid / "manifest.jsonl", "a") as fh:
                fh.write("{torn")  # a torn line; the next append glues onto it
        # A query finds new directories itself; appends to known ones (written here as
        # another process would) are found by the sweep, which re-checks every directory.
        rows(idx)
        idx.sweep()
        got = rows(idx)
        assert got == scan(paths, 7), step
        assert rows(idx, limit=5) == scan(paths, 7)[:5]


def test_new_session_dirs_are_seen_at_once(paths: StatePaths) -> None:
    idx = CheckpointIndex(paths)
    write(paths, "a")
    assert [r[1] for r in rows(idx)] == ["a"]
    write(paths, "b", age_ms=1000)  # another process, the same millisecond tick
    assert [r[1] for r in rows(idx)] == ["b", "a"]


def test_note_capture_reads_only_the_new_tail(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = CheckpointIndex(paths)
    write(paths, "s", age_ms=5000, name="one.md")
    assert len(rows(idx)) == 1
    reads: list[int] = []
    real = ci._read_from
    monkeypatch.setattr(ci, "_read_from", lambda p, off: reads.append(off) or real(p, off))
    size = (paths.checkpoints / "s" / "manifest.jsonl").stat().st_size
    write(paths, "s", age_ms=1000, name="two.md")
    idx.note_capture("s")
    assert reads == [size]
    assert [Path(r[0]).name for r in rows(idx)] == ["two.md", "one.md"]


def test_two_instances_share_one_index(paths: StatePaths) -> None:
    a, b = CheckpointIndex(paths), CheckpointIndex(paths)
    write(paths, "s1")
    assert len(rows(a)) == 1
    write(paths, "s1", age_ms=10, name="later.md")
    a.note_capture("s1")
    assert next(Path(r[0]).name for r in rows(b)) == "later.md"
    assert b.db_path.exists() and b.db_path == a.db_path


def test_corrupt_index_is_rebuilt_with_one_warning(paths: StatePaths, caplog: pytest.LogCaptureFixture) -> None:
    write(paths, "s1")
    idx = CheckpointIndex(paths)
    assert len(rows(idx)) == 1
    idx.close()
    for suffix in ("-wal", "-shm"):
        Path(str(idx.db_path) + suffix).unlink(missing_ok=True)
    idx.db_path.write_bytes(b"this is not a database" * 100)
    fresh = CheckpointIndex(paths)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert len(rows(fresh)) == 1
        assert len(rows(fresh)) == 1
    warned = [r for r in caplog.records if "checkpoint index" in r.getMessage()]
    assert len(warned) == 1 and "rebuilding" in warned[0].getMessage()
    assert fresh.rebuilds == 1


def test_symlink_at_the_index_path_is_never_followed(paths: StatePaths, tmp_path: Path) -> None:
    write(paths, "s1")
    target = tmp_path / "elsewhere.db"
    target.write_bytes(b"")
    os.symlink(target, paths.root / ci.DB_NAME)
    idx = CheckpointIndex(paths)
    assert len(rows(idx)) == 1  # served from memory
    assert target.read_bytes() == b""


def test_old_rows_of_deleted_files_are_pruned(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    old = write(paths, "s1", age_ms=9 * DAY, name="old.md")
    write(paths, "s1", age_ms=1000, name="new.md")
    idx = CheckpointIndex(paths)
    rows(idx)
    conn = idx._open()
    assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 2
    old.unlink()  # what the 7-day cleanup does; the manifest still lists it
    idx._last_prune = -math.inf
    rows(idx)
    assert [Path(r[0]).name for r in conn.execute("SELECT path FROM checkpoints")] == ["new.md"]
    # A file that still exists is kept: a longer look-back may still ask for it.
    write(paths, "s2", age_ms=20 * DAY, name="kept.md")
    idx._last_prune = -math.inf
    assert [r[1] for r in rows(idx, days=30)] == ["s1", "s2"]


def test_removed_session_dirs_lose_their_rows(paths: StatePaths) -> None:
    write(paths, "gone")
    write(paths, "stays")
    idx = CheckpointIndex(paths)
    assert len(rows(idx)) == 2
    for f in (paths.checkpoints / "gone").iterdir():
        f.unlink()
    (paths.checkpoints / "gone").rmdir()
    assert [r[1] for r in rows(idx)] == ["stays"]
    conn = idx._open()
    assert [r[0] for r in conn.execute("SELECT name FROM dirs")] == ["stays"]


def test_continuity_uses_the_index_after_a_restart(paths: StatePaths) -> None:
    write(paths, "sess-a", body="# Session Checkpoint (v2)\nkeepwarm daemon interval tuning\n")
    Continuity(paths, lambda *a: None).list_all_checkpoints()
    again = Continuity(paths, lambda *a: None)
    out = again.first_turn("tune the keepwarm daemon interval", "new-one", "")
    assert out.kind == "continuity" and out.source == "sess-a"
    assert again.index.listings == 1  # one listing at start-up, nothing re-read


def test_row_read_before_its_file_is_renamed_into_place_is_not_lost(paths: StatePaths) -> None:
    """The store commits a capture by its manifest row, then renames the file into place;
    another thread or process may index the row in between (a race seen under threads)."""
    f = write(paths, "s1", trigger="progressive-20")
    idx = CheckpointIndex(paths)
    assert len(rows(idx)) == 1
    d = paths.checkpoints / "s1"
    iso = iso_from_ms(now_ms() - 1000)
    late = d / "late-progressive-35.md"
    with open(d / "manifest.jsonl", "a") as fh:  # the row first ...
        fh.write(json.dumps({"file": str(late), "trigger": "progressive-35", "createdAt": iso}) + "\n")
    idx.note_capture("s1")  # ... indexed before the file exists
    assert [r[2] for r in rows(idx)] == ["progressive-20"]  # not listed while missing
    late.write_text("y")  # ... then the rename lands
    assert sorted(r[2] for r in rows(idx)) == ["progressive-20", "progressive-35"]
    assert f.exists()


def test_appends_by_other_writers_are_found_by_the_background_sweep(paths: StatePaths) -> None:
    """A query never re-checks known manifests; it starts a background pass at most every
    SWEEP_INTERVAL_S, and that pass re-reads every manifest another writer appended to."""
    write(paths, "a", age_ms=5000, name="one.md")
    write(paths, "b", age_ms=6000, name="old-b.md")
    idx = CheckpointIndex(paths)
    assert len(rows(idx)) == 2  # the first query lists the root and starts a pass
    assert idx.wait_for_sweep(10)
    assert idx.sweeps == 1 and idx._sweeper is not None
    assert idx._sweeper.name == "token-optimizer-index-sweep"
    write(paths, "a", age_ms=1000, name="two.md")  # the TypeScript plugin, say
    write(paths, "b", age_ms=2000, name="new-b.md")
    # not due yet: the query answers from the index and starts nothing
    assert [Path(r[0]).name for r in rows(idx)] == ["one.md", "old-b.md"]
    assert idx.wait_for_sweep(10) and idx.sweeps == 1
    idx._next_sweep = -math.inf  # SWEEP_INTERVAL_S later
    assert len(rows(idx)) == 2
    assert idx.wait_for_sweep(10) and idx.sweeps == 2
    assert [Path(r[0]).name for r in rows(idx)] == ["two.md", "new-b.md", "one.md", "old-b.md"]
    idx.close()


def _settled_index(paths: StatePaths, sessions: list[str]) -> CheckpointIndex:
    """An index over one checkpoint per session, after its first query and pass."""
    for sid in sessions:
        write(paths, sid)
    idx = CheckpointIndex(paths)
    rows(idx)
    assert idx.wait_for_sweep(10)
    return idx


def _spy_lstat(monkeypatch: pytest.MonkeyPatch, on_call: Callable[[object], object]) -> None:
    """Call ``on_call(path)`` before each of this thread's ``lstat``s in the index module (a
    pass of another test's index may still be running on its own thread)."""
    import threading

    real = os.lstat
    me = threading.current_thread()

    def spy(p: object, *a: object, **k: object) -> os.stat_result:
        if threading.current_thread() is me:
            on_call(p)
        return real(p, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(ci.os, "lstat", spy)


def test_query_does_not_lstat_known_manifests(paths: StatePaths,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    idx = _settled_index(paths, [f"s{i:02d}" for i in range(40)])
    seen: list[str] = []
    _spy_lstat(monkeypatch, lambda p: seen.append(str(p)))
    got = rows(idx, limit=3)
    assert len(got) == 3
    # below the root: only the returned files (their validity), never a manifest
    base = os.path.realpath(paths.checkpoints) + os.sep
    assert sorted(p for p in seen if p.startswith(base)) == sorted(r[0] for r in got)
    idx.close()


def test_a_pass_does_not_hold_the_lock_while_it_lstats(paths: StatePaths,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    idx = _settled_index(paths, [f"s{i}" for i in range(5)])
    free: list[bool] = []

    def probe(p: str) -> None:
        if p.endswith("manifest.jsonl"):  # another thread could take the lock now
            t = threading.Thread(target=lambda: free.append(idx._lock.acquire(timeout=1)
                                                            and (idx._lock.release() or True)))
            t.start()
            t.join()

    _spy_lstat(monkeypatch, lambda p: probe(str(p)))
    idx.sweep()
    assert free == [True] * 5
    idx.close()


def test_close_ends_a_background_pass(paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    for i in range(6):
        write(paths, f"s{i}")
    monkeypatch.setattr(ci, "SWEEP_BATCH", 2)
    monkeypatch.setattr(ci, "SWEEP_PAUSE_S", 30.0)  # a pass would take minutes
    monkeypatch.setattr(ci, "SWEEP_START_DELAY_S", 0.0)
    idx = CheckpointIndex(paths)
    rows(idx)
    assert not idx.wait_for_sweep(0.05)
    t0 = time.monotonic()
    idx.close()
    assert time.monotonic() - t0 < 5 and idx.wait_for_sweep(0)
    assert idx.sweeps == 0
    assert len(rows(idx)) == 6  # a closed index opens again on use


def test_a_pass_re_reads_a_manifest_a_failed_index_write_missed(
        paths: StatePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    write(paths, "s", age_ms=5000, name="one.md")
    idx = CheckpointIndex(paths)
    rows(idx)
    assert idx.wait_for_sweep(10)
    write(paths, "s", age_ms=1000, name="two.md")
    def busy(*a: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(idx, "_ingest_dir", busy)
    idx.note_capture("s")  # busy: nothing indexed, nothing raised
    monkeypatch.undo()
    assert [Path(r[0]).name for r in rows(idx)] == ["one.md"]
    idx.sweep()
    assert [Path(r[0]).name for r in rows(idx)] == ["two.md", "one.md"]
    idx.close()
