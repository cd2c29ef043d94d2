"""Delta diff (runtime.md §7)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from token_optimizer.delta_diff import (
    FALLBACK_BYTES,
    MAX_LCS_BYTES,
    MAX_LCS_LINES,
    compute_delta,
)


def _naive(old: str, new: str) -> tuple[list[str], int, int]:
    """The spec's algorithm with a full suffix table, for comparison."""
    a, b = old.split("\n"), new.split("\n")
    n, m = len(a), len(b)
    L = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            L[i][j] = L[i + 1][j + 1] + 1 if a[i] == b[j] else max(L[i + 1][j], L[i][j + 1])
    ops: list[str] = []
    i = j = 0
    while i < n and j < m:
        if a[i] == b[j]:
            i += 1
            j += 1
        elif L[i + 1][j] >= L[i][j + 1]:
            ops.append("- " + a[i])
            i += 1
        else:
            ops.append("+ " + b[j])
            j += 1
    ops += ["- " + x for x in a[i:]] + ["+ " + x for x in b[j:]]
    adds = sum(1 for o in ops if o.startswith("+"))
    return ops, adds, len(ops) - adds


def test_spec_examples() -> None:
    d = compute_delta("x\ny", "y\nx")
    assert (d.summary, d.body, d.bytes, d.fallback) == ("+1/-1", "- x\n+ x", 7, False)
    d = compute_delta("", "a")
    assert (d.summary, d.body, d.bytes, d.fallback) == ("+1/-1", "- \n+ a", 6, False)


def test_no_change_bytes_is_real_body_length() -> None:
    # Deliberate fix of runtime.md §13.4 H: the reference reports bytes=10.
    d = compute_delta("same\ntext", "same\ntext")
    assert (d.summary, d.body, d.fallback) == ("+0/-0", "(no change)", False)
    assert d.bytes == 11 == len(d.body)


def test_unchanged_lines_are_omitted() -> None:
    old = "a\nb\nc\nd"
    new = "a\nB\nc\nd\ne"
    d = compute_delta(old, new)
    assert d.body == "- b\n+ B\n+ e"
    assert d.summary == "+2/-1"


def test_deletion_preferred_on_ties() -> None:
    d = compute_delta("p", "q")
    assert d.body == "- p\n+ q"


def test_size_budget_fallback_counts_utf16_units() -> None:
    ok = "a" * MAX_LCS_BYTES
    assert compute_delta(ok, ok + "").fallback is False  # identical shortcut
    assert compute_delta(ok, "b" * MAX_LCS_BYTES).fallback is False
    d = compute_delta("a" * (MAX_LCS_BYTES + 1), "b")
    assert (d.summary, d.bytes, d.fallback) == ("?/?", FALLBACK_BYTES, True)
    assert d.body.startswith("(") and d.body.endswith(")") and "\n" not in d.body
    assert "size" in d.body and "\u2014" in d.body
    # 25 001 emoji are 50 002 UTF-16 code units although only 25 001 code points
    d = compute_delta("😀" * 25_001, "x")
    assert d.fallback is True and "size" in d.body


def test_line_budget_fallback() -> None:
    many = "\n".join("l" for _ in range(MAX_LCS_LINES + 1))
    d = compute_delta(many, "x")
    assert (d.summary, d.bytes, d.fallback) == ("?/?", FALLBACK_BYTES, True)
    assert "line" in d.body and "size" not in d.body
    exactly = "\n".join(str(i) for i in range(MAX_LCS_LINES))
    assert compute_delta(exactly, exactly + "!").fallback is False


def test_more_than_200_ops_truncated_summary_counts_all() -> None:
    old = "\n".join(f"o{i}" for i in range(125))
    new = "\n".join(f"n{i}" for i in range(125))
    d = compute_delta(old, new)
    assert d.summary == "+125/-125"
    lines = d.body.split("\n")
    assert len(lines) == 201
    assert lines[-1] == "... (50 more diff lines truncated)"
    assert lines[0] == "- o0"
    assert d.bytes == len(d.body)


def test_exactly_200_ops_not_truncated() -> None:
    old = "\n".join(f"o{i}" for i in range(100))
    new = "\n".join(f"n{i}" for i in range(100))
    d = compute_delta(old, new)
    assert "truncated" not in d.body
    assert len(d.body.split("\n")) == 200


def test_bytes_in_utf16_units() -> None:
    d = compute_delta("😀", "x")
    assert d.body == "- 😀\n+ x"
    assert d.bytes == 8  # the emoji is two code units


def test_large_input_is_fast_and_matches_naive_on_sample() -> None:
    old = "\n".join(f"line {i}" for i in range(2000))
    new = "\n".join(f"line {i}" if i % 7 else f"changed {i}" for i in range(2000))
    d = compute_delta(old, new)
    assert d.summary == "+286/-286"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "c", "", "d"]), max_size=12),
    st.lists(st.sampled_from(["a", "b", "c", "", "e"]), max_size=12),
)
def test_matches_quadratic_reference_walk(a: list[str], b: list[str]) -> None:
    old, new = "\n".join(a), "\n".join(b)
    d = compute_delta(old, new)
    if old == new:
        assert d.summary == "+0/-0"
        return
    ops, adds, dels = _naive(old, new)
    assert d.summary == f"+{adds}/-{dels}"
    assert d.body == "\n".join(ops[:200])
