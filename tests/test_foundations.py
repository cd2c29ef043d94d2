"""JS-semantics helpers, state-root resolution, sanitisers, safe writes, the tool table."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from token_optimizer import fsutil, jsutil
from token_optimizer.tools import file_args, tool_concept


@pytest.mark.parametrize(("x", "d", "want"), [
    (62.5, 0, "63"), (0.5, 0, "1"), (71.5, 0, "72"), (-2.5, 0, "-3"), (70.3125, 1, "70.3"),
    (62.5, 3, "62.500"), (1.005, 2, "1.00"),  # exact binary value of 1.005 is below the tie
])
def test_to_fixed_rounds_exact_value_half_away_from_zero(x: float, d: int, want: str) -> None:
    assert jsutil.to_fixed(x, d) == want


@pytest.mark.parametrize(("x", "want"), [(2.5, 3), (-2.5, -2), (-0.5, 0), (71.5, 72), (70.49, 70)])
def test_js_round_ties_toward_positive_infinity(x: float, want: int) -> None:
    assert jsutil.js_round(x) == want


def test_parse_int_and_float_like_js() -> None:
    assert jsutil.parse_int("90000ms") == 90000
    assert jsutil.parse_int("1e3") == 1
    assert jsutil.parse_int(" 42") == 42
    assert math.isnan(jsutil.parse_int("abc"))
    assert jsutil.parse_float("0.25x") == 0.25
    assert math.isnan(jsutil.parse_float("x0.25"))


def test_number_and_json_formatting() -> None:
    assert jsutil.js_number(200000.0) == "200000"
    assert jsutil.js_number(-0.0) == "0"
    assert jsutil.js_number(70.3125) == "70.3125"
    assert jsutil.js_number(math.nan) == "NaN"
    assert jsutil.dumps_compact({"a": 1.0, "b": "é", "u": jsutil.UNDEFINED, "n": None,
                                 "x": math.inf}) == '{"a":1,"b":"é","n":null,"x":null}'
    assert jsutil.dumps_pretty({"a": [65], "b": [], "c": 0}) == \
        '{\n  "a": [\n    65\n  ],\n  "b": [],\n  "c": 0\n}'


def test_iso_timestamps_have_millisecond_precision() -> None:
    assert jsutil.iso_from_ms(1795255727306) == "2026-11-21T10:08:47.306Z"
    assert jsutil.parse_iso_ms("2026-11-21T10:08:47.306Z") == 1795255727306
    assert math.isnan(jsutil.parse_iso_ms("yesterday"))


def test_utf16_helpers_never_split_pairs() -> None:
    assert jsutil.utf16_len("a😀b") == 4
    assert jsutil.utf16_slice("a😀b", 2) == "a"
    assert jsutil.utf16_slice("a😀b", 3) == "a😀"
    assert jsutil.js_trim("\ufeff x \n") == "x"


def test_state_root_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOKEN_OPTIMIZER_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    default = fsutil.resolve_paths()
    assert default.root == tmp_path / "h" / ".openclaw" / "token-optimizer"
    assert default.openclaw_dir == tmp_path / "h" / ".openclaw"
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(tmp_path / "custom"))
    assert fsutil.resolve_paths().root == tmp_path / "custom"
    assert fsutil.resolve_paths(tmp_path / "explicit").root == tmp_path / "explicit"


@pytest.mark.parametrize(("raw", "want"), [
    ("sess:1/é", "sess_1__"), ("agent:main:main", "agent_main_main"), ("", "invalid-session"),
    ("a😀b", "a__b"), ("../..", "_____"),
])
def test_checkpoint_sanitiser(raw: str, want: str) -> None:
    assert fsutil.sanitize_checkpoint_id(raw) == want


def test_removal_and_trigger_sanitisers() -> None:
    assert fsutil.sanitize_removing("s:1", "unknown") == "s1"
    assert fsutil.sanitize_removing(":::", "default") == "default"
    assert fsutil.sanitize_trigger("progressive-50") == "progressive-50"
    assert fsutil.sanitize_trigger("a/b c") == "a_b_c"
    long = fsutil.sanitize_checkpoint_id("k" * 10_000)
    assert len(long) == 200 and long != fsutil.sanitize_checkpoint_id("k" * 9_999)


def test_ensure_dir_creates_0700_levels_and_refuses_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    made = fsutil.ensure_dir(root / "a" / "b", base=root)
    assert made == (root / "a" / "b").resolve()
    for p in (root, root / "a", root / "a" / "b"):
        assert (p.stat().st_mode & 0o777) == 0o700
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "link")
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.ensure_dir(root / "link" / "x", base=root)
    assert not (tmp_path / "elsewhere" / "x").exists()


def test_writes_refuse_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    os.symlink(target, link)
    for write in (fsutil.write_no_follow, fsutil.append_no_follow, fsutil.atomic_write):
        with pytest.raises(OSError):
            write(link, "evil")
    assert target.read_text() == "keep"
    out = tmp_path / "state.json"
    fsutil.atomic_write(out, "{}")
    assert out.read_text() == "{}" and (out.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_remove_tree_safely_stays_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    (root / "s").mkdir(parents=True)
    (root / "s" / "a").write_text("1")
    os.symlink(victim, root / "s" / "link")
    assert fsutil.remove_tree_safely(root / "s", root) == 1
    assert not (root / "s").exists() and (victim / "f").exists()
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.remove_tree_safely(victim, root)


def test_tool_table_and_file_args() -> None:
    assert [tool_concept(n) for n in ("Read", "read", "read_file", "Edit", "apply_patch", "patch",
                                       "Task", "sessions_spawn", "delegate_task", "exec", "", None)] == \
        ["read", "read", "read", "write", "write", "write", "fanout", "fanout", "fanout", "other",
         "other", "other"]
    fa = file_args({"path": "/a.py", "offset": 10.0, "limit": True})
    assert (fa.file_path, fa.offset, fa.limit) == ("/a.py", 10, None)
    assert file_args({"file_path": 3}).file_path is None
    assert file_args(None).file_path is None  # type: ignore[arg-type]


def test_clean_id_keeps_well_formed_ids_and_escapes_lone_surrogates() -> None:
    from token_optimizer.events import MAX_ID_CHARS, clean_id

    for ok in ("agent:main:s1", "a\\b", "\\ud800", "caf\u00e9 \U0001f600"):
        assert clean_id(ok) == ok  # byte-identical, backslashes included
    assert clean_id("x\ud800y\udfff") == "x\\ud800y\\udfff"
    # documented, accepted merge: not injective for the literal escape text
    assert clean_id("\ud800") == clean_id("\\ud800")
    assert [clean_id(v) for v in (None, "", 5, "x" * (MAX_ID_CHARS + 1))] == [None] * 4
