"""Safe at scale (issue 11): hostile state roots, torn logs, kill -9 during capture,
several processes on one state root, and a bound for every file the plugin writes."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import fsutil, jsutil
from token_optimizer.checkpoints import CheckpointStore
from token_optimizer.fsutil import StatePaths, resolve_paths
from token_optimizer.hosts.openclaw_events import handle
from token_optimizer.models import Message
from token_optimizer.policy import CheckpointPolicy, PolicySettings, Snapshot
from token_optimizer.read_cache import DECISIONS_MAX_BYTES, HINT_SERVES_MAX_ENTRIES, ReadCache
from token_optimizer.runtime import TokenOptimizer
from token_optimizer.telemetry import Telemetry

NO_COOLDOWN = PolicySettings(checkpoint_cooldown_ms=0, evaluation_cooldown_ms=0, telemetry=True)
DAY_MS = 86_400_000


def ctx(sid: str, agent: str = "main") -> dict[str, Any]:
    return {"sessionId": sid, "sessionKey": f"agent:{agent}:{sid}", "agentId": agent, "trigger": "user"}


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Corrupt-file warnings are once per damage per process: start each test clean."""
    fsutil._warned.clear()
    yield
    fsutil._warned.clear()


# ---------------------------------------------------------------- inotify: proof of no access


class _Inotify:
    """Every open, read, write, create, delete or attribute change below ``base`` (Linux)."""

    MASK = (0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800)

    def __init__(self, base: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._libc = libc
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            pytest.skip("inotify unavailable")
        self.watches: dict[int, Path] = {}
        dirs = [dirpath for dirpath, _dirs, _files in os.walk(base)]  # walk first: no events of ours
        for dirpath in dirs:
            wd = libc.inotify_add_watch(self.fd, os.fsencode(dirpath), self.MASK)
            assert wd >= 0
            self.watches[wd] = Path(dirpath)

    def events(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(buf):
                wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16:i + 16 + length].rstrip(b"\0").decode()
                out.append(f"{self.watches.get(wd)}/{name} mask={mask:#x}")
                i += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def _plant_outside(outside: Path) -> None:
    """Victims the reference deleted or followed (issue 11, item 1), plus one per file kind."""
    (outside / "decisions").mkdir(parents=True)
    for name in ("main-victim.json", "default-victim.json", "anything-victim.json", "unknown-victim.json"):
        (outside / name).write_text("{not json")
    (outside / "decisions" / "victim.jsonl").write_text('{"keep":1}\n')
    (outside / "hint-serves-victim.json").write_text("{not json")
    (outside / "config.json").write_text('{"read_cache_mode":"block"}')
    (outside / "victim.jsonl").write_text('{"keep":1}\n')
    (outside / "policy-state.json").write_text("{not json")
    (outside / "manifest.jsonl").write_text("{torn")
    (outside / "file.md").write_text("secret")


_LEVELS = ["checkpoints", "read-cache", "read-cache/decisions", "checkpoints/victim",
           "file:read-cache/main-victim.json", "file:read-cache/hint-serves-victim.json",
           "file:read-cache/decisions/victim.jsonl", "file:read-cache/config.json",
           "file:checkpoints/victim/manifest.jsonl", "file:checkpoints/victim/policy-state.json",
           "file:checkpoints/checkpoint-events.jsonl", "file:savings-events.jsonl",
           "file:compression-events.jsonl", "file:v5-features.json"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")
@pytest.mark.parametrize("level", _LEVELS)
def test_planted_symlink_at_any_level_gives_no_access_outside(paths: StatePaths, tmp_path: Path,
                                                             level: str) -> None:
    outside = tmp_path / "outside"
    _plant_outside(outside)
    work = tmp_path / "work"
    work.mkdir()
    src = work / "a.py"
    src.write_text("def f():\n    return 1\n")
    (paths.read_cache / "decisions").mkdir(parents=True)
    (paths.checkpoints / "victim").mkdir(parents=True)
    rel = level.removeprefix("file:")
    link = paths.root / rel
    if link.is_dir():
        shutil.rmtree(link)
    target = outside / Path(rel).name if level.startswith("file:") else outside
    if level.startswith("file:") and not target.exists():
        target = outside / "victim.jsonl"
    link.symlink_to(target)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.rglob("*") if p.is_file()}

    watch = _Inotify(outside)
    try:
        rt = TokenOptimizer(paths.root, settings=NO_COOLDOWN, cwd=str(work))
        handle(rt, "gateway_start", {}, {})
        for sid in ("victim", "other"):
            c = ctx(sid)
            handle(rt, "llm_output", {"model": "gpt-4o", "usage": {"input": 150_000, "output": 10}}, c)
            handle(rt, "agent_turn_prepare", {"prompt": "go on"}, c)
            for _ in range(3):
                handle(rt, "before_tool_call", {"toolName": "Read", "params": {"file_path": str(src)}}, c)
            handle(rt, "after_tool_call", {"toolName": "Write", "params": {"file_path": str(src)}}, c)
            handle(rt, "before_tool_call", {"toolName": "Task", "params": {}}, c)
            rt.read_cache.record_hint_serve(sid, [str(src)])
            rt.read_cache.flush()  # written now, while read-cache/ is still planted
            handle(rt, "before_compaction", {"messageCount": 3}, c)
            handle(rt, "after_compaction", {"messageCount": 3, "compactedCount": 1}, c)
            handle(rt, "session_end", {}, c)
        rt.telemetry.set_v5("delta_read", True)
        rt.policy.health()
        rt.policy.telemetry_summary(7)
        rt.store.restore("victim")
        rt.read_cache.active_read_tokens("main", "victim")
        handle(rt, "gateway_stop", {}, {})
        rt.close()
        events = watch.events()
    finally:
        watch.close()
    assert events == [], f"access outside the state root through {level}: {events[:5]}"
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outside.rglob("*") if p.is_file()}
    assert after == before
    # the planted link itself may be unlinked (a compaction clears the session's files); never followed
    assert not os.path.islink(link) or os.readlink(link) == str(target)


