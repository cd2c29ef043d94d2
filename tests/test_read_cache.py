"""Read cache (runtime.md §6, §2.8-§2.10, §13.4 B)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from token_optimizer import read_cache as rmod
from token_optimizer import telemetry as tmod
from token_optimizer.fsutil import StatePaths
from token_optimizer.read_cache import ReadCache, generate_digest, glob_to_regex
from token_optimizer.telemetry import Telemetry

NOW_MS = 1795255719279
NOW_S = NOW_MS / 1000


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    return p


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    t = [NOW_MS]
    monkeypatch.setattr(rmod, "now_ms", lambda: t[0])
    monkeypatch.setattr(tmod, "now_ms", lambda: t[0])
    monkeypatch.setattr(tmod, "iso_now", lambda: "2026-11-21T10:08:39.277Z")
    return t


@pytest.fixture
def rc(paths: StatePaths, proj: Path, clock: list[int]) -> ReadCache:
    return ReadCache(paths, cwd=lambda: str(proj))


def _write(p: Path, text: str, mtime_ns: int | None = None) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text.encode("utf-8"))
    if mtime_ns is not None:
        os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def _decisions(paths: StatePaths, sess: str) -> list[dict[str, object]]:
    f = paths.decisions / f"{sess}.jsonl"
    if not f.exists():
        return []
    return [json.loads(x) for x in f.read_text().splitlines()]


def _reasons(paths: StatePaths, sess: str) -> list[tuple[object, object]]:
    return [(d["decision"], d["reason"]) for d in _decisions(paths, sess)]


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _disable_delta(paths: StatePaths) -> None:
    Telemetry(paths).set_v5("delta_read", False)


# ---------------------------------------------------------------- redundant reads


def test_second_identical_full_read_warns(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.txt", "hello\n")
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    assert rc.before_read(str(f), 0, 0, "main", "s1") is None
    assert _reasons(paths, "s1") == [("allow", "first_read"), ("warn", "redundant_read_2")]
    entry = json.loads((paths.read_cache / "main-s1.json").read_text())["files"][str(f)]
    assert entry["readCount"] == 2 and entry["digest"] == "2 lines"


def test_second_identical_read_blocks_in_block_mode(rc: ReadCache, paths: StatePaths, proj: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "BLOCK")
    _write(proj / "mod.py", "import os\n\nclass Foo(Base):\n    def bar(self):\n        pass\n")
    assert rc.before_read("mod.py", None, None, "main", "s1") is None
    msg = rc.before_read("mod.py", None, None, "main", "s1")
    assert msg is not None
    lines = msg.split("\n")
    assert lines[0].startswith("[Token Optimizer] ") and "#2" in lines[0]
    assert lines[1].endswith(":") and "mod.py" in lines[1]
    assert lines[2:5] == ["L1: import os", "L3: class Foo", "L4: def bar"]
    assert lines[5] == "" and lines[6]
    msg3 = rc.before_read("mod.py", None, None, "main", "s1")
    assert msg3 is not None and "#3" in msg3.split("\n")[0]
    assert _reasons(paths, "s1")[1:] == [("block", "redundant_read_2"), ("block", "redundant_read_3")]


def test_edit_between_reads_resets(rc: ReadCache, paths: StatePaths, proj: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "block")
    _write(proj / "a.txt", "v1")
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    rc.after_write("a.txt", "main", "s1")
    assert json.loads((paths.read_cache / "main-s1.json").read_text()) == {"files": {}}
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    assert _reasons(paths, "s1") == [("allow", "first_read"), ("allow", "first_read")]


def test_mtime_change_allows_without_delta(rc: ReadCache, paths: StatePaths, proj: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "block")
    _disable_delta(paths)
    f = _write(proj / "a.txt", "v1", 1_700_000_000_000_000_000)
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    _write(f, "v2", 1_700_000_005_000_000_000)
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    assert _reasons(paths, "s1")[-1] == ("allow", "file_modified_or_different_range")
    # within the 1 ms tolerance the mtime counts as unchanged
    os.utime(f, ns=(1_700_000_005_000_500_000, 1_700_000_005_000_500_000))
    assert rc.before_read("a.txt", None, None, "main", "s1") is not None


def test_different_range_allows_then_same_range_is_redundant(rc: ReadCache, paths: StatePaths,
                                                             proj: Path) -> None:
    _write(proj / "a.txt", "x\n" * 50)
    rc.before_read("a.txt", None, None, "main", "s1")
    rc.before_read("a.txt", 10, 5, "main", "s1")
    rc.before_read("a.txt", 10, 5, "main", "s1")
    rc.before_read("a.txt", 0, 0, "main", "s1")
    assert _reasons(paths, "s1") == [
        ("allow", "first_read"),
        ("allow", "file_modified_or_different_range"),
        ("warn", "redundant_read_3"),
        ("allow", "file_modified_or_different_range"),
    ]


def test_missing_file_and_deleted_file(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    assert rc.before_read("nope.txt", None, None, "main", "s1") is None
    assert _decisions(paths, "s1") == []
    assert not (paths.read_cache / "main-s1.json").exists()
    f = _write(proj / "a.txt", "x")
    rc.before_read("a.txt", None, None, "main", "s1")
    f.unlink()
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    assert _reasons(paths, "s1")[-1] == ("allow", "file_changed_or_deleted")
    assert json.loads((paths.read_cache / "main-s1.json").read_text()) == {"files": {}}


def test_directory_gets_failure_digest(rc: ReadCache, paths: StatePaths, proj: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "block")
    (proj / "sub").mkdir()
    rc.before_read("sub", None, None, "main", "s1")
    msg = rc.before_read("sub", None, None, "main", "s1")
    assert msg is not None and "(unable to generate digest)" in msg


# ---------------------------------------------------------------- enable / mode


def test_mode_from_config_when_env_unset(rc: ReadCache, paths: StatePaths, proj: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    paths.read_cache.mkdir(parents=True)
    cfg = paths.read_cache / "config.json"
    cfg.write_text('{"read_cache_mode": "Block"}')
    _write(proj / "a.txt", "x")
    rc.before_read("a.txt", None, None, "main", "s1")
    assert rc.before_read("a.txt", None, None, "main", "s1") is not None
    assert rc.mode() == "block"
    cfg.write_text('{"read_cache_mode": "block "}')  # lower-cased but not trimmed: behaves as warn
    assert rc.mode() == "block "
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    cfg.write_text('{"read_cache_mode": "block"}')
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "")  # a set env var wins, even empty
    assert rc.mode() == ""
    assert rc.before_read("a.txt", None, None, "main", "s1") is None
    monkeypatch.delenv("TOKEN_OPTIMIZER_READ_CACHE_MODE")
    cfg.write_text('{"read_cache_mode": "   "}')
    assert rc.mode() == "warn"
    cfg.write_text("{broken")
    assert rc.mode() == "warn"


def test_enable_switch(rc: ReadCache, paths: StatePaths, proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(proj / "a.txt", "x")
    paths.read_cache.mkdir(parents=True)
    (paths.read_cache / "config.json").write_text('{"read_cache_enabled": false}')
    assert rc.enabled() is False
    rc.before_read("a.txt", None, None, "main", "s1")
    assert not (paths.read_cache / "main-s1.json").exists()
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE", "on")  # a set env var wins over the file
    assert rc.enabled() is True
    # issue 13: the usual false spellings turn it off (the reference took only "0")
    for off in ("false", "OFF", "no", " 0 "):
        monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE", off)
        assert rc.enabled() is False, off
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE", "0")
    (paths.read_cache / "config.json").write_text('{"read_cache_enabled": true}')
    assert rc.enabled() is False
    monkeypatch.delenv("TOKEN_OPTIMIZER_READ_CACHE")
    (paths.read_cache / "config.json").write_text('{"read_cache_enabled": 0}')  # only boolean false
    assert rc.enabled() is True


# ---------------------------------------------------------------- binary / .contextignore


def test_binary_files_pass_untracked(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    _write(proj / "img.PNG", "\x89PNG")
    for _ in range(3):
        assert rc.before_read("img.PNG", None, None, "main", "s1") is None
    assert not (paths.read_cache / "main-s1.json").exists()
    assert _decisions(paths, "s1") == []


def test_contextignore_project_and_global(paths: StatePaths, proj: Path, clock: list[int]) -> None:
    (proj / ".contextignore").write_text("# secrets\n\n  *.env  \n**/node_modules/**\n")
    paths.openclaw_dir.mkdir(parents=True, exist_ok=True)
    (paths.openclaw_dir / ".contextignore").write_text("vendor/**\nsecret?.txt\n")
    rc = ReadCache(paths, cwd=lambda: str(proj))
    msg = rc.before_read("prod.env", None, None, "main", "s:1")  # missing file: still blocked
    assert msg is not None
    first, second = msg.split("\n")
    assert first.startswith("[Token Optimizer] ") and first.endswith(": prod.env")
    assert ".contextignore" in second
    assert rc.before_read(str(proj / "node_modules" / "x" / "i.js"), None, None, "main", "s:1") is not None
    assert rc.before_read("secret1.txt", None, None, "main", "s:1") is not None
    # anchored, segment-aware globs: these pass
    assert rc.before_read("vendor/lib.js", None, None, "main", "s:1") is None  # absolute path doesn't match
    assert rc.before_read("secret12.txt", None, None, "main", "s:1") is None
    assert rc.before_read("a.env.bak", None, None, "main", "s:1") is None
    rows = _decisions(paths, "s1")
    assert [(r["decision"], r["reason"], r["session"]) for r in rows] == [("block", "contextignore", "s:1")] * 3
    assert rows[0]["file"] == str(proj / "prod.env")


def test_contextignore_capped_and_edit_seen(paths: StatePaths, proj: Path, clock: list[int]) -> None:
    (proj / ".contextignore").write_text("\n".join(f"junk{i}" for i in range(200)) + "\n*.env\n")
    rc = ReadCache(paths, cwd=lambda: str(proj))
    assert rc.before_read("x.env", None, None, "main", "s1") is None  # pattern 201 is dropped
    (proj / ".contextignore").write_text("*.txt\n")  # an edit (size and mtime change) is seen
    _write(proj / "a.txt", "x")
    assert rc.before_read("a.txt", None, None, "main", "s1") is not None


def test_contextignore_per_workspace(paths: StatePaths, tmp_path: Path, clock: list[int]) -> None:
    ws_a, ws_b, ws_c = (tmp_path / n for n in ("a", "b", "c"))
    for ws in (ws_a, ws_b, ws_c):
        ws.mkdir()
        _write(ws / "x.env", "A=1")
        _write(ws / "y.log", "log")
    (ws_a / ".contextignore").write_text("*.env\n")
    (ws_b / ".contextignore").write_text("*.log\n")
    current = [ws_a]
    rc = ReadCache(paths, cwd=lambda: str(current[0]))
    assert rc.before_read("x.env", None, None, "main", "sa") is not None
    assert rc.before_read("y.log", None, None, "main", "sa") is None
    current[0] = ws_b  # another session's workspace: its own file, not the first one's
    assert rc.before_read("x.env", None, None, "main", "sb") is None
    assert rc.before_read("y.log", None, None, "main", "sb") is not None
    current[0] = ws_c  # no .contextignore at all
    assert rc.before_read("x.env", None, None, "main", "sc") is None
    assert rc.before_read("y.log", None, None, "main", "sc") is None
    current[0] = ws_a
    assert rc.before_read("x.env", None, None, "main", "sa2") is not None
    assert len(rc._ignore) <= rmod.CONTEXTIGNORE_CACHE_ENTRIES


def test_contextignore_cache_is_bounded(paths: StatePaths, tmp_path: Path, clock: list[int],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rmod, "CONTEXTIGNORE_CACHE_ENTRIES", 3)
    current = [tmp_path]
    rc = ReadCache(paths, cwd=lambda: str(current[0]))
    for i in range(10):
        ws = tmp_path / f"w{i}"
        ws.mkdir()
        (ws / ".contextignore").write_text(f"f{i}.txt\n")
        current[0] = ws
        assert rc.before_read(f"f{i}.txt", None, None, "main", f"s{i}") is not None
    assert len(rc._ignore) == 3


def test_glob_to_regex() -> None:
    assert glob_to_regex("*.env").fullmatch(".env")
    assert glob_to_regex("a.b").fullmatch("a.b") and not glob_to_regex("a.b").fullmatch("axb")
    assert glob_to_regex("src/**/*.ts").fullmatch("src/a/b/c.ts")
    assert not glob_to_regex("src/*.ts").fullmatch("src/a/c.ts")
    assert glob_to_regex("f(1)[2]{3}+$^|").fullmatch("f(1)[2]{3}+$^|")
    assert not glob_to_regex("A.txt").fullmatch("a.txt")


def test_contextignore_blocks_even_when_decision_log_unwritable(paths: StatePaths, proj: Path,
                                                                clock: list[int]) -> None:
    # Deliberate difference: the reference throws when the decisions dir cannot be
    # created, and its wrapper then lets the read through.
    (proj / ".contextignore").write_text("*.env\n")
    paths.read_cache.mkdir(parents=True)
    paths.decisions.write_text("not a directory")
    rc = ReadCache(paths, cwd=lambda: str(proj))
    assert rc.before_read("x.env", None, None, "main", "s1") is not None


# ---------------------------------------------------------------- delta reads


def test_delta_path_blocks_even_in_warn_mode(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.ts", "one\ntwo\nthree\n", 1_700_000_000_000_000_000)
    assert rc.before_read("a.ts", None, None, "main", "s:1") is None
    _write(f, "one\n2\nthree\nfour\n", 1_700_000_010_000_000_000)  # changed by a shell, not a write tool
    msg = rc.before_read("a.ts", 0, 0, "main", "s:1")
    assert msg is not None
    parts = msg.split("\n")
    assert parts[0].startswith("[Token Optimizer] ") and parts[0].endswith("a.ts changed +2/-1")
    assert parts[1] == ""
    assert parts[2:5] == ["- two", "+ 2", "+ four"]
    assert parts[5] == "" and parts[6].startswith("(") and parts[6].endswith(")")
    assert _reasons(paths, "s1")[-1] == ("block", "delta_read_+2/-1")
    row = json.loads(paths.compression_log.read_text().splitlines()[-1])
    assert row["feature"] == "delta_read" and row["session_id"] == "s:1"
    assert row["command_pattern"] == "Read:a.ts" and row["detail"] == "delta +2/-1"
    assert row["quality_preserved"] == 1 and row["verified"] == 0
    entry = json.loads((paths.read_cache / "main-s1.json").read_text())["files"][str(f)]
    assert entry["readCount"] == 2 and entry["mtime"] == 1_700_000_010.0
    # the next unchanged read is an ordinary redundant read
    assert rc.before_read("a.ts", None, None, "main", "s:1") is None
    assert _reasons(paths, "s1")[-1] == ("warn", "redundant_read_3")


def test_delta_touch_only_blocks_with_no_change(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.txt", "same", 1_700_000_000_000_000_000)
    rc.before_read("a.txt", None, None, "main", "s1")
    os.utime(f, ns=(1_700_000_001_000_000_000,) * 2)
    msg = rc.before_read("a.txt", None, None, "main", "s1")
    assert msg is not None and "changed +0/-0" in msg and "(no change)" in msg


def test_delta_off_or_session_scoped(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.txt", "v1", 1_700_000_000_000_000_000)
    rc.before_read("a.txt", None, None, "main", "s1")
    _write(f, "v2", 1_700_000_001_000_000_000)
    # another session never sees s1's content
    rc.before_read("a.txt", None, None, "main", "s2")
    _write(f, "v3", 1_700_000_002_000_000_000)
    msg = rc.before_read("a.txt", None, None, "main", "s2")
    assert msg is not None and "- v2\n+ v3" in msg  # s2 diffs against its own v2, not s1's v1
    _disable_delta(paths)
    _write(f, "v4", 1_700_000_003_000_000_000)
    assert rc.before_read("a.txt", None, None, "main", "s1") is None


def test_narrow_read_evicts_and_never_seeds(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.txt", "v1\n", 1_700_000_000_000_000_000)
    rc.before_read("a.txt", None, None, "main", "s1")
    assert rc.tracked_counts()["read_cache.delta"] == 1
    rc.before_read("a.txt", 5, 10, "main", "s1")
    assert rc.tracked_counts()["read_cache.delta"] == 0
    rc.before_read("a.txt", 5, 10, "main", "s1")
    _write(f, "v2\n", 1_700_000_001_000_000_000)
    assert rc.before_read("a.txt", 5, 10, "main", "s1") is None  # narrow: never a diff
    assert rc.tracked_counts()["read_cache.delta"] == 0


def test_delta_skipped_for_files_over_budget(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "big.txt", "x" * 51_201, 1_700_000_000_000_000_000)
    rc.before_read("big.txt", None, None, "main", "s1")
    assert rc.tracked_counts()["read_cache.delta"] == 0
    f2 = _write(proj / "edge.txt", "y" * 51_200, 1_700_000_000_000_000_000)
    rc.before_read("edge.txt", None, None, "main", "s1")
    assert rc.tracked_counts()["read_cache.delta"] == 1
    # grows past the budget between reads: the entry is dropped and the read allowed
    _write(f2, "y" * 60_000, 1_700_000_001_000_000_000)
    assert rc.before_read("edge.txt", None, None, "main", "s1") is None
    assert rc.tracked_counts()["read_cache.delta"] == 0
    assert _reasons(paths, "s1")[-1] == ("allow", "file_modified_or_different_range")
    del f


def test_write_drops_delta_content(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.txt", "v1", 1_700_000_000_000_000_000)
    rc.before_read("a.txt", None, None, "main", "s1")
    rc.after_write(str(f), "main", "s1")
    assert rc.tracked_counts()["read_cache.delta"] == 0


def test_delta_cache_is_bounded(rc: ReadCache, proj: Path) -> None:
    for i in range(105):
        _write(proj / f"f{i}.txt", str(i))
        rc.before_read(f"f{i}.txt", None, None, "main", "s1")
    assert rc.tracked_counts()["read_cache.delta"] == 100
    assert rc._delta_get(f"s1::{proj / 'f0.txt'}") is None
    assert rc._delta_get(f"s1::{proj / 'f104.txt'}") is not None


def test_release_drops_session_delta_content(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    # Deliberate difference: the reference never frees a session's delta content.
    _write(proj / "a.txt", "v1")
    rc.before_read("a.txt", None, None, "main", "s1")
    rc.before_read("a.txt", None, None, "main", "s2")
    rc.release("s1")
    counts = rc.tracked_counts()
    assert counts["read_cache.delta"] == 1
    assert counts["read_cache.agents"] == 1


# ---------------------------------------------------------------- structure map telemetry


def test_structure_map_event_only_when_digest_freshly_built(rc: ReadCache, paths: StatePaths,
                                                            proj: Path) -> None:
    _write(proj / "m.ts", "export function foo() {\n}\n\nexport const X = 1\n")
    for _ in range(3):
        rc.before_read("m.ts", None, None, "main", "s1")
    rows = [json.loads(x) for x in paths.compression_log.read_text().splitlines()]
    assert len(rows) == 1
    # issue 13: warn mode (the default) lets the full read through, so the digest was
    # never served and nothing is counted saved (the reference logged the digest's saving)
    assert rows[0]["feature"] == "structure_map"
    assert rows[0]["detail"] == "redundant_read 2 not served (warn)"
    assert rows[0]["original_tokens"] == rows[0]["compressed_tokens"] > 0
    assert rows[0]["compression_ratio"] == 0
    Telemetry(paths).set_v5("structure_map_beta", False)
    _write(proj / "n.ts", "export const Y = 2\n")
    rc.before_read("n.ts", None, None, "main", "s1")
    rc.before_read("n.ts", None, None, "main", "s1")
    assert len(paths.compression_log.read_text().splitlines()) == 1


# ---------------------------------------------------------------- file formats


def test_cache_file_format_matches_observed(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    f = _write(proj / "a.ts", "x" * 79, 1795255724273999000)
    rc.before_read(str(f), None, None, "main", "s:1")
    data = (paths.read_cache / "main-s1.json").read_bytes()
    expected = (
        '{"files":{"' + str(f) + '":{"mtime":1795255724.273999,"offset":0,"limit":0,"tokensEst":24,'
        '"readCount":1,"lastAccess":1795255719.279,"digest":""}}}'
    )
    assert data == expected.encode()
    assert _mode(paths.read_cache / "main-s1.json") == 0o600
    assert _mode(paths.read_cache) == 0o700
    dec = (paths.decisions / "s1.jsonl").read_bytes()
    assert dec == ('{"ts":1795255719.279,"decision":"allow","file":"' + str(f)
                   + '","reason":"first_read","session":"s:1"}\n').encode()
    assert _mode(paths.decisions) == 0o700 and _mode(paths.decisions / "s1.jsonl") == 0o600
    assert sorted(os.listdir(paths.read_cache)) == ["decisions", "main-s1.json"]


def test_file_names_use_removal_rule(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    _write(proj / "a.txt", "x")
    rc.before_read("a.txt", None, None, "ag:1", "s:1/é")
    rc.before_read("a.txt", None, None, "", "")
    assert (paths.read_cache / "ag1-s1.json").exists()
    assert (paths.read_cache / "default-unknown.json").exists()
    assert (paths.decisions / "unknown.jsonl").exists()


def test_corrupt_cache_file_is_deleted_and_treated_as_empty(rc: ReadCache, paths: StatePaths,
                                                            proj: Path) -> None:
    paths.read_cache.mkdir(parents=True)
    for bad in ("{nope", '{"files": null}', "[1]", '{"files": []}'):
        (paths.read_cache / "main-s1.json").write_text(bad)
        _write(proj / "a.txt", "x")
        assert rc.before_read("a.txt", None, None, "main", "s1") is None
        assert _reasons(paths, "s1")[-1] == ("allow", "first_read")
    # an empty files map is valid JSON-wise (truthy object in JS)
    (paths.read_cache / "main-s1.json").write_text('{"files": {}, "extra": 1}')
    rc.before_read("a.txt", None, None, "main", "s1")
    assert json.loads((paths.read_cache / "main-s1.json").read_text())["extra"] == 1


def test_trim_to_500_entries_by_last_access(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    paths.read_cache.mkdir(parents=True)
    files = {f"/x/{i}": {"mtime": 1, "offset": 0, "limit": 0, "tokensEst": 1, "readCount": 1,
                         "lastAccess": 1000 - i, "digest": ""} for i in range(505)}
    (paths.read_cache / "main-s1.json").write_text(json.dumps({"files": files}))
    _write(proj / "new.txt", "x")
    rc.before_read("new.txt", None, None, "main", "s1")
    kept = json.loads((paths.read_cache / "main-s1.json").read_text())["files"]
    assert len(kept) == 500
    # the six oldest (largest i) went; order of the rest is unchanged
    assert list(kept)[:3] == ["/x/0", "/x/1", "/x/2"]
    assert "/x/498" in kept and all(f"/x/{i}" not in kept for i in range(499, 505))
    assert list(kept)[-1] == str(proj / "new.txt")


# ---------------------------------------------------------------- compaction (§13.4 B)


def test_clear_cache_clears_across_agent_prefixes(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    # Reads were cached under "unknown" (no agentId on the read) but compaction
    # clears with "default": the reference leaves the cache behind.
    _write(proj / "a.txt", "x")
    rc.before_read("a.txt", None, None, "unknown", "abc")
    rc.before_read("a.txt", None, None, "main", "abc")
    rc.record_hint_serve("abc", ["/some/where.py"])
    rc.flush()  # the sidecar is written behind the call
    rc.before_read("a.txt", None, None, "main", "x-abc")  # another session whose id ends in -abc
    fresh = ReadCache(paths, cwd=lambda: str(proj))  # a restart: nothing remembered in memory
    fresh.clear_cache("default", "abc")
    names = sorted(os.listdir(paths.read_cache))
    assert names == ["decisions", "hint-serves-abc.json", "main-x-abc.json"]
    assert not (paths.decisions / "abc.jsonl").exists()
    assert (paths.decisions / "x-abc.jsonl").exists()
    assert fresh.before_read("a.txt", None, None, "unknown", "abc") is None
    assert _reasons(paths, "abc") == [("allow", "first_read")]


def test_clear_cache_clears_remembered_hyphenated_agent(rc: ReadCache, paths: StatePaths, proj: Path) -> None:
    _write(proj / "a.txt", "x")
    rc.before_read("a.txt", None, None, "my-agent", "abc")
    rc.clear_cache("", "abc")
    assert not (paths.read_cache / "my-agent-abc.json").exists()


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from token_optimizer import fsutil

    seen: list[str] = []
    real = fsutil.CheckedDir.listdir

    def listdir(self: fsutil.CheckedDir) -> list[str]:
        if self.path.name == "read-cache":
            seen.append(str(self.path))
        return real(self)

    monkeypatch.setattr(fsutil.CheckedDir, "listdir", listdir)
    return seen


def test_compaction_does_not_list_read_cache_for_a_remembered_session(
        rc: ReadCache, paths: StatePaths, proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(proj / "a.txt", "x")
    for i in range(30):  # other sessions on disk
        rc.before_read("a.txt", None, None, "main", f"other{i}")
    rc.before_read("a.txt", None, None, "main", "abc")
    rc.before_read("a.txt", None, None, "main", "abc")
    rc.before_read("a.txt", None, None, "my-agent", "abc")
    listings = _count_listings(monkeypatch)
    assert rc.active_read_tokens("main", "abc") > 0
    rc.clear_cache("default", "abc")
    assert rc.active_read_tokens("main", "abc") == 0
    rc.clear_cache("default", "abc")
    assert listings == []
    assert not (paths.read_cache / "main-abc.json").exists()
    assert not (paths.read_cache / "my-agent-abc.json").exists()
    assert (paths.read_cache / "main-other0.json").exists()


def test_unknown_session_lists_read_cache_once(rc: ReadCache, paths: StatePaths, proj: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _write(proj / "a.txt", "x")
    rc.before_read("a.txt", None, None, "main", "abc")
    rc.before_read("a.txt", None, None, "main", "abc")
    fresh = ReadCache(paths, cwd=lambda: str(proj))  # a restart
    listings = _count_listings(monkeypatch)
    assert fresh.active_read_tokens("x", "abc") > 0  # found "main" by listing
    assert fresh.active_read_tokens("x", "abc") > 0  # remembered: no second listing
    fresh.clear_cache("x", "abc")
    assert not (paths.read_cache / "main-abc.json").exists()
    fresh.active_read_tokens("x", "abc")
    fresh.clear_cache("x", "abc")
    assert len(listings) == 1 and fresh.listings == 1


# ---------------------------------------------------------------- active read tokens


def test_active_read_tokens(rc: ReadCache, paths: StatePaths) -> None:
    paths.read_cache.mkdir(parents=True)

    def entry(rcount: int, last: float, tokens: int) -> dict[str, object]:
        return {"mtime": 1, "offset": 0, "limit": 0, "tokensEst": tokens, "readCount": rcount,
                "lastAccess": last, "digest": ""}

    a = {f"/a/{i}": entry(2, 100 + i, 1000) for i in range(20)}
    a["/a/once"] = entry(1, 999, 50_000)
    b = {f"/b/{i}": entry(3, i, 7) for i in range(10)}  # the oldest: only 5 of these count
    (paths.read_cache / "unknown-s1.json").write_text(json.dumps({"files": a}))
    (paths.read_cache / "main-s1.json").write_text(json.dumps({"files": b}))
    (paths.read_cache / "main-s2.json").write_text(json.dumps({"files": {"/c": entry(5, 5000, 9999)}}))
    (paths.read_cache / "broken-s1.json").write_text("{")
    assert rc.active_read_tokens("whatever", "s1") == 20 * 1000 + 5 * 7
    big = {f"/d/{i}": entry(2, i, 50_000) for i in range(10)}
    (paths.read_cache / "x-s3.json").write_text(json.dumps({"files": big}))
    assert rc.active_read_tokens("x", "s3") == 200_000
    assert rc.active_read_tokens("x", "nothing") == 0


# ---------------------------------------------------------------- hints


def test_hint_follow_through_credits_once(rc: ReadCache, paths: StatePaths, proj: Path,
                                          clock: list[int]) -> None:
    f = _write(proj / "a.txt", "x")
    rc.record_hint_serve("s:1", ["  " + str(f) + "  ", "", "rel/b.txt"])
    rc.flush()
    sidecar = paths.read_cache / "hint-serves-s1.json"
    assert sidecar.read_bytes() == (
        '{"' + str(f) + '":{"filePath":"' + str(f) + '","servedAt":1795255719.279,"credited":false},'
        '"rel/b.txt":{"filePath":"rel/b.txt","servedAt":1795255719.279,"credited":false}}'
    ).encode()
    assert _mode(sidecar) == 0o600
    clock[0] += 14_400_000  # exactly four hours later still qualifies
    rc.before_read(str(f), None, None, "main", "s:1")
    rows = [json.loads(x) for x in paths.savings_log.read_text().splitlines()]
    # issue 13: the 5000-token hint credit is an estimate: tokens_saved (what the reference's
    # readers sum as measured) is 0, the estimate rides in trailing keys
    assert rows == [{"timestamp": "2026-11-21T10:08:39.277Z", "event_type": "hint_followed",
                     "tokens_saved": 0, "session_id": "s:1", "detail": "hint->read: a.txt",
                     "basis": "estimated", "estimated_tokens": 5000}]
    assert json.loads(sidecar.read_text())[str(f)]["credited"] is True
    # a later first read (after a write) is not credited again; re-serving doesn't resurrect
    rc.after_write(str(f), "main", "s:1")
    rc.record_hint_serve("s:1", [str(f)])
    rc.before_read(str(f), None, None, "main", "s:1")
    assert len(paths.savings_log.read_text().splitlines()) == 1
    # a relative hinted path never matches the resolved path
    _write(proj / "rel" / "b.txt", "y")
    rc.before_read("rel/b.txt", None, None, "main", "s:1")
    assert len(paths.savings_log.read_text().splitlines()) == 1


def test_hint_expires_and_reserve_keeps_original_time(rc: ReadCache, paths: StatePaths, proj: Path,
                                                      clock: list[int]) -> None:
    f = _write(proj / "a.txt", "x")
    rc.record_hint_serve("s1", [str(f)])
    clock[0] += 10_000_000
    rc.record_hint_serve("s1", [str(f)])  # must not refresh the window
    rc.flush()
    assert json.loads((paths.read_cache / "hint-serves-s1.json").read_text())[str(f)]["servedAt"] == NOW_S
    clock[0] += 4_400_001  # 14 400.001 s after the first serve
    assert rc.claim_hint_follow("s1", str(f)) is False
    rc.before_read(str(f), None, None, "main", "s1")
    assert not paths.savings_log.exists()


def test_record_hint_serve_caps_and_noops(rc: ReadCache, paths: StatePaths) -> None:
    rc.record_hint_serve("", ["/a"])
    rc.record_hint_serve("s1", [])
    rc.flush()
    assert not (paths.read_cache / "hint-serves-s1.json").exists()
    rc.record_hint_serve("s1", [f"/p/{i}" for i in range(30)])
    rc.flush()
    assert len(json.loads((paths.read_cache / "hint-serves-s1.json").read_text())) == 25
    (paths.read_cache / "hint-serves-s2.json").write_text("{corrupt")
    assert rc.claim_hint_follow("s2", "/p/1") is False
    assert not (paths.read_cache / "hint-serves-s2.json").exists()


# ---------------------------------------------------------------- robustness


def test_hooks_never_raise(rc: ReadCache, proj: Path, monkeypatch: pytest.MonkeyPatch,
                           caplog: pytest.LogCaptureFixture) -> None:
    _write(proj / "a.txt", "x")

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(rc, "_save", boom)
    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        assert rc.before_read("a.txt", None, None, "main", "s1") is None
    assert any(r.getMessage().startswith("[token-optimizer] ") for r in caplog.records)
    monkeypatch.setattr(rc, "_load", boom)
    rc.after_write("a.txt", "main", "s1")
    assert rc.before_read("bad\0path", None, None, "main", "s1") is None


def test_empty_path_is_ignored(rc: ReadCache, paths: StatePaths) -> None:
    assert rc.before_read(None, None, None, "main", "s1") is None
    assert rc.before_read("", None, None, "main", "s1") is None
    rc.after_write("", "main", "s1")
    assert not paths.read_cache.exists()


# ---------------------------------------------------------------- digest


def test_generate_digest() -> None:
    assert generate_digest("/p/x.ts", "export function foo() {\n}\n\nexport const X = 1") == (
        "L1: export function foo()\nL4: export const X")
    ts = "interface A {\nexport default let b = 2\nasync function c() {\nexport type T = {\nconst local = 1"
    assert generate_digest("/p/x.TSX", ts) == (
        "L1: interface A\nL2: export default let b\nL3: async function c()\nL4: export type T =")
    py = "from a import b\nclass C:\n    async def skip(self):\n    def m(self, x):\nimport os"
    assert generate_digest("/p/x.py", py) == "L1: from a import b\nL2: class C\nL4: def m\nL5: import os"
    assert generate_digest("/p/x.py", "x = 1\n") == "2 lines"
    assert generate_digest("/p/x.md", "a\nb\nc\nd\ne\nf") == "6 lines"
    assert generate_digest("/p/x.md", "1\n2\n3\n4\n5\n6\n7") == "7 lines\nFirst 3:\n1\n2\n3\nLast 3:\n5\n6\n7"
    big = generate_digest("/p/x.py", "\n" * 10_000)
    assert big.startswith("10001 lines (") and big.endswith(")")
    many = "\n".join(f"def f{i}():" for i in range(60))
    assert len(generate_digest("/p/x.py", many).split("\n")) == 50
