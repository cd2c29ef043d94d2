"""State root, session-id sanitising and safe file operations.

Every file the package writes lives under one *state root*:
``TOKEN_OPTIMIZER_HOME`` when set; under OpenClaw
``$OPENCLAW_STATE_DIR/token-optimizer`` (default ``~/.openclaw/token-optimizer``,
the TypeScript plugin's location, so the two can share state); under Hermes
``<HERMES_HOME>/token-optimizer``. :func:`resolve_paths` gives the OpenClaw
default; the Hermes plugin and the command line
(:mod:`token_optimizer.commands.stateroot`) pick the Hermes root themselves.

Every read, write, listing and unlink under the state root goes through a
:class:`CheckedDir` (:func:`open_checked_dir`): the directory is reached from
the root one level at a time without following a symlink, and each operation
is relative to that directory's descriptor, with ``O_NOFOLLOW`` on the final
component. Directories are created level by level with mode 0700 (Node's
recursive ``mkdir`` applies the mode to every level it creates;
``os.makedirs`` does not). The path-level helpers (:func:`atomic_write`,
:func:`append_no_follow`, :func:`read_text_no_follow` ...) are thin wrappers
around it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from token_optimizer import settings

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
    """The state root: ``TOKEN_OPTIMIZER_HOME``, ``$OPENCLAW_STATE_DIR/token-optimizer``
    (default ``~/.openclaw/token-optimizer``) or, under Hermes,
    ``<HERMES_HOME>/token-optimizer``."""
    openclaw_dir: Path
    """The root's parent (``$OPENCLAW_STATE_DIR``, default ``~/.openclaw``): global
    ``.contextignore`` and transcript discovery."""

    # (cached: hooks ask for these on every call; the instance is frozen, so they cannot go stale)
    @functools.cached_property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @functools.cached_property
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
        env = settings.env_raw(settings.HOME)
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
    with open_checked_dir(base if base is not None else path, path, create=True) as d:
        return d.realpath


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


# ---------------------------------------------------------------- checked directories
#
# Every file operation under the state root goes through a CheckedDir: the
# directory is reached from the root one level at a time with
# O_DIRECTORY | O_NOFOLLOW (openat), so a symlink planted at any level below
# the root stops the walk, and every later operation (open, list, unlink,
# rename) is relative to that directory's descriptor, so the directory cannot
# be swapped for a symlink between the check and the use.

O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_OPEN = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
HAVE_DIR_FD = bool(O_NOFOLLOW and O_DIRECTORY) and {
    os.open, os.stat, os.unlink, os.rmdir, os.mkdir, os.rename, os.replace,
} <= os.supports_dir_fd and os.listdir in os.supports_fd
"""True on Linux and macOS. Elsewhere the checks fall back to ``lstat`` per level."""
_UNSAFE_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})


def _check_name(name: str) -> None:
    if (not name or name in (".", "..") or "/" in name or "\0" in name
            or os.sep in name or (os.altsep is not None and os.altsep in name)):
        raise UnsafePathError(f"not a plain file name: {name!r}")


def _open_level(name: str, dir_fd: int | None, create: bool, shown: Path) -> int:
    """Open one directory level without following a symlink (created 0700 when asked)."""
    for attempt in (0, 1):
        try:
            return os.open(name, _DIR_OPEN, dir_fd=dir_fd)
        except FileNotFoundError:
            if not create or attempt:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in _UNSAFE_ERRNOS:
                raise UnsafePathError(f"symlinked or non-directory path refused: {shown}") from None
            raise
    raise FileNotFoundError(shown)  # pragma: no cover - the loop always returns or raises


def _lstat_level(path: Path, create: bool) -> None:
    """Fallback without ``dir_fd``: one level must be a real directory."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, DIR_MODE)
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"symlinked or non-directory path refused: {path}")


