"""Token estimation (runtime.md §8)."""

from __future__ import annotations

import math

import pytest

from token_optimizer.token_estimate import (
    CODE_CHARS_PER_TOKEN,
    estimate_tokens,
    estimate_tokens_from_bytes,
)


def test_constant() -> None:
    assert CODE_CHARS_PER_TOKEN == 3.3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        (None, 0),
        ("a", 1),
        ("x" * 33, 10),  # 33 / 3.3 = 10 exactly
        ("x" * 34, 11),
        ("日本語abc", 4),  # spec example: 3 CJK + ceil(3 / 3.3)
        ("😀", 1),  # emoji: 2 code units, not CJK
        ("😀abc", 2),  # 5 code units
        ("한국어", 3),  # hangul syllables, nothing else
        ("ＡＢ", 2),  # full-width forms
        ("\U00020000", 2),  # astral ideograph: 1 CJK + 1 leftover unit
        ("éééé", 2),  # non-ASCII, non-CJK: ceil(4 / 3.3)
        ("ア" * 10 + "b" * 7, 13),  # katakana 10 + ceil(7 / 3.3)
    ],
)
def test_estimate_tokens(text: str | None, expected: int) -> None:
    assert estimate_tokens(text) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, 0), (-5, 0), (math.nan, 0), (None, 0), (0.5, 1), (4, 2), (33, 10), (3.3, 1), (51_200, 15_516)],
)
def test_estimate_tokens_from_bytes(n: float | None, expected: int) -> None:
    assert estimate_tokens_from_bytes(n) == expected
