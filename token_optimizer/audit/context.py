"""Per-message context overhead: what every request carries before the user types.

One :class:`ContextAudit` per host, with the reference's keys
(``totalOverhead``, ``components[]``, ``skills[]``, ``mcpServers[]``,
``recommendations[]``, ``manage``) plus ``host``, ``root`` and ``notes``.

OpenClaw (2026.9.x, checked against the installed host's docs
``gateway/config-agents/workspace-and-bootstrap.md``, ``tools/skills.md``,
``tools/mcp.md``):

* config is ``<state dir>/openclaw.json`` (the reference reads ``config.json``,
  which the host never writes); the state dir is ``$OPENCLAW_STATE_DIR`` or
  ``~/.openclaw``;
* bootstrap files (``AGENTS.md``, ``SOUL.md``, ``TOOLS.md``, ``IDENTITY.md``,
  ``USER.md``, ``HEARTBEAT.md``, ``BOOTSTRAP.md``, ``MEMORY.md``) live in the
  agent workspace (``agents.defaults.workspace``, ``$OPENCLAW_WORKSPACE_DIR``,
  else ``<state dir>/workspace``) and are injected up to
  ``bootstrapMaxChars`` each (default 20,000; ``USER.md`` 4,000) and
  ``bootstrapTotalMaxChars`` in all (default 60,000); the counted tokens are
  what is injected, not the file size;
* skills: ``<workspace>/skills``, ``<workspace>/.agents/skills``,
  ``~/.agents/skills``, ``<state dir>/skills`` and ``skills.load.extraDirs``;
  ``skills.entries.<name>.enabled: false`` turns one off; each active skill
  costs its name and description in the system prompt's skill list;
* MCP servers: ``mcp.servers.<name>`` (``command``/``url``, ``enabled``,
  ``toolFilter.include``); the legacy ``mcpServers``/``mcp_servers`` keys are
  read too.

Hermes (0.19.0): ``$HERMES_HOME`` (default ``~/.hermes``) ``config.yaml``
(``toolsets``, ``mcp_servers``, ``skills.disabled``/``external_dirs``),
``SOUL.md``, ``memories/MEMORY.md`` and ``memories/USER.md``, skills under
``<home>/skills/**/SKILL.md``. Reading YAML needs PyYAML (the ``audit`` extra;
Hermes itself ships it); without it the config-derived parts are skipped with
a note. Tool counts per toolset come from Hermes' own ``toolsets`` module when
it is importable (the plugin runs in Hermes' environment), else they are
unknown and say so.

Token figures are estimates: ``ceil(chars / 3.8)`` (the reference's context
estimator), files over 1 MB count as 0, and tool definitions count
:data:`TOOL_DEF_TOKENS` each.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CORE_PROMPT_TOKENS = 15_000
"""The host's own system prompt, which no file shows (the reference's fixed estimate)."""
TOOL_DEF_TOKENS = 150
"""Estimated tokens of one tool definition (name, description, JSON schema) in a request."""
SKILL_DEFAULT_TOKENS = 100
SKILL_MAX_TOKENS = 150
MAX_FILE_BYTES = 1_000_000
MAX_SKILLS = 2_000
REFERENCE_WINDOW = 200_000
OPENCLAW_BOOTSTRAP = ("AGENTS.md", "SOUL.md", "TOOLS.md", "IDENTITY.md", "USER.md",
                      "HEARTBEAT.md", "BOOTSTRAP.md", "MEMORY.md")
_CATEGORY = {"SOUL.md": "personality", "IDENTITY.md": "personality", "USER.md": "memory",
             "MEMORY.md": "memory", "AGENTS.md": "agents", "TOOLS.md": "tools",
             "HEARTBEAT.md": "config", "BOOTSTRAP.md": "config"}


def estimate_tokens(text: str) -> int:
    """``ceil(len/3.8)`` in UTF-16 units (analysis.md §8.1); 0 for empty text."""
    if not text:
        return 0
    n = len(text.encode("utf-16-le")) // 2
    return math.ceil(n / 3.8)


def read_small(path: Path) -> str:
    """The file's text, or ``""`` when missing, not a file, over 1 MB or unreadable."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return ""
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- shapes


@dataclass
class Component:
    name: str
    path: str
    tokens: int
    category: str
    optimizable: bool
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "path": self.path, "tokens": self.tokens,
                             "category": self.category, "isOptimizable": self.optimizable}
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass
class Skill:
    name: str
    path: str
    tokens: int
    full_file_tokens: int
    description: str
    archived: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "tokens": self.tokens,
                "fullFileTokens": self.full_file_tokens, "description": self.description,
                "isArchived": self.archived}


