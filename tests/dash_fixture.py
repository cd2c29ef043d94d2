"""A small but complete fixture for ``context``/``quality``/``drift``/``validate`` and the dashboard.

``build_fixture(tmp)`` writes an OpenClaw state dir (agent databases, ``openclaw.json``,
workspace bootstrap files, skills), a Hermes home (``state.db``, ``config.yaml``,
``SOUL.md``, memories, skills) and a token-optimizer state root (checkpoint manifests,
savings events), all relative to "now" so a ``--days 30`` window sees them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit_stores import HermesStore, OpenClawStore, assistant_event, tool_result_event, user_event

from token_optimizer.fsutil import sanitize_checkpoint_id

DAY = 86_400_000


@dataclass
class Fixture:
    openclaw: Path
    hermes: Path
    state: Path
    t0: int
    split_ms: int
    """Sessions before this moment are bigger and uncached; after it, lean and cached."""
    session_ids: list[str]

    def argv(self) -> list[str]:
        return ["--openclaw-root", str(self.openclaw), "--hermes-home", str(self.hermes)]


FINDINGS: list[dict[str, Any]] = [
    {"detector": "heartbeat_model_waste", "severity": "high", "group": "routing", "basis": "measured",
     "monthly_usd": 42.5, "evidence": {"sessions": 6, "model": "claude-opus-4-6"},
     "fix": "# route heartbeats to a small model\nopenclaw config set agents.entries.ops.model anthropic/claude-haiku-4-5",
     "description": "Heartbeat runs use an expensive model.", "recommendation": "Route them to Haiku."},
    {"detector": "empty_runs", "severity": "medium", "group": "idle", "basis": "estimated",
     "monthly_usd": 7.25, "evidence": {"sessions": 3}, "fix": "# add an early exit to the heartbeat script",
     "description": "Runs that loaded context and produced nothing."},
    {"detector": "session_history_bloat", "severity": "low", "group": "context", "basis": "estimated",
     "monthly_usd": 1.1, "evidence": {}, "fix": "", "description": "Long sessions with growing history."},
]


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def build_fixture(tmp: Path, *, sessions: int = 16) -> Fixture:
    now = int(time.time() * 1000)
    t0 = now - 20 * DAY
    split = t0 + 10 * DAY
    oc_root, hm_home, state = tmp / "oc", tmp / "hm", tmp / "state"
    oc = OpenClawStore(oc_root)
    ids: list[str] = []
    models = ["claude-sonnet-4-6", "claude-opus-4-6", "gpt-5.2", "mystery-model-9"]
    for i in range(sessions):
        late = i >= sessions // 2
        start = (split if late else t0) + (i % (sessions // 2)) * (DAY // 2) + 3_600_000
        sid = f"sess-{i:02d}"
        agent = "ops" if i % 4 == 3 else "main"
        ids.append(sid)
        oc.add_session(sid, agent=agent, created_ms=start,
                       created_via="cron" if agent == "ops" else "operator")
        ev: list[dict[str, Any]] = [user_event(f"task number {i}: fix the parser", start, eid=f"u{i}")]
        for k in range(4 if late else 8):
            ts = start + (k + 1) * 60_000
            ev.append(assistant_event(ts, model=models[i % len(models)],
                                      inp=2_000 if late else 40_000 + 5_000 * k, out=400 + 50 * k,
                                      cache_read=30_000 if late else 0, cache_write=1_000,
                                      tools=("read", "edit") if k % 2 else ("exec",), eid=f"a{i}-{k}"))
            ev.append(tool_result_event(ts + 500, "exec", is_error=(not late and k == 2), eid=f"t{i}-{k}"))
        oc.add_events(sid, ev, agent=agent)
    oc.close()
    _write(oc_root / "openclaw.json", json.dumps({
        "agents": {"defaults": {"workspace": str(oc_root / "workspace"), "model": "anthropic/claude-sonnet-4-6",
                                "bootstrapMaxChars": 6000}},
        "skills": {"entries": {"weather": {"enabled": False}}},
        "mcp": {"servers": {"docs": {"url": "http://127.0.0.1:9/mcp", "toolFilter": {"include": ["search", "read"]}},
                            "files": {"command": "npx", "args": ["files-mcp"]},
                            "old": {"command": "old-mcp", "enabled": False}}},
    }))
    ws = oc_root / "workspace"
    _write(ws / "SOUL.md", "# Soul\n" + "Be careful and kind. " * 500)
    _write(ws / "AGENTS.md", "# Agents\nUse the tools.\n" + "Rule. " * 200)
    _write(ws / "TOOLS.md", "# Tools\n" + "Notes about tools. " * 40)
    _write(ws / "USER.md", "# User\n" + "Prefers short answers. " * 400)
    for name, desc in (("github", "Work with GitHub issues and pull requests."),
                       ("weather", "Look up the weather."), ("notes", "Keep notes in a file.")):
        _write(oc_root / "skills" / name / "SKILL.md",
               f"---\nname: {name}\ndescription: \"{desc}\"\n---\n# {name}\n\nLong body. " + "x " * 300)

    h = HermesStore(hm_home)
    for j in range(4):
        sid = f"h-{j}"
        started = (t0 + j * 5 * DAY) / 1000
        h.add_session(sid, started=started, ended=started + 900, inp=5_000, out=900,
                      cache_read=20_000, api_calls=3, message_count=9, actual=0.04)
        h.add_usage(sid, "anthropic/claude-sonnet-4-6", inp=5_000, out=900, cache_read=20_000, calls=3,
                    actual=0.04)
        ids.append(sid)
    h.close()
    _write(hm_home / "config.yaml", "model: anthropic/claude-sonnet-4-6\ntoolsets:\n  - hermes-cli\n"
           "skills:\n  disabled: [old-skill]\nmcp_servers:\n  github:\n    command: gh-mcp\n"
           "    tools:\n      include: [issues, pulls, search]\n")
    _write(hm_home / "SOUL.md", "You are Hermes. " * 100)
    _write(hm_home / "memories" / "MEMORY.md", "- remembered fact\n" * 50)
    _write(hm_home / "skills" / "dev" / "review" / "SKILL.md",
           "---\nname: review\ndescription: Review a diff carefully.\n---\nbody")
    _write(hm_home / "skills" / "dev" / "old-skill" / "SKILL.md",
           "---\nname: old-skill\ndescription: Old.\n---\nbody")

    # the runtime's records: checkpoints with fill/quality, restores
    for i, sid in enumerate(ids[:sessions]):
        if i % 2:
            continue
        d = state / "checkpoints" / sanitize_checkpoint_id(sid)
        d.mkdir(parents=True, exist_ok=True)
        rows = []
        base = (split if i >= sessions // 2 else t0) + (i % (sessions // 2)) * (DAY // 2) + 3_600_000
        for k, (trig, fill, q) in enumerate((("progressive-20", 21.0, 88), ("progressive-35", 36.5, 79),
                                              ("quality-70", 52.0, 68), ("compact", 61.0, 60))):
            f = d / f"cp-{k}.md"
            f.write_text(f"# checkpoint {k}\n")
            rows.append(json.dumps({"trigger": trig, "fillPct": fill, "qualityScore": q,
                                    "createdAt": _iso(base + (k + 1) * 120_000), "file": str(f)}))
        (d / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    sav = [json.dumps({"timestamp": _iso(t0 + (k + 1) * DAY), "event_type": "checkpoint_restore",
                       "tokens_saved": 1200 + k, "session_id": ids[2 * k], "detail": None})
           for k in range(3)]
    sav.append(json.dumps({"timestamp": _iso(t0 + DAY), "event_type": "hint_followed",
                           "tokens_saved": 500, "session_id": ids[1], "detail": None}))
    _write(state / "savings-events.jsonl", "\n".join(sav) + "\n")
    return Fixture(oc_root, hm_home, state, t0, split, ids)


def _iso(ms: int) -> str:
    from token_optimizer.jsutil import iso_from_ms

    return iso_from_ms(ms)
