"""Process helpers for the tests that run Node, the worker or a real host as child processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(pred: Callable[[], object], timeout: float, step: float = 0.2) -> bool:
    """Poll ``pred`` until it is truthy or ``timeout`` seconds pass; one last try at the end."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process; a zombie (state ``Z``, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
