"""Cheap token estimates for text and file sizes (runtime.md §8).

Code averages about 3.3 characters per token, so plain ASCII text is
estimated as ``ceil(length / 3.3)``. Text with CJK characters is counted
differently: each CJK code point is roughly one token on its own, and only
the remaining UTF-16 code units go through the 3.3 rule. Lengths are UTF-16
code units, like the reference, so an emoji counts as two units.
"""

from __future__ import annotations

import math

CODE_CHARS_PER_TOKEN = 3.3

# Inclusive code-point ranges counted as one token each.
_CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # hangul syllables
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # half/full-width forms
    (0x20000, 0x2FA1F),  # supplementary ideographic planes
)


def _is_cjk(cp: int) -> bool:
    if cp < 0x3040:
        return False
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def estimate_tokens(text: str | None) -> int:
    """Estimated token count of ``text`` (0 for empty/absent text, else at least 1)."""
    if not text:
        return 0
    if text.isascii():
        return max(1, math.ceil(len(text) / CODE_CHARS_PER_TOKEN))
    cjk = 0
    astral = 0
    for ch in text:
        cp = ord(ch)
        if cp > 0xFFFF:
            astral += 1
        if _is_cjk(cp):
            cjk += 1
    # An astral character is two UTF-16 units; when it is CJK one unit is
    # counted as the CJK token and the other falls into the 3.3 bucket.
    other = len(text) + astral - cjk
    return max(1, math.ceil(other / CODE_CHARS_PER_TOKEN) + cjk)


def estimate_tokens_from_bytes(n: float | int | None) -> int:
    """Estimated tokens for a file of ``n`` bytes (0 for absent, NaN or n <= 0)."""
    if n is None:
        return 0
    try:
        x = float(n)
    except (TypeError, ValueError):
        return 0
    if math.isnan(x) or x <= 0:
        return 0
    if math.isinf(x):
        # JS would yield Infinity; an int cannot, so saturate.
        return 2**53
    return max(1, math.ceil(x / CODE_CHARS_PER_TOKEN))