@dataclass
class McpServer:
    name: str
    command: str
    tool_count: int
    disabled: bool
    tools_known: bool = False

    @property
    def tokens(self) -> int:
        return 0 if self.disabled else self.tool_count * TOOL_DEF_TOKENS

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "command": self.command, "toolCount": self.tool_count,
                "isDisabled": self.disabled, "toolsKnown": self.tools_known,
                "tokens": self.tokens}


@dataclass
class ContextAudit:
    host: str
    root: str
    found: bool
    components: list[Component] = field(default_factory=list)
    skills: list[Skill] = field(default_factory=list)
    mcp_servers: list[McpServer] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    toolsets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_overhead(self) -> int:
        return sum(c.tokens for c in self.components)

    def to_json(self) -> dict[str, Any]:
        active = [s.name for s in self.skills if not s.archived]
        archived = [s.name for s in self.skills if s.archived]
        d: dict[str, Any] = {
            "host": self.host, "root": self.root, "found": self.found,
            "totalOverhead": self.total_overhead,
            "components": [c.to_json() for c in self.components],
            "skills": [s.to_json() for s in self.skills],
            "mcpServers": [m.to_json() for m in self.mcp_servers],
            "recommendations": list(self.recommendations),
            "manage": {"skills": {"active": active, "archived": archived},
                       "mcpServers": {"active": [m.name for m in self.mcp_servers if not m.disabled],
                                      "disabled": [m.name for m in self.mcp_servers if m.disabled]}},
            "notes": list(self.notes),
        }
        if self.toolsets:
            d["toolsets"] = self.toolsets
        return d


# ---------------------------------------------------------------- config files


_LINE_COMMENT = re.compile(r'("(?:\\.|[^"\\])*")|//[^\n]*|/\*.*?\*/', re.S)
_TRAILING_COMMA = re.compile(r'("(?:\\.|[^"\\])*")|,(\s*[}\]])')


def load_json_config(path: Path) -> tuple[dict[str, Any], str | None]:
    """A JSON config (comments and trailing commas tolerated); ``({}, why)`` when unusable."""
    text = read_small(path)
    if not text:
        return {}, None if not path.exists() else f"{path.name} is empty or too large"
    for attempt in (text, _TRAILING_COMMA.sub(lambda m: m.group(1) or m.group(2),
                                              _LINE_COMMENT.sub(lambda m: m.group(1) or "", text))):
        try:
            v = orjson.loads(attempt)
        except orjson.JSONDecodeError:
            continue
        return (v, None) if isinstance(v, dict) else ({}, f"{path.name} is not an object")
    return {}, f"{path.name} could not be parsed (only JSON with comments is understood)"


def load_yaml_config(path: Path) -> tuple[dict[str, Any], str | None]:
    text = read_small(path)
    if not text:
        return {}, None
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return {}, (f"{path.name} not read: PyYAML is not installed "
                    "(pip install 'token-optimizer[audit]')")
    try:
        v = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError and friends
        return {}, f"{path.name} could not be parsed: {exc.__class__.__name__}"
    return (v, None) if isinstance(v, dict) else ({}, None)


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _expand(p: str, base: Path) -> Path:
    q = Path(os.path.expandvars(os.path.expanduser(p)))
    return q if q.is_absolute() else base / q


# ---------------------------------------------------------------- skills


def skill_meta(content: str) -> tuple[str | None, str]:
    """(front-matter ``name``, description) of a SKILL.md."""
    name: str | None = None
    desc = ""
    lines = content.splitlines()
    if lines and lines[0].strip() == "---":
        for ln in lines[1:]:
            s = ln.strip()
            if s == "---":
                break
            if ln.startswith("name:"):
                name = s[5:].strip().strip("'\"") or None
            elif ln.startswith("description:"):
                desc = s[12:].strip().strip("'\"")
    if not desc:
        desc = _extract_description(content)
    return name, desc[:200]


def _extract_description(content: str) -> str:
    """The reference's rule: the first plain line after a ``# `` heading, else the first plain line."""
    seen_heading = False
    for ln in content.splitlines():
        s = ln.strip()
        if s.startswith("# "):
            seen_heading = True
            continue
        if seen_heading and s and not s.startswith("#"):
            return s[:200]
    for ln in content.splitlines():
        s = ln.strip()
        if s and not s.startswith("#") and not s.startswith("---"):
            return s[:200]
    return ""


