"""State root, session-id sanitising and safe file operations.

Every file the package writes lives under one *state root*, by default
``~/.openclaw/token-optimizer`` (the TypeScript plugin's location, so the two
can share state). ``TOKEN_OPTIMIZER_HOME`` overrides it.

Write helpers refuse symlinks at the final component (``O_NOFOLLOW``) and
create directories level by level with mode 0700 (Node's recursive ``mkdir``
applies the mode to every level it creates; ``os.makedirs`` does not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("token_optimizer")

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePathError(OSError):
    """A path failed a symlink, type or containment check."""


# ---------------------------------------------------------------- state root


def default_home() -> Path:
    """``HOME`` ?? ``USERPROFILE`` ?? the OS home, as the reference resolves it."""
    h = os.environ.get("HOME")
    if h is None:
        h = os.environ.get("USERPROFILE")
    if not h:
        return Path.home()
    return Path(h)


@dataclass(frozen=True)
class StatePaths:
    """Where everything lives. Construct with :func:`resolve_paths`."""

    root: Path
    """``~/.openclaw/token-optimizer`` (or ``TOKEN_OPTIMIZER_HOME``)."""
    openclaw_dir: Path
    """``~/.openclaw``: global ``.contextignore`` and transcript discovery."""

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def read_cache(self) -> Path:
        return self.root / "read-cache"

    @property
    def decisions(self) -> Path:
        return self.read_cache / "decisions"

    @property
    def savings_log(self) -> Path:
        return self.root / "savings-events.jsonl"

    @property
    def compression_log(self) -> Path:
        return self.root / "compression-events.jsonl"

    @property
    def v5_features(self) -> Path:
        return self.root / "v5-features.json"

    @property
    def session_index(self) -> Path:
        return self.root / "session-index.json"


def resolve_paths(root: str | os.PathLike[str] | None = None) -> StatePaths:
    """Resolve the state root: explicit argument, ``TOKEN_OPTIMIZER_HOME``, or
    ``<OpenClaw state dir>/token-optimizer`` (see :func:`openclaw_state_dir`)."""
    if root is None:
        env = os.environ.get("TOKEN_OPTIMIZER_HOME")
        if env:
            root = env
    if root is not None:
        r = Path(root).expanduser().absolute()
        return StatePaths(root=r, openclaw_dir=r.parent)
    oc = openclaw_state_dir()
    return StatePaths(root=oc / "token-optimizer", openclaw_dir=oc)


def openclaw_state_dir() -> Path:
    """OpenClaw's state directory: ``OPENCLAW_STATE_DIR`` as the host honours it, else
    ``~/.openclaw`` (the reference always used the latter)."""
    env = os.environ.get("OPENCLAW_STATE_DIR", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    return default_home() / ".openclaw"


# ---------------------------------------------------------------- sanitising

_CHECKPOINT_BAD = re.compile(r"[^A-Za-z0-9_-]")
_TRIGGER_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def _utf16_replace(pattern: re.Pattern[str], s: str) -> str:
    # JS regexes without the u flag see astral characters as two code units,
    # so each becomes two replacement characters.
    return pattern.sub(lambda m: "__" if ord(m.group(0)) > 0xFFFF else "_", s)


def sanitize_checkpoint_id(session_id: str) -> str:
    """Checkpoint rule: every code unit outside ``[A-Za-z0-9_-]`` becomes ``_``.

    The result is capped at 200 characters (a long id gets a hash suffix) so
    that hostile ids cannot exceed the file-system name limit.
    """
    s = _utf16_replace(_CHECKPOINT_BAD, session_id)
    if not s or s in (".", ".."):
        return "invalid-session"
    return _cap_name(s)


def sanitize_trigger(trigger: str) -> str:
    """Trigger rule (file names): code units outside ``[A-Za-z0-9_.-]`` become ``_``."""
    return _cap_name(_utf16_replace(_TRIGGER_BAD, trigger), 80)


_REMOVE_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_removing(value: str, empty: str) -> str:
    """Read-cache rule: delete every character outside ``[A-Za-z0-9_-]``."""
    s = _REMOVE_BAD.sub("", value)
    return _cap_name(s) if s else empty


def _cap_name(s: str, limit: int = 200) -> str:
    if len(s) <= limit:
        return s
    import hashlib

    digest = hashlib.sha256(s.encode("utf-8")).hexdigest()[:16]
    return s[: limit - 17] + "-" + digest


# ---------------------------------------------------------------- containment


def is_within(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` is ``root`` or below it (lexically, after abspath)."""
    try:
        rel = os.path.relpath(os.path.abspath(candidate), os.path.abspath(root))
    except ValueError:
        return False
    return rel == "." or not (rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel))