class CheckedDir:
    """A directory at or below a state root whose every level is a real directory.

    Get one from :func:`open_checked_dir`; use it as a context manager. File
    names passed to its methods are single components (no separators). Every
    open adds ``O_NOFOLLOW``, and reads and writes refuse non-regular files.
    """

    __slots__ = ("_rel", "_root", "fd", "path")

    def __init__(self, path: Path, fd: int | None, root: Path, rel: tuple[str, ...]) -> None:
        self.path = path
        """Lexical absolute path."""
        self.fd = fd
        """The directory's descriptor (None on platforms without ``dir_fd``)."""
        self._root = root
        self._rel = rel

    def __enter__(self) -> CheckedDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    @property
    def realpath(self) -> Path:
        """The directory's real path (the root resolved; levels below it are real)."""
        return Path(os.path.realpath(self._root)).joinpath(*self._rel)

    def _at(self, name: str) -> tuple[str, int | None]:
        _check_name(name)
        if self.fd is None:
            return os.path.join(self.path, name), None
        return name, self.fd

    def subdir(self, name: str, *, create: bool = False) -> CheckedDir:
        """A checked child directory (created 0700 when ``create``)."""
        p, dfd = self._at(name)
        shown = self.path / name
        if self.fd is None:
            _lstat_level(shown, create)
            return CheckedDir(shown, None, self._root, (*self._rel, name))
        return CheckedDir(shown, _open_level(p, dfd, create, shown), self._root, (*self._rel, name))

    def lstat(self, name: str) -> os.stat_result:
        p, dfd = self._at(name)
        return os.stat(p, dir_fd=dfd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def listdir(self) -> list[str]:
        return os.listdir(self.fd if self.fd is not None else self.path)

    def open(self, name: str, flags: int, mode: int = FILE_MODE) -> int:
        """``os.open`` relative to this directory, never following a final symlink."""
        p, dfd = self._at(name)
        try:
            return os.open(p, flags | O_NOFOLLOW | O_CLOEXEC, mode, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise UnsafePathError(f"symlink refused: {self.path / name}") from None
            raise

    def _open_regular(self, name: str, flags: int, mode: int = FILE_MODE) -> int:
        # O_NONBLOCK: a planted FIFO must not hang the open; it is then refused below.
        fd = self.open(name, flags | O_NONBLOCK, mode)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f"not a regular file: {self.path / name}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_bytes(self, name: str, max_bytes: int | None = None) -> bytes:
        return self._read(name, max_bytes)[0]

    def _read(self, name: str, max_bytes: int | None) -> tuple[bytes, os.stat_result]:
        fd = self._open_regular(name, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            chunks: list[bytes] = []
            remaining = max_bytes
            while remaining is None or remaining > 0:
                chunk = os.read(fd, 1 << 20 if remaining is None else min(1 << 20, remaining))
                if not chunk:
                    break
                chunks.append(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
            return b"".join(chunks), st
        finally:
            os.close(fd)

    def read_tail(self, name: str, max_bytes: int) -> tuple[bytes, bool]:
        """The last ``max_bytes`` of a regular file (no symlink followed), and whether
        the file was longer (then the first line of the data is partial)."""
        fd = self._open_regular(name, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - max(0, max_bytes))
            chunks: list[bytes] = []
            pos = start
            while pos < size:
                chunk = os.pread(fd, min(1 << 20, size - pos), pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
            return b"".join(chunks), start > 0
        finally:
            os.close(fd)

    def read_text(self, name: str, max_bytes: int | None = None) -> str:
        """UTF-8 with replacement of bad bytes."""
        return self.read_bytes(name, max_bytes).decode("utf-8", errors="replace")

    def read_jsonl(self, name: str, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """The object rows of a JSON-lines file; see :func:`parse_jsonl`."""
        data, st = self._read(name, max_bytes)
        capped = max_bytes is not None and len(data) >= max_bytes
        return parse_jsonl(data, self.path / name, capped=capped, ident=(st.st_dev, st.st_ino))

    def write(self, name: str, data: str | bytes, mode: int = FILE_MODE, *,
              exclusive: bool = False, durable: bool = False) -> None:
        """Truncate and write in place (``exclusive``: the file must not exist; ``durable``: fsync)."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = self._open_regular(name, flags, mode)
        try:
            _write_all(fd, _bytes(data))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, name: str, data: str | bytes, mode: int = FILE_MODE) -> int:
        """Append ``data`` in one ``O_APPEND`` write, starting on a fresh line.

        When the file does not end with ``"\\n"`` (a torn last row), a newline
        is written first, in the same write, so the new row stays readable.
        Only the last byte is read. Returns the file's size before the write.
        """
        b = _bytes(data)
        try:
            fd = self._open_regular(name, os.O_RDWR | os.O_CREAT | os.O_APPEND, mode)
            readable = True
        except PermissionError:
            fd = self._open_regular(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
            readable = False
        try:
            size = os.fstat(fd).st_size
            if size > 0 and readable and _last_byte(fd, size) != b"\n":
                b = b"\n" + b
            _write_all(fd, b)
            return size
        finally:
            os.close(fd)

    def atomic_write(self, name: str, data: str | bytes, mode: int = FILE_MODE, *,
                     durable: bool = True) -> None:
        """Write a unique temp file in this directory, (fsync,) rename over ``name``."""
        _check_name(name)
        try:
            st = self.lstat(name)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(f"refusing to replace non-regular file or symlink: {self.path / name}")
        except FileNotFoundError:
            pass
        payload = _bytes(data)
        self.replace_via_temp(name, lambda fd: _write_all(fd, payload), mode, durable=durable)

    def replace_via_temp(self, name: str, fill: Callable[[int], None], mode: int = FILE_MODE,
                         *, durable: bool = True) -> None:
        """Create a unique temp file, let ``fill`` write it, (fsync,) rename it over ``name``.

        The temp file is removed when anything fails; the rename is the commit point.
        """
        tmp = temp_name(name)
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            try:
                fill(fd)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self.rename(tmp, name)
        except BaseException:
            with contextlib.suppress(OSError):
                self.unlink(tmp)
            raise
        if durable:
            self.fsync()

    def rename(self, src: str, dst: str) -> None:
        s, dfd = self._at(src)
        d, _ = self._at(dst)
        os.replace(s, d, src_dir_fd=dfd, dst_dir_fd=dfd)

    def unlink(self, name: str) -> None:
        """Remove a directory entry (a symlink itself, never what it points to)."""
        p, dfd = self._at(name)
        os.unlink(p, dir_fd=dfd)

    def rmdir(self, name: str) -> None:
        p, dfd = self._at(name)
        os.rmdir(p, dir_fd=dfd)

    def fsync(self) -> None:
        if self.fd is None:
            fsync_dir(self.path)
            return
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock on this directory, across threads and processes; see :func:`dir_lock`."""
        return dir_lock(self)


_LEVELS: dict[tuple[str, str], tuple[Path, Path, tuple[str, ...]]] = {}
"""(root, path) → their absolute forms and the checked names between them, for absolute
pairs (lexical only, so it never goes stale; the handful of state dirs hit it every call)."""
_LEVELS_CAP = 512


def _levels(root: Path, path: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """``root`` and ``path`` made absolute and the plain names leading from one to the other
    (:class:`UnsafePathError` when ``path`` is not below ``root`` or a name is not plain)."""
    key = (os.fspath(root), os.fspath(path))
    hit = _LEVELS.get(key)
    if hit is not None:
        return hit
    r = Path(os.path.abspath(root))
    p = Path(os.path.abspath(path))
    if not is_within(r, p):
        raise UnsafePathError(f"{p} is not below {r}")
    rel = os.path.relpath(p, r)
    parts: tuple[str, ...] = () if rel == "." else tuple(rel.split(os.sep))
    for part in parts:
        _check_name(part)
    if os.path.isabs(key[0]) and os.path.isabs(key[1]):  # (a relative pair follows the cwd)
        if len(_LEVELS) >= _LEVELS_CAP:
            _LEVELS.clear()
        _LEVELS[key] = (r, p, parts)
    return r, p, parts


def open_checked_dir(root: Path, path: Path, *, create: bool = False) -> CheckedDir:
    """Open ``path`` (``root`` or below it) with every level from ``root`` down checked.

    ``root`` itself and each level below it must be a real directory, not a
    symlink (:class:`UnsafePathError` otherwise, before anything is created
    below a bad level). Levels above ``root`` are trusted. With ``create``,
    missing levels are created with mode 0700; without it a missing level
    raises ``FileNotFoundError``.
    """
    r, p, parts = _levels(root, path)
    if create:
        trusted: list[Path] = []
        q = r.parent
        while not os.path.lexists(q) and q.parent != q:
            trusted.append(q)
            q = q.parent
        for d in reversed(trusted):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, DIR_MODE)
    if not HAVE_DIR_FD:
        cur = r
        _lstat_level(cur, create)
        for part in parts:
            cur = cur / part
            _lstat_level(cur, create)
        return CheckedDir(p, None, r, parts)
    fd = _open_level(str(r), None, create, r)
    cur = r
    try:
        for part in parts:
            cur = cur / part
            nxt = _open_level(part, fd, create, cur)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return CheckedDir(p, fd, r, parts)


# ---------------------------------------------------------------- cross-process locks

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


class _HeldLock:
    __slots__ = ("depth", "fd", "rlock", "users")

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = -1
        self.users = 0


_held: dict[tuple[int, int], _HeldLock] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def dir_lock(d: CheckedDir) -> Iterator[None]:
    """Exclusive ``flock`` on a directory, re-entrant within a thread.

    Threads of one process exclude each other through a per-directory
    ``RLock``; processes through ``flock`` on the directory itself (no lock
    file is created). Nesting in one thread takes the ``flock`` once, so a
    second open of the same directory cannot deadlock against the first.
    Without ``fcntl`` (Windows) only the in-process part applies.
    """
    st = os.fstat(d.fd) if d.fd is not None else os.stat(d.path)
    key = (st.st_dev, st.st_ino)
    with _held_guard:
        ent = _held.get(key)
        if ent is None:
            ent = _held[key] = _HeldLock()
        ent.users += 1
    try:
        with ent.rlock:
            if ent.depth == 0 and _fcntl is not None:
                fd = os.dup(d.fd) if d.fd is not None else os.open(d.path, os.O_RDONLY)
                try:
                    _fcntl.flock(fd, _fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                ent.fd = fd
            ent.depth += 1
            try:
                yield
            finally:
                ent.depth -= 1
                if ent.depth == 0 and ent.fd >= 0:
                    fd, ent.fd = ent.fd, -1
                    os.close(fd)  # closing the last descriptor releases the flock
    finally:
        with _held_guard:
            ent.users -= 1
            if ent.users == 0:
                del _held[key]


# ---------------------------------------------------------------- temp files

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp$")
STALE_TEMP_AGE_S = 60.0
"""A temp file of a live process is removed only once it is this old."""


def temp_name(target: str) -> str:
    """``.<target>.<pid>.<8 hex>.tmp``: the temp name :meth:`CheckedDir.atomic_write` uses."""
    return f".{target}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def pid_alive(pid: int) -> bool:
    """False only when no process ``pid`` exists (our own pid counts as alive)."""
    if pid <= 0 or pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def stale_temps(d: CheckedDir, *, now: float | None = None,
                max_age_s: float = STALE_TEMP_AGE_S) -> list[tuple[str, str]]:
    """``(temp name, target name)`` of our temp files in ``d`` that no live writer owns.

    A temp file is stale when its writer's pid is dead, or when it is older
    than ``max_age_s`` (a writer that is alive but wedged, or a reused pid).
    """
    t = time.time() if now is None else now
    out: list[tuple[str, str]] = []
    for name in d.listdir():
        m = _TEMP_RE.match(name)
        if m is None:
            continue
        try:
            st = d.lstat(name)
        except OSError:
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue
        if t - st.st_mtime > max_age_s or not pid_alive(int(m.group("pid"))):
            out.append((name, m.group("target")))
    return out


def remove_stale_temps(d: CheckedDir, *, now: float | None = None,
                       max_age_s: float = STALE_TEMP_AGE_S) -> int:
    """Unlink :func:`stale_temps` of ``d``; returns how many were removed. Never raises."""
    removed = 0
    try:
        temps = stale_temps(d, now=now, max_age_s=max_age_s)
    except OSError:
        return 0
    for name, _target in temps:
        with contextlib.suppress(OSError):
            d.unlink(name)
            removed += 1
    return removed


# ---------------------------------------------------------------- JSON lines

_WARNED_CAP = 1024
_warned: OrderedDict[tuple[str, int, int, int], None] = OrderedDict()
_warned_lock = threading.Lock()


def parse_jsonl(data: bytes, path: Path, *, capped: bool = False,
                ident: tuple[int, int] = (0, 0)) -> list[dict[str, Any]]:
    """The JSON-object rows of a JSON-lines file, skipping unreadable lines.

    Blank lines are skipped silently. Lines that do not parse as a JSON
    object (a torn last row, garbage, NUL bytes) are skipped, and the file
    gets one warning line naming it and the count, once per process for a
    given damage (keyed by the file and the offset of its first bad line).
    ``capped``: the data was cut at a size limit, so its last line is partial
    and dropped without a warning.
    """
    from token_optimizer.jsutil import js_trim, loads

    lines = data.split(b"\n")
    if capped and lines:
        lines.pop()
    rows: list[dict[str, Any]] = []
    bad = 0
    first_bad = -1
    offset = 0
    for raw in lines:
        s = js_trim(raw.decode("utf-8", errors="replace"))
        if s:
            try:
                v = loads(s)
            except ValueError:
                v = None
            if isinstance(v, dict):
                rows.append(v)
            else:
                bad += 1
                if first_bad < 0:
                    first_bad = offset
        offset += len(raw) + 1
    if bad:
        key = (str(path), ident[0], ident[1], first_bad)
        with _warned_lock:
            seen = key in _warned
            if not seen:
                _warned[key] = None
                while len(_warned) > _WARNED_CAP:
                    _warned.popitem(last=False)
        if not seen:
            log.warning("[token-optimizer] skipped %d unreadable line(s) in %s", bad, path)
    return rows


# ---------------------------------------------------------------- path-level helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _last_byte(fd: int, size: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, 1, size - 1)
    os.lseek(fd, size - 1, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, 1)  # pragma: no cover


def checked_parent(path: Path, root: Path | None = None, *,
                   create: bool = False) -> tuple[CheckedDir, str]:
    """``(checked parent directory, file name)`` of ``path``.

    ``root`` defaults to the parent itself (then only the parent's own last
    component is checked). The caller closes the directory.
    """
    p = Path(os.path.abspath(path))
    return open_checked_dir(root if root is not None else p.parent, p.parent, create=create), p.name


def write_no_follow(path: Path, data: str | bytes, mode: int = FILE_MODE, *,
                    root: Path | None = None) -> None:
    """Truncate-and-write, refusing a symlink at any level from ``root`` down."""
    d, name = checked_parent(path, root)
    with d:
        d.write(name, data, mode)


def append_no_follow(path: Path, data: str | bytes, mode: int = FILE_MODE, *,
                     root: Path | None = None) -> None:
    """Append whole lines in a single write, on a fresh line; see :meth:`CheckedDir.append`."""
    d, name = checked_parent(path, root)
    with d:
        d.append(name, data, mode)


def atomic_write(path: Path, data: str | bytes, mode: int = FILE_MODE, *, durable: bool = True,
                 root: Path | None = None) -> None:
    """Write via a unique temp file in the same directory, (fsync,) then rename.

    The target must not be a symlink or other non-regular file. With
    ``durable`` the temp file and the directory are fsynced, so after a crash
    the path holds either the old or the new content, never a torn write.
    """
    d, name = checked_parent(path, root)
    with d:
        d.atomic_write(name, data, mode, durable=durable)


def fsync_dir(path: Path) -> None:
    try:
        dfd = os.open(path, os.O_RDONLY | O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def read_text_no_follow(path: Path, max_bytes: int | None = None, *,
                        root: Path | None = None) -> str:
    """Read a regular file as UTF-8 (replacement on bad bytes), refusing symlinks."""
    d, name = checked_parent(path, root)
    with d:
        return d.read_text(name, max_bytes)


def read_jsonl(path: Path, *, root: Path | None = None,
               max_bytes: int | None = None) -> list[dict[str, Any]]:
    """The object rows of a JSON-lines file (missing file: ``FileNotFoundError``); see :func:`parse_jsonl`."""
    d, name = checked_parent(path, root)
    with d:
        return d.read_jsonl(name, max_bytes)


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


def rewrite_jsonl(d: CheckedDir, name: str, keep: Callable[[dict[str, Any]], bool], *,
                  max_bytes: int | None = None, durable: bool = True) -> int:
    """Rewrite a JSON-lines file with only the rows ``keep`` accepts, newest ``max_bytes`` at most.

    Unreadable lines are dropped too. Kept lines are written back unchanged
    (trimmed), oldest first. Rows another process appends while the file is
    being rewritten are carried over to the new file. Returns the number of
    lines dropped; the file is left alone when nothing is dropped.
    """
    from token_optimizer.jsutil import js_trim, loads

    fd = d._open_regular(name, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        kept: list[bytes] = []
        dropped = 0
        for raw in data.split(b"\n"):
            s = js_trim(raw.decode("utf-8", errors="replace"))
            if not s:
                continue
            try:
                row = loads(s)
            except ValueError:
                row = None
            if isinstance(row, dict) and keep(row):
                kept.append(s.encode("utf-8"))
            else:
                dropped += 1
        if max_bytes is not None:
            total = sum(len(k) + 1 for k in kept)
            start = 0
            while total > max_bytes and start < len(kept):
                total -= len(kept[start]) + 1
                start += 1
            dropped += start
            kept = kept[start:]
        if dropped == 0:
            return 0
        def fill(tfd: int) -> None:
            out = b"".join(k + b"\n" for k in kept)
            _write_all(tfd, out)
            # rows appended meanwhile (the read position is at the old end)
            while extra := os.read(fd, 1 << 20):
                if out and not out.endswith(b"\n"):
                    extra = b"\n" + extra
                _write_all(tfd, extra)
                out = extra

        d.replace_via_temp(name, fill, durable=durable)
        return dropped
    finally:
        os.close(fd)


def prune_jsonl_by_age(d: CheckedDir, name: str, days: float, max_bytes: int) -> int:
    """Drop rows of ``name`` whose ``timestamp`` is unparsable or older than ``days``, then the
    oldest rows past ``max_bytes``; returns how many were dropped."""
    from token_optimizer.jsutil import now_ms, parse_iso_ms

    cutoff = now_ms() - days * 86_400_000

    def fresh(row: dict[str, Any]) -> bool:
        ts = parse_iso_ms(row.get("timestamp"))
        return not math.isnan(ts) and ts >= cutoff

    return rewrite_jsonl(d, name, fresh, max_bytes=max_bytes)


def trim_jsonl_tail(d: CheckedDir, name: str, keep_bytes: int, *, durable: bool = True) -> int:
    """Size cap: keep only the newest whole lines of ``name`` that fit in ``keep_bytes``."""
    return rewrite_jsonl(d, name, lambda _row: True, max_bytes=keep_bytes, durable=durable)