def _skill_dirs(base: Path, *, nested: bool) -> list[Path]:
    """Directories holding a SKILL.md below ``base`` (one level, or any depth for Hermes)."""
    out: list[Path] = []
    if not base.is_dir():
        return out
    try:
        if nested:
            for p in sorted(base.rglob("SKILL.md")):
                if "_archived" not in p.relative_to(base).parts and len(out) < MAX_SKILLS:
                    out.append(p.parent)
        else:
            for d in sorted(base.iterdir()):
                if d.is_dir() and d.name != "_archived" and (d / "SKILL.md").is_file():
                    out.append(d)
                    if len(out) >= MAX_SKILLS:
                        break
    except OSError:
        pass
    return out


def scan_skills(dirs: list[Path], disabled: set[str], *, nested: bool = False,
                archive: Path | None = None) -> list[Skill]:
    seen: set[str] = set()
    out: list[Skill] = []
    for base in dirs:
        for d in _skill_dirs(base, nested=nested):
            content = read_small(d / "SKILL.md")
            if not content.strip():
                continue
            fm_name, desc = skill_meta(content)
            name = fm_name or d.name
            if name in seen:  # a higher-precedence source already provides it
                continue
            seen.add(name)
            off = name in disabled or d.name in disabled
            listed = min(estimate_tokens(name + ": " + desc), SKILL_MAX_TOKENS) if desc else 0
            out.append(Skill(name, str(d / "SKILL.md"), 0 if off else (listed or SKILL_DEFAULT_TOKENS),
                             estimate_tokens(content), desc, off))
    if archive is not None and archive.is_dir():
        with contextlib.suppress(OSError):
            for d in sorted(archive.iterdir()):
                if d.is_dir() and d.name not in seen:
                    content = read_small(d / "SKILL.md")
                    out.append(Skill(d.name, str(d / "SKILL.md"), 0, estimate_tokens(content),
                                     skill_meta(content)[1] if content else "", True))
    out.sort(key=lambda s: -s.tokens)
    return out


def _mcp_from(servers: Any, *, filter_key: str) -> list[McpServer]:
    out: list[McpServer] = []
    if not isinstance(servers, dict):
        return out
    for name, s in servers.items():
        if not isinstance(s, dict) or name == "__proto__":
            continue
        cmd = s.get("command") or s.get("cmd") or s.get("url") or ""
        args = s.get("args")
        if isinstance(args, list) and s.get("command"):
            cmd = " ".join([str(cmd), *(str(a) for a in args[:6])])
        include = _dig(s, filter_key, "include")
        tools = s.get("tools") if isinstance(s.get("tools"), list) else include
        known = isinstance(tools, list)
        disabled = s.get("enabled") is False or bool(s.get("disabled"))
        out.append(McpServer(str(name), str(cmd), len(tools) if isinstance(tools, list) else 0,
                             disabled, known))
    return out


# ---------------------------------------------------------------- recommendations


def _fmt(n: int) -> str:
    return f"{n:,}"


def recommend(a: ContextAudit) -> list[str]:
    recs: list[str] = []
    by_name = {c.name: c for c in a.components}

    def tok(name: str) -> int:
        c = by_name.get(name)
        return c.tokens if c else 0

    if tok("SOUL.md") > 2000:
        recs.append(f"SOUL.md costs {_fmt(tok('SOUL.md'))} tokens on every message; keep it under "
                    "2,000 and move long instructions into skills, which load on demand.")
    if tok("MEMORY.md") > 1500:
        recs.append(f"MEMORY.md costs {_fmt(tok('MEMORY.md'))} tokens per message; archive entries "
                    "that no longer matter.")
    if tok("TOOLS.md") > 5000:
        recs.append(f"TOOLS.md adds {_fmt(tok('TOOLS.md'))} tokens of tool notes to every request; "
                    "load the rarely used parts on demand.")
    for c in a.components:
        if c.detail and "truncated" in c.detail:
            recs.append(f"{c.name} is longer than the host injects ({c.detail}); the cut-off part "
                        "never reaches the model, so shorten the file or move the tail elsewhere.")
    active = [s for s in a.skills if not s.archived]
    if len(active) > 20:
        recs.append(f"{len(active)} skills are listed in every request ({_fmt(sum(s.tokens for s in active))} "
                    "tokens); turn off the ones you do not use.")
    live = [m for m in a.mcp_servers if not m.disabled]
    if len(a.mcp_servers) > 10:
        recs.append(f"{len(a.mcp_servers)} MCP servers are configured; disable the unused ones to cut "
                    "tool-definition overhead.")
    unfiltered = [m.name for m in live if not m.tools_known]
    if unfiltered:
        recs.append(f"MCP server(s) {', '.join(unfiltered[:5])} expose every tool they offer; a tool "
                    f"filter (include list) keeps each unused tool's ~{TOOL_DEF_TOKENS} tokens out of "
                    "every request.")
    total = a.total_overhead
    if total > 30_000:
        recs.append(f"Every message starts with about {_fmt(total)} tokens of overhead "
                    f"({total / REFERENCE_WINDOW * 100:.1f}% of a 200K window); aim for under 25,000.")
    if not recs:
        recs.append("The per-message overhead looks lean; nothing to trim.")
    return recs