def test_read_cache_symlink_deletes_nothing_through_every_entry(paths: StatePaths, tmp_path: Path) -> None:
    """The probe's exact case: read-cache -> outside, invalid JSON victims (issue 11, item 1)."""
    outside = tmp_path / "outside"
    _plant_outside(outside)
    paths.root.mkdir(parents=True)
    paths.read_cache.symlink_to(outside)
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    src = tmp_path / "x.py"
    src.write_text("x = 1\n")
    assert rc.before_read(str(src), None, None, "main", "victim") is None
    rc.after_write(str(src), "main", "victim")
    rc.clear_cache("main", "victim")
    rc.clear_cache("anything", "victim")
    assert rc.claim_hint_follow("victim", str(src)) is False
    assert rc.active_read_tokens("main", "victim") == 0
    assert rc.enabled() and rc.mode() == "warn"  # config.json behind the link is not read
    assert sorted(p.name for p in outside.iterdir()) == sorted(
        ["decisions", "main-victim.json", "default-victim.json", "anything-victim.json",
         "unknown-victim.json", "hint-serves-victim.json", "config.json", "victim.jsonl",
         "policy-state.json", "manifest.jsonl", "file.md"])
    assert (outside / "decisions" / "victim.jsonl").read_text() == '{"keep":1}\n'
    assert (outside / "main-victim.json").read_text() == "{not json"


def test_checked_dir_refuses_symlink_levels_and_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (root / "link").symlink_to(tmp_path / "out")
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.open_checked_dir(root, root / "link" / "x", create=True)
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.open_checked_dir(root, tmp_path / "out")
    with fsutil.open_checked_dir(root, root / "a") as d:
        for bad in ("", ".", "..", "x/y", "x\0"):
            with pytest.raises(fsutil.UnsafePathError):
                d.write(bad, "x")
        os.mkfifo(root / "a" / "fifo")
        with pytest.raises(fsutil.UnsafePathError):
            d.read_text("fifo")  # refused, and the open does not hang
    (tmp_path / "rootlink").symlink_to(root)
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.open_checked_dir(tmp_path / "rootlink", tmp_path / "rootlink" / "a")


# ---------------------------------------------------------------- torn last lines (item 3)


def _row(i: int) -> str:
    return jsutil.dumps_compact({"timestamp": jsutil.iso_now(), "event_type": "hint_followed",
                                 "tokens_saved": i, "session_id": f"s{i}", "detail": "x" * 20})


