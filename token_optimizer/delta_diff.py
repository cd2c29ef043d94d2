"""Line diff used by delta reads (runtime.md §7).

When a file the agent already read changed outside its own write tools, the
read cache can answer the re-read with only the changed lines. The diff is a
plain LCS walk: unchanged lines are omitted, removed lines are printed as
``- <line>`` and added lines as ``+ <line>``. Oversized inputs fall back to a
one-line note asking for a full re-read.

The LCS lengths are computed with a bit-parallel row recurrence (one Python
big integer per row) instead of a quadratic table of small integers; the walk
and therefore the output are exactly those of the suffix-table algorithm the
spec describes.
"""

from __future__ import annotations

from dataclasses import dataclass

from token_optimizer.jsutil import utf16_len

MAX_LCS_BYTES = 50_000
"""Longest input (UTF-16 code units) the diff will look at."""
MAX_LCS_LINES = 2_000
"""Most lines either side may have."""
MAX_DIFF_OPS = 200
"""Diff lines printed before the rest is summarised."""

NO_CHANGE_BODY = "(no change)"
FALLBACK_BYTES = 80
SIZE_BUDGET_NOTE = "(content changed \u2014 file is over the delta size budget; a full re-read is needed)"
LINE_BUDGET_NOTE = "(content changed \u2014 file is over the delta line budget; a full re-read is needed)"


@dataclass(frozen=True)
class DeltaResult:
    summary: str
    """``+<adds>/-<dels>``, or ``?/?`` for a fallback."""
    body: str
    bytes: int
    """Length of ``body`` in UTF-16 code units (fixed 80 for a fallback)."""
    fallback: bool


def _fallback(note: str) -> DeltaResult:
    return DeltaResult(summary="?/?", body=note, bytes=FALLBACK_BYTES, fallback=True)


class _SuffixLcs:
    """``length(i, j)`` = LCS length of ``a[i:]`` and ``b[j:]``.

    Both sequences are reversed so that suffixes become prefixes; each stored
    row is the Hyyro/Allison-Dix bit vector after consuming one more line of
    reversed ``a``. In that vector a zero bit at position ``t`` means the LCS
    grows by one when line ``t`` of reversed ``b`` is added, so the LCS with a
    prefix of reversed ``b`` is the number of zero bits below its width.
    """

    __slots__ = ("_m", "_n", "_rows")

    def __init__(self, a: list[str], b: list[str]) -> None:
        n, m = len(a), len(b)
        masks: dict[str, int] = {}
        for t, line in enumerate(reversed(b)):
            masks[line] = masks.get(line, 0) | (1 << t)
        full = (1 << m) - 1
        v = full
        rows = [v]
        for line in reversed(a):
            u = v & masks.get(line, 0)
            v = ((v + u) | (v - u)) & full
            rows.append(v)
        self._n = n
        self._m = m
        self._rows = rows

    def length(self, i: int, j: int) -> int:
        width = self._m - j
        row = self._rows[self._n - i]
        return width - (row & ((1 << width) - 1)).bit_count()


def compute_delta(old: str, new: str) -> DeltaResult:
    """Diff ``old`` against ``new`` line by line."""
    if old == new:
        # The reference reports 10 here although the body has 11 code units
        # (runtime.md §13.4 H); this port reports the real length.
        return DeltaResult(summary="+0/-0", body=NO_CHANGE_BODY, bytes=utf16_len(NO_CHANGE_BODY), fallback=False)
    if utf16_len(old) > MAX_LCS_BYTES or utf16_len(new) > MAX_LCS_BYTES:
        return _fallback(SIZE_BUDGET_NOTE)
    a = old.split("\n")
    b = new.split("\n")
    if len(a) > MAX_LCS_LINES or len(b) > MAX_LCS_LINES:
        return _fallback(LINE_BUDGET_NOTE)

    lcs = _SuffixLcs(a, b)
    ops: list[str] = []
    adds = dels = 0
    i = j = 0
    n, m = len(a), len(b)
    while i < n and j < m:
        if a[i] == b[j]:
            i += 1
            j += 1
        elif lcs.length(i + 1, j) >= lcs.length(i, j + 1):
            ops.append("- " + a[i])
            dels += 1
            i += 1
        else:
            ops.append("+ " + b[j])
            adds += 1
            j += 1
    for k in range(i, n):
        ops.append("- " + a[k])
        dels += 1
    for k in range(j, m):
        ops.append("+ " + b[k])
        adds += 1

    if len(ops) > MAX_DIFF_OPS:
        body = "\n".join(ops[:MAX_DIFF_OPS]) + f"\n... ({len(ops) - MAX_DIFF_OPS} more diff lines truncated)"
    else:
        body = "\n".join(ops)
    return DeltaResult(summary=f"+{adds}/-{dels}", body=body, bytes=utf16_len(body), fallback=False)