def _sort_components(cs: list[Component]) -> list[Component]:
    system = [c for c in cs if c.category == "system"]
    rest = sorted((c for c in cs if c.category != "system"), key=lambda c: -c.tokens)
    return system + rest


# ---------------------------------------------------------------- OpenClaw


def audit_openclaw(root: Path, *, home: Path | None = None) -> ContextAudit:
    home = home or Path.home()
    a = ContextAudit("openclaw", str(root), root.is_dir())
    if not a.found:
        return a
    cfg, why = load_json_config(root / "openclaw.json")
    if why:
        a.notes.append(why)
    if not (root / "openclaw.json").exists():
        a.notes.append("no openclaw.json: host defaults assumed")
    ws_cfg = _dig(cfg, "agents", "defaults", "workspace")
    env_ws = os.environ.get("OPENCLAW_WORKSPACE_DIR", "").strip()
    workspace = (_expand(ws_cfg, root) if isinstance(ws_cfg, str) and ws_cfg
                 else Path(env_ws).expanduser() if env_ws else root / "workspace")
    a.components.append(Component("Core system prompt (est.)", "(built-in)", CORE_PROMPT_TOKENS,
                                  "system", False))
    per_file = _dig(cfg, "agents", "defaults", "bootstrapMaxChars")
    per_file = int(per_file) if isinstance(per_file, (int, float)) and per_file > 0 else 20_000
    total_cap = _dig(cfg, "agents", "defaults", "bootstrapTotalMaxChars")
    total_cap = int(total_cap) if isinstance(total_cap, (int, float)) and total_cap > 0 else 60_000
    injection = _dig(cfg, "agents", "defaults", "contextInjection")
    if injection == "never":
        a.notes.append("contextInjection is 'never': bootstrap files are not injected")
    budget = total_cap
    for name in OPENCLAW_BOOTSTRAP:
        p = workspace / name
        text = read_small(p)
        if not text and (root / name).is_file():  # the reference's location
            p = root / name
            text = read_small(p)
        if not text:
            continue
        cap = min(per_file, 4000) if name == "USER.md" else per_file
        injected = 0 if injection == "never" else min(len(text), cap, max(0, budget))
        budget -= injected
        detail = None
        if injected < len(text):
            detail = f"{_fmt(len(text))} chars, {_fmt(injected)} injected: truncated"
        a.components.append(Component(name, str(p), estimate_tokens(text[:injected]),
                                      _CATEGORY.get(name, "config"), True, detail))
    entries = _dig(cfg, "skills", "entries")
    disabled = {str(k) for k, v in entries.items()
                if isinstance(v, dict) and v.get("enabled") is False} if isinstance(entries, dict) else set()
    dirs = [workspace / "skills", workspace / ".agents" / "skills", home / ".agents" / "skills",
            root / "skills"]
    extra = _dig(cfg, "skills", "load", "extraDirs")
    if isinstance(extra, list):
        dirs += [_expand(x, root) for x in extra if isinstance(x, str)]
    a.skills = scan_skills(dirs, disabled, archive=root / "skills" / "_archived")
    active = [s for s in a.skills if not s.archived]
    if active:
        a.components.append(Component(f"Skills ({len(active)} active)", "", sum(s.tokens for s in active),
                                      "skills", True))
    a.notes.append("bundled skills shipped with the OpenClaw install are not counted")
    servers = _mcp_from(_dig(cfg, "mcp", "servers"), filter_key="toolFilter")
    names = {m.name for m in servers}
    for legacy in ("mcpServers", "mcp_servers"):
        servers += [m for m in _mcp_from(cfg.get(legacy), filter_key="toolFilter") if m.name not in names]
        names = {m.name for m in servers}
    a.mcp_servers = servers
    mcp_tokens = sum(m.tokens for m in servers)
    if servers:
        a.components.append(Component(f"MCP servers ({sum(1 for m in servers if not m.disabled)} active)",
                                      str(root / "openclaw.json"), mcp_tokens, "tools", True,
                                      "tool counts from tool filters; servers without one are unknown"))
    a.components = _sort_components(a.components)
    a.recommendations = recommend(a)
    return a