def _corruptions(row: str) -> Iterator[tuple[str, bytes]]:
    good = (_row(1) + "\n").encode()
    last = (row + "\n").encode()
    for cut in range(len(last)):  # every truncation of the last row, incl. its lost newline
        yield f"cut{cut}", good + last[:cut]
    yield "garbage", good + b"%%% not json at all"
    yield "garbage-line", good + b"garbage\n"
    yield "nul-tail", good + b"\0" * 64
    yield "nul-line", good + b"\0\0\0\0\n"
    yield "non-object", good + b"[1,2,3]"
    yield "bad-utf8", good + b'{"a":"\xff\xfe'


def _bad_lines(data: bytes) -> int:
    n = 0
    for raw in data.split(b"\n"):
        s = jsutil.js_trim(raw.decode("utf-8", "replace"))
        if not s:
            continue
        try:
            ok = isinstance(jsutil.loads(s), dict)
        except ValueError:
            ok = False
        n += not ok
    return n


def _warnings(caplog: pytest.LogCaptureFixture, name: str) -> int:
    return sum(1 for r in caplog.records
               if r.levelno == logging.WARNING and "unreadable line" in r.getMessage() and name in r.getMessage())


@pytest.mark.slow
def test_append_after_any_torn_last_line_stays_readable_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cases = list(_corruptions(_row(2)))
    assert len(cases) > 100
    warned_cases = 0
    for i, (label, damaged) in enumerate(cases):
        paths = resolve_paths(tmp_path / f"r{i}")
        paths.root.mkdir(parents=True)
        paths.savings_log.write_bytes(damaged)
        tel = Telemetry(paths)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="token_optimizer"):
            tel.log_savings_event("checkpoint_restore", 777, "new-session", "after damage")
            rows = fsutil.read_jsonl(paths.savings_log, root=paths.root)
            fsutil.read_jsonl(paths.savings_log, root=paths.root)  # a second read: no second warning
        assert rows[-1]["session_id"] == "new-session", label
        assert rows[0]["session_id"] == "s1", label
        expected = 1 if _bad_lines(damaged) else 0
        assert _warnings(caplog, str(paths.savings_log)) == expected, (label, caplog.text)
        warned_cases += expected
        assert paths.savings_log.read_bytes().endswith(b"\n")
    assert warned_cases >= len(cases) - 3  # only cut 0 / the lost newline / complete row are clean


def test_manifest_row_after_torn_line_is_registered_and_restored(
        paths: StatePaths, caplog: pytest.LogCaptureFixture) -> None:
    policy = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=0, telemetry=True))
    store = CheckpointStore(paths, policy)
    first = store.capture("s", [Message("user", "first request")], trigger="progressive-20")
    assert first is not None
    manifest = paths.checkpoints / "s" / "manifest.jsonl"
    events = paths.checkpoints / "checkpoint-events.jsonl"
    for f in (manifest, events):
        data = f.read_bytes()
        f.write_bytes(data[:-7])  # tear the last row and its newline
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        second = store.capture("s", [Message("user", "second request")], trigger="progressive-50")
        assert second is not None and not second.deduplicated
        files = policy.checkpoint_files("s")
        summary = policy.telemetry_summary(7)
        policy.checkpoint_files("s")
        assert store.restore("s") is not None
    assert [f.trigger for f in files] == ["progressive-50"]  # the torn first row is skipped
    assert summary["totalEvents"] == 1 and summary["lastEvent"]["trigger"] == "progressive-50"
    assert _warnings(caplog, str(manifest)) == 1
    assert _warnings(caplog, str(events)) == 1


@pytest.mark.parametrize("damage", [b"", b"\0\0\0\0", b'{"ts":1,"decis', b"junk\n"])
def test_decisions_and_compression_logs_after_damage(paths: StatePaths, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture, damage: bytes) -> None:
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    src = tmp_path / "y.py"
    src.write_text("y = 2\n")
    rc.before_read(str(src), None, None, "main", "d1")
    dec = paths.decisions / "d1.jsonl"
    comp = paths.compression_log
    comp.write_bytes(b'{"timestamp":"' + jsutil.iso_now().encode() + b'","feature":"delta_read"}\n' + damage)
    with dec.open("ab") as fh:
        fh.write(damage)
    rc.before_read(str(src), None, None, "main", "d1")
    rc.telemetry.log_compression_event("structure_map", "d1")
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        rows = fsutil.read_jsonl(dec, root=paths.root)
        recent = rc.telemetry.read_recent_events(1)
        rc.telemetry.read_recent_events(1)
    assert [r["reason"] for r in rows] == ["first_read", "redundant_read_2"]
    assert [r["feature"] for r in recent] == ["delta_read", "structure_map", "structure_map"]
    bad = 1 if damage.strip(b"\n") else 0
    assert _warnings(caplog, str(dec)) == bad
    assert _warnings(caplog, str(comp)) == bad


