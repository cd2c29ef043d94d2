"""Output for the audit commands: ``rich`` tables and progress on a terminal, plain text otherwise.

``rich`` is optional (the ``audit`` extra); it is imported only when stdout
(tables) or stderr (progress) is a TTY and it is installed. Progress goes to
stderr and only when stderr is a TTY, so JSON on stdout stays clean.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import orjson

Progress = Callable[[int, int, str], None]


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def print_json(obj: Any, *, compact: bool = False) -> None:
    """``obj`` as JSON on stdout (indented unless ``compact``; non-string keys allowed)."""
    opt = 0 if compact else orjson.OPT_INDENT_2
    sys.stdout.write(orjson.dumps(obj, option=opt | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def fmt_bytes(n: int, units: Sequence[str] = ("B", "KB", "MB", "GB")) -> str:
    """``n`` bytes in the largest of ``units`` (steps of 1024) under 1024, one decimal."""
    size = float(n)
    for unit in units:
        if size < 1024 or unit == units[-1]:
            return f"{size:.0f} {unit}" if unit == units[0] else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} {units[0]}"


def fmt_tokens(n: float) -> str:
    """The reference's short form: ``1.2M``, ``3.4K``, or the integer."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1_000:
        return f"{n / 1_000:.1f}K"
    return str(int(n))


def fmt_usd(x: float) -> str:
    return f"${x:,.2f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
                right: Sequence[bool] | None = None, out: TextIO | None = None,
                footer: Sequence[str] | None = None) -> None:
    """A table: ``rich`` when stdout is a TTY and rich is installed, else aligned plain text."""
    out = out or sys.stdout
    right = right or [False] * len(headers)
    if out.isatty() and _rich_available():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, show_footer=footer is not None)
        for i, h in enumerate(headers):
            t.add_column(h, justify="right" if right[i] else "left",
                         footer=footer[i] if footer else "")
        for r in rows:
            t.add_row(*r)
        Console(file=out).print(t)
        return
    if title:
        print(title, file=out)
        print("=" * 50, file=out)
    allrows = [list(headers), *[list(r) for r in rows]]
    if footer:
        allrows.append(list(footer))
    widths = [max(len(r[i]) for r in allrows) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        cells = [c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "  ".join(cells).rstrip()

    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line(r), file=out)
    if footer:
        print("  ".join("-" * w for w in widths), file=out)
        print(line(footer), file=out)


class ProgressReporter:
    """Progress on stderr, TTY only; a context manager yielding the callback (or ``None``)."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._rich: Any = None
        self._task: Any = None
        self._last = 0.0

    def __enter__(self) -> Progress | None:
        if not self.enabled:
            return None
        if _rich_available():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), console=Console(file=self.stream),
                                  transient=True)
            self._rich.start()
            self._task = self._rich.add_task("scanning", total=None)
        return self.update

    def update(self, done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        if self._rich is not None:
            self._rich.update(self._task, completed=done, total=total or None, description=label)
        else:
            self.stream.write(f"\r{label}: {done}/{total}")
            self.stream.flush()

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