# ---------------------------------------------------------------- Hermes


def _hermes_toolset_tools(name: str) -> int | None:
    """Tools in one Hermes toolset, from Hermes' own table when it is importable."""
    try:  # resolved as Hermes' own top-level module, never one of ours
        hermes_toolsets = importlib.import_module("toolsets")
    except Exception:
        return None
    resolve = getattr(hermes_toolsets, "resolve_toolset", None)
    try:
        if callable(resolve):
            tools = resolve(name)
            return len(tools) if isinstance(tools, (list, set, tuple)) else None
        table = getattr(hermes_toolsets, "TOOLSETS", {})
        entry = table.get(name) if isinstance(table, dict) else None
        tools = entry.get("tools") if isinstance(entry, dict) else None
        return len(tools) if isinstance(tools, list) else None
    except Exception:
        return None


def audit_hermes(home: Path) -> ContextAudit:
    a = ContextAudit("hermes", str(home), home.is_dir())
    if not a.found:
        return a
    cfg, why = load_yaml_config(home / "config.yaml")
    if why:
        a.notes.append(why)
    a.components.append(Component("Core system prompt (est.)", "(built-in)", CORE_PROMPT_TOKENS,
                                  "system", False))
    for name, p in (("SOUL.md", home / "SOUL.md"), ("MEMORY.md", home / "memories" / "MEMORY.md"),
                    ("USER.md", home / "memories" / "USER.md")):
        text = read_small(p)
        if text:
            a.components.append(Component(name, str(p), estimate_tokens(text),
                                          _CATEGORY.get(name, "memory"), True))
    a.notes.append("project context files (AGENTS.md, .hermes.md, ...) depend on the working "
                   "directory and are not counted")
    raw_skills = cfg.get("skills")
    skills_cfg: dict[str, Any] = raw_skills if isinstance(raw_skills, dict) else {}
    raw_disabled = skills_cfg.get("disabled")
    disabled = {str(x) for x in raw_disabled} if isinstance(raw_disabled, list) else set()
    dirs = [home / "skills"]
    ext = skills_cfg.get("external_dirs")
    if isinstance(ext, list):
        dirs += [_expand(x, home) for x in ext if isinstance(x, str)]
    a.skills = scan_skills(dirs, disabled, nested=True)
    active = [s for s in a.skills if not s.archived]
    if active:
        a.components.append(Component(f"Skills ({len(active)} active)", str(home / "skills"),
                                      sum(s.tokens for s in active), "skills", True))
    toolsets = cfg.get("toolsets", ["hermes-cli"] if not why else None)
    if isinstance(toolsets, list):
        known_total = 0
        unknown = 0
        for t in toolsets:
            n = _hermes_toolset_tools(str(t))
            a.toolsets.append({"name": str(t), "toolCount": n,
                               "tokens": None if n is None else n * TOOL_DEF_TOKENS})
            if n is None:
                unknown += 1
            else:
                known_total += n
        a.components.append(Component(
            f"Toolsets ({len(toolsets)})", str(home / "config.yaml"), known_total * TOOL_DEF_TOKENS,
            "tools", True,
            f"{unknown} toolset(s) with an unknown tool count" if unknown else None))
        if unknown:
            a.notes.append("tool counts per toolset need Hermes' own 'toolsets' module "
                           "(run this inside Hermes' environment)")
    a.mcp_servers = _mcp_from(cfg.get("mcp_servers"), filter_key="tools")
    if a.mcp_servers:
        a.components.append(Component(
            f"MCP servers ({sum(1 for m in a.mcp_servers if not m.disabled)} active)",
            str(home / "config.yaml"), sum(m.tokens for m in a.mcp_servers), "tools", True,
            "tool counts from tools.include; servers without one are unknown"))
    a.components = _sort_components(a.components)
    a.recommendations = recommend(a)
    return a


__all__ = ["ContextAudit", "audit_hermes", "audit_openclaw", "estimate_tokens"]