# ---------------------------------------------------------------- kill -9 during capture (item 4)

_SIDS = [f"k{i:03d}" for i in range(120)]
_ONE_SHOTS = 9  # five fill bands and four quality thresholds per session


def _capture_child(root: Path, start: int, w: int) -> None:
    try:
        paths = resolve_paths(root)
        policy = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=0))
        store = CheckpointStore(paths, policy)
        snap = Snapshot(fill_pct=100, quality_score=0, context_window=200_000)
        n = 0
        for i in range(len(_SIDS)):
            sid = _SIDS[(start + i) % len(_SIDS)]
            while (d := policy.decide_snapshot(sid, snap)) is not None:
                n += 1
                store.capture(sid, [Message("user", f"work item {n} of {sid}")], trigger=d.trigger,
                              fill_pct=100, quality_score=0)
                os.write(w, b".")
    finally:
        os._exit(0)


def _session_report(paths: StatePaths, sid: str) -> tuple[list[str], set[str], list[str]]:
    d = paths.checkpoints / sid
    rows = fsutil.read_jsonl(d / "manifest.jsonl", root=paths.root) if (d / "manifest.jsonl").exists() else []
    md = {p.name for p in d.glob("*.md")} if d.exists() else set()
    tmps = [p.name for p in d.iterdir() if p.name.endswith(".tmp")] if d.exists() else []
    return [r["trigger"] for r in rows], md | {f"row:{r['filename']}" for r in rows}, tmps


@pytest.mark.slow
def test_sigkill_during_capture_is_exactly_once(paths: StatePaths) -> None:
    root = paths.root
    rnd = random.Random(11)
    kills = 0
    t0 = time.monotonic()
    it = 0
    while time.monotonic() - t0 < 12 and it < 400:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            _capture_child(root, rnd.randrange(len(_SIDS)), w)
        os.close(w)
        select.select([r], [], [], 2.0)  # let it start capturing
        time.sleep(rnd.uniform(0.0, 0.02))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        kills += os.WIFSIGNALED(status)
        os.close(r)
        it += 1
    temps_before = sum(len(_session_report(paths, s)[2]) for s in _SIDS)
    unrecorded = 0
    for sid in _SIDS:
        sf = paths.checkpoints / sid / "policy-state.json"
        if not sf.exists():
            continue
        doc = json.loads(sf.read_text())
        recorded = {f"progressive-{b}" for b in doc["capturedFillBands"]} | {
            f"quality-{q}" for q in doc["capturedQualityThresholds"]}
        unrecorded += len(set(_session_report(paths, sid)[0]) - recorded)
    # a fresh process: start-up cleanup, then capture everything still missing
    rt = TokenOptimizer(root, settings=PolicySettings(checkpoint_cooldown_ms=0))
    rt.gateway_start()
    assert rt.wait_for_sweep()  # start-up housekeeping runs off the hook's path
    for sid in _SIDS:
        triggers, names, tmps = _session_report(paths, sid)
        assert tmps == [], (sid, tmps)
        assert len(triggers) == len(set(triggers)), (sid, triggers)  # no trigger captured twice
        md = {n for n in names if not n.startswith("row:")}
        assert {f"row:{n}" for n in md} == names - md, sid  # every .md registered, every row's file there
        for n in md:
            text = (paths.checkpoints / sid / n).read_text()
            assert text.startswith("# Session Checkpoint") and text.endswith("\n"), (sid, n)
    store = rt.store
    snap = Snapshot(fill_pct=100, quality_score=0, context_window=200_000)
    for sid in _SIDS:
        while (d := rt.policy.decide_snapshot(sid, snap)) is not None:
            store.capture(sid, [Message("user", f"final {sid} {d.trigger}")], trigger=d.trigger)
        triggers, _names, _tmps = _session_report(paths, sid)
        assert sorted(triggers) == sorted(set(triggers)) and len(triggers) == _ONE_SHOTS, (sid, triggers)
    assert kills >= 100
    assert temps_before > 0  # kills landed inside artifact or state writes
    print(f"\nkills={kills} temps_left_by_kills={temps_before} rows_unrecorded_at_kill={unrecorded}")
    assert time.monotonic() - t0 < 25


