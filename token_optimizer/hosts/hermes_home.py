"""Where the plugin keeps its state inside Hermes, and moving it there from the old place.

Earlier versions kept Hermes sessions' state under ``~/.openclaw/token-optimizer``,
the OpenClaw plugin's root. Hermes 0.19.0 greets a user who has a ``~/.openclaw``
directory with an offer to run ``hermes claw cleanup``, which renames that
directory, and our state with it. So under Hermes the state root is
``<HERMES_HOME>/token-optimizer``: per profile, since Hermes resolves its home per
profile (``hermes_constants.get_hermes_home``). ``TOKEN_OPTIMIZER_HOME`` still wins.

:func:`adopt_legacy_state` moves what Hermes sessions left under the old root into
the new one, once: a session is Hermes' when its id is in Hermes' own ``state.db``
(OpenClaw sessions stay where they are). It logs one line and writes a marker so
later starts do nothing but check that marker.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from token_optimizer import fsutil, settings
from token_optimizer.fsutil import sanitize_checkpoint_id
from token_optimizer.jsutil import dumps_compact, loads
from token_optimizer.sqlite_util import ro_uri

log = logging.getLogger("token_optimizer.hosts.hermes")

STATE_DIR_NAME = "token-optimizer"
MARKER = ".adopted-from-openclaw-root"
HERMES_AGENT_PREFIX = "hermes-"
"""Read-cache files of Hermes sessions are named ``hermes-<session>.json``."""


def hermes_home() -> Path:
    """Hermes' home for this process (profile-aware when Hermes is importable)."""
    try:
        get_home = importlib.import_module("hermes_constants").get_hermes_home
        return Path(get_home())
    except Exception:
        env = os.environ.get("HERMES_HOME", "").strip()
        return Path(env).expanduser() if env else fsutil.default_home() / ".hermes"


def state_root() -> Path | None:
    """The state root to use under Hermes; ``None`` when ``TOKEN_OPTIMIZER_HOME`` decides."""
    if settings.env_raw(settings.HOME):
        return None
    return hermes_home() / STATE_DIR_NAME


def hermes_session_ids(state_db: Path | None) -> set[str]:
    """Every session id in Hermes' ``state.db`` (read-only; empty when unreadable)."""
    if state_db is None or not state_db.is_file():
        return set()
    try:
        con = sqlite3.connect(ro_uri(state_db), uri=True, timeout=1.0)
    except sqlite3.Error:
        return set()
    try:
        return {str(r[0]) for r in con.execute("SELECT id FROM sessions") if r[0]}
    except sqlite3.Error:
        return set()
    finally:
        con.close()


def _move(src: Path, dst: Path) -> bool:
    """Move one file or directory (no symlinks followed, nothing overwritten)."""
    if src.is_symlink() or os.path.lexists(dst):
        return False
    fsutil.ensure_dir(dst.parent, base=dst.parent.parent)
    try:
        os.rename(src, dst)
        return True
    except OSError:
        pass
    try:  # another filesystem: copy, then remove the original
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
            shutil.rmtree(src)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
            src.unlink()
        return True
    except OSError as exc:
        log.warning("[token-optimizer] could not move %s to %s: %s", src, dst, exc)
        return False


def _repoint_manifest(session_dir: Path, old_dir: Path) -> None:
    """Manifest rows name their checkpoint by absolute path: point them at the new place."""
    manifest = session_dir / "manifest.jsonl"
    try:
        text = fsutil.read_text_no_follow(manifest)
    except OSError:
        return
    old_prefix = os.path.realpath(old_dir) + os.sep
    old_lexical = str(old_dir) + os.sep
    out: list[str] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except ValueError:
            out.append(line)  # kept as it was (readers skip it with one warning)
            continue
        f = row.get("file") if isinstance(row, dict) else None
        if isinstance(f, str):
            for prefix in (old_prefix, old_lexical):
                if f.startswith(prefix):
                    row["file"] = str(session_dir / f[len(prefix):])
                    break
            line = dumps_compact(row)
        out.append(line)
    try:
        fsutil.atomic_write(manifest, "\n".join(out) + "\n" if out else "", fsutil.FILE_MODE)
    except OSError as exc:
        log.warning("[token-optimizer] could not update %s after the move: %s", manifest, exc)


def adopt_legacy_state(old_root: Path, new_root: Path,
                       session_ids: Iterable[str] | Callable[[], Iterable[str]]) -> int:
    """Move Hermes sessions' checkpoints and read-cache files from ``old_root``.

    Returns how many sessions moved. Never raises; runs once per new root.
    """
    try:
        if old_root.resolve() == new_root.resolve() or (new_root / MARKER).exists():
            return 0
        if not old_root.is_dir() or old_root.is_symlink():
            return 0
        # Hermes' ids are read only now: after the first start the marker answers alone.
        source = session_ids() if callable(session_ids) else session_ids
        ids = {sanitize_checkpoint_id(s) for s in source}
        moved: set[str] = set()
        ck_old, ck_new = old_root / "checkpoints", new_root / "checkpoints"
        if ck_old.is_dir() and not ck_old.is_symlink():
            for entry in os.scandir(ck_old):
                if entry.name in ids and entry.is_dir(follow_symlinks=False) and _move(
                        Path(entry.path), ck_new / entry.name):
                    moved.add(entry.name)
                    _repoint_manifest(ck_new / entry.name, Path(entry.path))
        rc_old, rc_new = old_root / "read-cache", new_root / "read-cache"
        if rc_old.is_dir() and not rc_old.is_symlink():
            for entry in os.scandir(rc_old):
                if entry.name.startswith(HERMES_AGENT_PREFIX) and entry.is_file(follow_symlinks=False):
                    _move(Path(entry.path), rc_new / entry.name)
            dec = rc_old / "decisions"
            if dec.is_dir() and not dec.is_symlink():
                for entry in os.scandir(dec):
                    sid = entry.name.removesuffix(".jsonl")
                    if sid in ids and entry.is_file(follow_symlinks=False) and _move(
                            Path(entry.path), rc_new / "decisions" / entry.name):
                        moved.add(sid)
        fsutil.ensure_dir(new_root, base=new_root.parent)
        with contextlib.suppress(OSError):
            fsutil.write_no_follow(new_root / MARKER, f"{old_root}\n", fsutil.FILE_MODE)
        if moved:
            log.info("[token-optimizer] moved the state of %d Hermes sessions from %s to %s",
                     len(moved), old_root, new_root)
        return len(moved)
    except Exception as exc:
        log.warning("[token-optimizer] could not adopt earlier state from %s: %s", old_root, exc)
        return 0
