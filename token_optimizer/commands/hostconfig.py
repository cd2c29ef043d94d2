"""Where each host keeps our plugin's switches and config, read for ``config`` and ``doctor``.

* OpenClaw: ``$OPENCLAW_CONFIG_PATH`` or ``$OPENCLAW_STATE_DIR/openclaw.json`` (JSON5-ish),
  ``plugins.entries.token-optimizer-openclaw`` (``enabled``, ``hooks``, ``config``).
* Hermes: ``$HERMES_HOME/config.yaml`` (default ``~/.hermes``), ``plugins.enabled`` (a list)
  and ``plugins.entries.token-optimizer`` (our config). PyYAML is used when importable (Hermes
  installs it); otherwise a small reader of YAML's block subset (mappings, ``- `` lists,
  ``[a, b]`` lists, plain and quoted scalars) is enough for these keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from token_optimizer.hosts import hermes_home
from token_optimizer.hosts.openclaw_install import PLUGIN_ID, load_json5ish, openclaw_config_path

HERMES_PLUGIN = "token-optimizer"
HOSTS = ("openclaw", "hermes")


@dataclass
class HostConfig:
    host: str
    path: Path
    document: dict[str, Any] | None
    """The parsed file (``None``: missing or unreadable)."""
    error: str | None = None

    @property
    def found(self) -> bool:
        return self.path.is_file()

    def plugins(self) -> Mapping[str, Any]:
        p = (self.document or {}).get("plugins")
        return p if isinstance(p, Mapping) else {}

    def entry(self) -> Mapping[str, Any] | None:
        entries = self.plugins().get("entries")
        name = PLUGIN_ID if self.host == "openclaw" else HERMES_PLUGIN
        e = entries.get(name) if isinstance(entries, Mapping) else None
        return e if isinstance(e, Mapping) else None

    def plugin_config(self) -> Mapping[str, Any] | None:
        """Our plugin config as the host hands it to us."""
        e = self.entry()
        if e is None:
            return None
        if self.host == "openclaw":
            c = e.get("config")
            return c if isinstance(c, Mapping) else None
        return e


def openclaw() -> HostConfig:
    path = openclaw_config_path()
    try:
        doc = load_json5ish(path.read_text())
    except FileNotFoundError:
        return HostConfig("openclaw", path, None)
    except (OSError, ValueError) as exc:
        return HostConfig("openclaw", path, None, f"unreadable: {exc}")
    return HostConfig("openclaw", path, doc if isinstance(doc, dict) else None,
                      None if isinstance(doc, dict) else "not a JSON object")


def hermes() -> HostConfig:
    path = hermes_home.hermes_home() / "config.yaml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return HostConfig("hermes", path, None)
    except OSError as exc:
        return HostConfig("hermes", path, None, f"unreadable: {exc}")
    try:
        doc = load_yaml(text)
    except ValueError as exc:
        return HostConfig("hermes", path, None, f"unreadable: {exc}")
    return HostConfig("hermes", path, doc if isinstance(doc, dict) else None,
                      None if isinstance(doc, dict) or doc is None else "not a mapping")


def host_config(host: str) -> HostConfig:
    return openclaw() if host == "openclaw" else hermes()


def detect() -> list[HostConfig]:
    """The hosts whose config file exists (OpenClaw first)."""
    return [c for c in (openclaw(), hermes()) if c.found]


# ---------------------------------------------------------------- a small YAML reader


def load_yaml(text: str) -> Any:
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return _mini_yaml(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


_COMMENT = re.compile(r"\s+#.*$")


def _scalar(raw: str) -> Any:
    s = _COMMENT.sub("", raw).strip()
    if not s or s in ("~", "null", "Null", "NULL"):
        return None
    if s[0] in "\"'" and s[-1] == s[0] and len(s) >= 2:
        return json.loads(s) if s[0] == '"' else s[1:-1].replace("''", "'")
    if s.startswith("[") and s.endswith("]"):
        inner = s[1:-1].strip()
        return [_scalar(x) for x in inner.split(",")] if inner else []
    if s.startswith("{") and s.endswith("}"):
        inner = s[1:-1].strip()
        out: dict[str, Any] = {}
        for part in inner.split(",") if inner else []:
            k, _, v = part.partition(":")
            out[str(_scalar(k))] = _scalar(v)
        return out
    low = s.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?", s):
        return float(s)
    return s


def _mini_yaml(text: str) -> Any:
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#") or raw.strip() in ("---", "..."):
            continue
        lines.append((len(raw) - len(raw.lstrip(" ")), raw.strip()))
    pos = 0

    def block(indent: int) -> Any:
        nonlocal pos
        if pos >= len(lines):
            return None
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            items: list[Any] = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("-"):
                rest = lines[pos][1][1:].strip()
                pos += 1
                if rest:
                    items.append(_scalar(rest))
                elif pos < len(lines) and lines[pos][0] > indent:
                    items.append(block(lines[pos][0]))
                else:
                    items.append(None)
            return items
        out: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent:
            content = lines[pos][1]
            m = re.match(r"""^("[^"]*"|'[^']*'|[^:]+?)\s*:(?:\s+(.*))?$""", content)
            if m is None:
                raise ValueError(f"cannot read line: {content!r}")
            key = str(_scalar(m.group(1)))
            rest = m.group(2)
            pos += 1
            if rest is not None and _COMMENT.sub("", " " + rest).strip():
                out[key] = _scalar(rest)
            elif pos < len(lines) and (lines[pos][0] > indent or (
                    lines[pos][0] == indent and lines[pos][1].startswith("-"))):
                out[key] = block(lines[pos][0])
            else:
                out[key] = None
        return out

    if not lines:
        return None
    result = block(lines[0][0])
    if pos < len(lines):
        raise ValueError(f"unexpected indentation at {lines[pos][1]!r}")
    return result