def test_startup_cleanup_rolls_committed_artifact_forward_and_keeps_live_temps(paths: StatePaths) -> None:
    policy = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=0))
    store = CheckpointStore(paths, policy)
    res = store.capture("s", [Message("user", "hello there")], trigger="progressive-20")
    assert res is not None
    d = paths.checkpoints / "s"
    # simulate a kill after the manifest row, before the rename, by a dead process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    body = res.path.read_text()
    res.path.unlink()
    committed = d / f".{res.path.name}.{dead.pid}.0badf00d.tmp"
    committed.write_text(body)
    orphan = d / f".2026-01-01T00-00-00-000Z-compact.md.{dead.pid}.00000000.tmp"
    orphan.write_text("half")
    state_tmp = d / f".policy-state.json.{dead.pid}.12345678.tmp"
    state_tmp.write_text("{")
    live = d / f".policy-state.json.{os.getpid()}.abcdef01.tmp"  # a writer of this (live) process
    live.write_text("{")
    old_live = d / f".policy-state.json.{os.getpid()}.abcdef02.tmp"
    old_live.write_text("{")
    old = time.time() - 120
    os.utime(old_live, (old, old))
    rc_tmp = paths.read_cache / f".main-s.json.{dead.pid}.deadbeef.tmp"
    rc_tmp.parent.mkdir(parents=True)
    rc_tmp.write_text("{")
    root_tmp = paths.root / f".v5-features.json.{dead.pid}.deadbeef.tmp"
    root_tmp.write_text("{")
    rt = TokenOptimizer(paths.root)
    rt.gateway_start()
    assert rt.wait_for_sweep()  # start-up housekeeping runs off the hook's path
    assert res.path.read_text() == body  # rolled forward: restorable again
    assert rt.store.restore("s") == body
    for gone in (committed, orphan, state_tmp, old_live, rc_tmp, root_tmp):
        assert not gone.exists(), gone
    assert live.exists()


# ---------------------------------------------------------------- two processes, one root (item 9)

_HAMMER = textwrap.dedent("""
    import sys, time
    from token_optimizer.fsutil import resolve_paths
    from token_optimizer.policy import CheckpointPolicy, PolicySettings
    from token_optimizer.checkpoints import CheckpointStore
    from token_optimizer.models import Message
    from token_optimizer.telemetry import Telemetry
    root, who, bands, rounds = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
    paths = resolve_paths(root)
    policy = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=0, durable=False))
    store = CheckpointStore(paths, policy)
    tel = Telemetry(paths)
    while time.time() < float(sys.argv[5]):
        time.sleep(0.001)
    for r in range(rounds):
        for s in range(8):
            sid = f"shared-{s}"
            policy.register_write_event(sid, f"/{who}/{r}/{s}")
            policy.record_decision(sid, bands[r % len(bands)])
            policy.record_decision(sid, "milestone-edit-batch")
            if r % 5 == 0:
                store.capture(sid, [Message("user", f"{who} {r} {s}")], trigger=f"compact")
            tel.log_savings_event("hint_followed", 1, sid, f"{who}-{r}-{s}")
            policy.clear_state(sid)  # next round rehydrates: memory never hides a lost update
""")