def ensure_dir(path: Path, *, base: Path | None = None) -> Path:
    """Create ``path`` level by level (mode 0700) and return its realpath.

    Every component from ``base`` (inclusive; default: ``path`` itself) down to
    ``path`` must be a real directory, not a symlink, or
    :class:`UnsafePathError` is raised before anything is created below it.
    Components above ``base`` (``/tmp``, the user's home) are trusted and
    created when missing. Existing directories keep their mode.
    """
    path = Path(os.path.abspath(path))
    top = Path(os.path.abspath(base)) if base is not None else path
    if not is_within(top, path):
        raise UnsafePathError(f"{path} is not below {top}")
    chain = [path]
    p = path
    while p != top and p.parent != p:
        p = p.parent
        chain.append(p)
    chain.reverse()  # top first
    trusted: list[Path] = []
    q = top.parent
    while not os.path.lexists(q) and q.parent != q:
        trusted.append(q)
        q = q.parent
    for d in reversed(trusted):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
    for d in chain:
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, DIR_MODE)
            st = os.lstat(d)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(f"symlinked directory refused: {d}")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(f"not a directory: {d}")
    return Path(os.path.realpath(path))


def real_dir(path: Path) -> Path | None:
    """Realpath of ``path`` when it is an existing directory and not a symlink, else None."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return None
        return Path(os.path.realpath(path))
    except OSError:
        return None


def safe_dir(path: Path, root: Path) -> bool:
    """Read side: ``path`` exists, is a real directory (not a symlink) inside ``root``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    try:
        return is_within(Path(os.path.realpath(root)), Path(os.path.realpath(path)))
    except OSError:
        return False


def safe_file(path: Path, parent: Path) -> bool:
    """Read side: ``path`` is a regular non-symlink file whose realpath is inside ``parent``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    try:
        return is_within(Path(os.path.realpath(parent)), Path(os.path.realpath(path)))
    except OSError:
        return False


def check_write_target(path: Path) -> None:
    """An existing write target must be a regular file, not a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"refusing to write non-regular file or symlink: {path}")


# ---------------------------------------------------------------- writes


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_no_follow(path: Path, data: str | bytes, mode: int = FILE_MODE) -> None:
    """Truncate-and-write, refusing a symlink at the final component."""
    b = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_NOFOLLOW, mode)
    try:
        _write_all(fd, b)
    finally:
        os.close(fd)


def append_no_follow(path: Path, data: str | bytes, mode: int = FILE_MODE) -> None:
    """Append in a single write, refusing a symlink at the final component."""
    b = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_NOFOLLOW, mode)
    try:
        _write_all(fd, b)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes, mode: int = FILE_MODE, *, durable: bool = True) -> None:
    """Write via a unique temp file in the same directory, fsync, then rename.

    The target must not be a symlink or other non-regular file. With
    ``durable`` the temp file and the directory are fsynced, so after a crash
    the path holds either the old or the new content, never a torn write.
    """
    path = Path(path)
    check_write_target(path)
    b = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, mode)
    try:
        try:
            _write_all(fd, b)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    try:
        dfd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_text_no_follow(path: Path, max_bytes: int | None = None) -> str:
    """Read a regular file as UTF-8 (replacement on bad bytes), refusing symlinks."""
    fd = os.open(path, os.O_RDONLY | O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"not a regular file: {path}")
        chunks: list[bytes] = []
        remaining = max_bytes if max_bytes is not None else st.st_size + 1
        while True:
            chunk = os.read(fd, min(1 << 20, max(1, remaining)) if max_bytes is not None else 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if max_bytes is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def remove_tree_safely(path: Path, root: Path) -> int:
    """Remove a directory below ``root`` without following symlinks.

    Returns the number of files removed. Refuses anything outside ``root`` or
    a symlinked directory; symlinks inside are unlinked, never followed.
    """
    path = Path(os.path.abspath(path))
    if not is_within(root, path) or Path(os.path.abspath(root)) == path:
        raise UnsafePathError(f"refusing to remove outside the state root: {path}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"not a real directory: {path}")
    removed = 0
    for dirpath, dirnames, filenames in os.walk(path, topdown=False, followlinks=False):
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
        for name in dirnames:
            p = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return removed