@pytest.mark.slow
def test_two_processes_hammering_one_root_lose_nothing(paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    rounds = 40
    plan = {"A": "progressive-20,progressive-50,progressive-80,quality-80,milestone-pre-fanout",
            "B": "progressive-35,progressive-65,quality-70,quality-50,quality-40"}
    go = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _HAMMER, str(paths.root), who, bands, str(rounds),
                               str(go)], stderr=subprocess.PIPE) for who, bands in plan.items()]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    fresh = CheckpointPolicy(paths, PolicySettings())
    for s in range(8):
        sid = f"shared-{s}"
        doc = json.loads((paths.checkpoints / sid / "policy-state.json").read_text())
        assert list(doc) == ["capturedFillBands", "capturedQualityThresholds", "capturedMilestones",
                             "lastCheckpointAt", "lastEvaluatedAt", "editWriteCount", "editedFiles",
                             "editBatchMarkerWrites", "editBatchMarkerFiles"]
        assert sorted(doc["capturedFillBands"]) == [20, 35, 50, 65, 80]
        assert sorted(doc["capturedQualityThresholds"]) == [40, 50, 70, 80]
        assert doc["capturedMilestones"] == ["pre-fanout"]
        assert len(doc["editedFiles"]) == 2 * rounds  # every write event of both processes
        rows = fsutil.read_jsonl(paths.checkpoints / sid / "manifest.jsonl", root=paths.root)
        assert len(rows) == 2 * (rounds // 5)
        assert all((paths.checkpoints / sid / r["filename"]).exists() for r in rows)
        st = fresh.get_state(sid)
        assert set(st.captured_fill_bands) == {20, 35, 50, 65, 80}
    savings = fsutil.read_jsonl(paths.savings_log, root=paths.root)
    assert len(savings) == 2 * rounds * 8
    assert len({r["detail"] for r in savings}) == len(savings)


def test_merge_keeps_single_process_output_identical_to_reference(paths: StatePaths) -> None:
    p = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=0))
    p.record_decision("m", "progressive-65", 1_795_255_727_306)
    p.record_decision("m", "progressive-20", 1_795_255_727_000)  # an earlier clock is written as is
    doc = (paths.checkpoints / "m" / "policy-state.json").read_text()
    assert doc == ('{\n  "capturedFillBands": [\n    65,\n    20\n  ],\n  "capturedQualityThresholds": [],\n'
                   '  "capturedMilestones": [],\n  "lastCheckpointAt": 1795255727000,\n  "lastEvaluatedAt": 0,\n'
                   '  "editWriteCount": 0,\n  "editedFiles": [],\n  "editBatchMarkerWrites": 0,\n'
                   '  "editBatchMarkerFiles": 0\n}')
    # another process added a band meanwhile: merged, in the file's order first
    other = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=0))
    other.record_decision("m", "quality-70", 1_795_255_728_000)
    p.record_decision("m", "progressive-80", 1_795_255_729_000)
    doc2 = json.loads((paths.checkpoints / "m" / "policy-state.json").read_text())
    assert doc2["capturedFillBands"] == [65, 20, 80]
    assert doc2["capturedQualityThresholds"] == [70]
    assert doc2["lastCheckpointAt"] == 1_795_255_729_000


def test_fresh_process_counts_a_manifest_row_without_decision_as_captured(paths: StatePaths) -> None:
    policy = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=90_000))
    store = CheckpointStore(paths, policy)
    assert store.capture("c", [Message("user", "a")], trigger="progressive-50") is not None
    # the kill landed after the manifest row, before the decision reached policy-state.json
    (paths.checkpoints / "c" / "policy-state.json").unlink()
    fresh = CheckpointPolicy(paths, PolicySettings(checkpoint_cooldown_ms=90_000))
    st = fresh.get_state("c")
    assert 50 in st.captured_fill_bands and st.last_checkpoint_at > 0
    now = st.last_checkpoint_at + 100_000  # past the cooldown
    d = fresh.decide_snapshot("c", Snapshot(fill_pct=55, quality_score=95, context_window=200_000), now)
    assert d is not None and d.trigger == "progressive-35"  # not 50 again


# ---------------------------------------------------------------- a bound for every file (item 7)


def _iso_days_ago(days: float) -> str:
    return jsutil.iso_from_ms(jsutil.now_ms() - days * DAY_MS)


def test_savings_log_pruned_by_age_and_size_at_gateway_start(paths: StatePaths) -> None:
    paths.root.mkdir(parents=True)
    rows = [{"timestamp": _iso_days_ago(100), "event_type": "old", "tokens_saved": 1, "session_id": "a",
             "detail": None},
            {"timestamp": _iso_days_ago(89), "event_type": "kept", "tokens_saved": 2, "session_id": "b",
             "detail": None}]
    paths.savings_log.write_text("".join(jsutil.dumps_compact(r) + "\n" for r in rows) + "torn{")
    rt = TokenOptimizer(paths.root)
    rt.gateway_start()
    assert rt.wait_for_sweep()  # start-up housekeeping runs off the hook's path
    kept = [json.loads(x) for x in paths.savings_log.read_text().splitlines()]
    assert [r["event_type"] for r in kept] == ["kept"]
    assert paths.savings_log.read_text() == jsutil.dumps_compact(rows[1]) + "\n"  # byte-identical rows
    # size cap: only the newest rows that fit
    tel = Telemetry(paths)
    for i in range(400):
        tel.log_savings_event("hint_followed", i, "s", f"row {i}")
    assert tel.prune_savings_events(max_bytes=10_000) > 0
    size = paths.savings_log.stat().st_size
    left = [json.loads(x) for x in paths.savings_log.read_text().splitlines()]
    assert size <= 10_000 and left[-1]["detail"] == "row 399"
    assert [r["tokens_saved"] for r in left] == list(range(400 - len(left), 400))


def test_checkpoint_events_and_compression_logs_are_bounded(paths: StatePaths) -> None:
    policy = CheckpointPolicy(paths, PolicySettings(telemetry=True))
    paths.checkpoints.mkdir(parents=True)
    ev = paths.checkpoints / "checkpoint-events.jsonl"
    ev.write_text(json.dumps({"timestamp": _iso_days_ago(91), "trigger": "compact"}) + "\n")
    policy.register_capture("e", "compact", {})
    tel = Telemetry(paths)
    paths.compression_log.write_text(json.dumps({"timestamp": _iso_days_ago(95), "feature": "x"}) + "\n")
    for _ in range(50):
        tel.log_compression_event("delta_read", "s", "d" * 150, "a b c", "a")
    rt0 = TokenOptimizer(paths.root)
    rt0.gateway_start()
    assert rt0.wait_for_sweep()
    assert [json.loads(x)["trigger"] for x in ev.read_text().splitlines()] == ["compact"]
    assert policy.telemetry_summary(365)["totalEvents"] == 1
    assert len(tel.read_recent_events(365)) == 50
    assert tel.prune_old_events(max_bytes=2_000) > 0
    assert paths.compression_log.stat().st_size <= 2_000


def test_decisions_log_and_hint_sidecar_have_a_size_cap(paths: StatePaths, tmp_path: Path) -> None:
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    src = tmp_path / "z.py"
    src.write_text("z = 3\n")
    dec = paths.decisions / "big.jsonl"
    dec.parent.mkdir(parents=True)
    filler = jsutil.dumps_compact({"ts": 1, "decision": "warn", "file": "/f" * 100, "reason": "r",
                                   "session": "big"}) + "\n"
    dec.write_text(filler * (DECISIONS_MAX_BYTES // len(filler)))
    rc.before_read(str(src), None, None, "main", "big")
    size = dec.stat().st_size
    assert size <= DECISIONS_MAX_BYTES // 2
    rows = fsutil.read_jsonl(dec, root=paths.root)
    assert rows[-1]["reason"] == "first_read"  # the newest row survives the trim
    for i in range(0, HINT_SERVES_MAX_ENTRIES + 100, 25):
        rc.record_hint_serve("big", [f"/p/{i + j}" for j in range(25)])
    rc.flush()
    serves = json.loads((paths.read_cache / "hint-serves-big.json").read_text())
    assert len(serves) == HINT_SERVES_MAX_ENTRIES
    assert "/p/0" not in serves and f"/p/{HINT_SERVES_MAX_ENTRIES + 99}" in serves


def test_v5_state_stays_small(paths: StatePaths) -> None:
    tel = Telemetry(paths)
    for i in range(200):
        tel.set_v5("delta_read", i % 2 == 0)
        tel.set_v5("structure_map_beta", i % 3 == 0)
        tel.mark_welcome_seen()
    assert paths.v5_features.stat().st_size < 200
    # the read-cache file's 500-entry cap: test_read_cache.py::test_trim_to_500_entries_by_last_access


def test_checked_dir_levels_memo_is_lexical_only(tmp_path: Path) -> None:
    """The memo of (root, path) → names never skips the on-disk check: a level swapped for a
    symlink after a first successful open is refused on the next call; bad pairs keep failing."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    with fsutil.open_checked_dir(root, root / "a" / "b"):
        pass
    shutil.rmtree(root / "a")
    (root / "a").symlink_to(outside)
    for _ in range(2):
        with pytest.raises(fsutil.UnsafePathError):
            fsutil.open_checked_dir(root, root / "a" / "b")
        with pytest.raises(fsutil.UnsafePathError):
            fsutil.open_checked_dir(root, tmp_path / "elsewhere")
