"""The hook table is the one list of hooks: everything else is checked against it."""

from __future__ import annotations

import re
from pathlib import Path

from token_optimizer import hooks
from token_optimizer.hosts import hermes, openclaw_events
from token_optimizer.runtime import TokenOptimizer

ROOT = Path(__file__).resolve().parents[1]


def _js_array(name: str) -> list[str]:
    text = (ROOT / "dist" / "index.js").read_text()
    m = re.search(rf"export const {name} = Object\.freeze\(\[(.*?)\]\)", text, re.S)
    assert m, f"{name} not found in dist/index.js"
    return re.findall(r'"([a-z_]+)"', m.group(1))


def test_shim_registers_exactly_the_tables_openclaw_hooks_in_order() -> None:
    assert _js_array("HOOKS") == list(hooks.OPENCLAW_HOOKS)
    assert _js_array("AWAITED_HOOKS") == list(hooks.OPENCLAW_AWAITED)


def test_openclaw_translation_covers_every_openclaw_hook_and_nothing_else() -> None:
    assert set(openclaw_events.TS_HOOK_NAMES) == set(hooks.OPENCLAW_HOOKS)
    assert "before_agent_start" not in openclaw_events.TS_HOOK_NAMES  # not a 2026.9.6 hook


def test_hermes_registers_exactly_the_tables_hermes_hooks(tmp_path: Path) -> None:
    """What a Hermes PluginContext really receives from attach(), against the table."""

    class RecordingCtx:
        def __init__(self) -> None:
            self.hooks: list[str] = []
            self.commands: list[str] = []

        def register_hook(self, name: str, cb: object) -> None:
            assert callable(cb)
            self.hooks.append(name)

        def register_command(self, name: str, handler: object, **kw: object) -> None:
            self.commands.append(name)

    from token_optimizer.hosts.hermes_support import BackgroundWorker, StateDb

    plugin = hermes.HermesPlugin(object(), hermes_config=lambda: {},  # type: ignore[arg-type]
                                 state_db=StateDb(tmp_path / "none.db"),
                                 worker=BackgroundWorker())
    plugin._registered = True  # no start-up housekeeping for this stand-in core
    ctx = RecordingCtx()
    plugin.attach(ctx)
    assert sorted(ctx.hooks) == sorted(hooks.HERMES_HOOKS)
    assert len(ctx.hooks) == len(set(ctx.hooks))
    assert "on_session_end" not in ctx.hooks  # fires every turn on 0.19.0
    assert ctx.commands == ["token-optimizer"]


def test_every_row_names_a_real_core_entry() -> None:
    for row in hooks.HOOK_TABLE:
        if row.entry is not None:
            assert callable(getattr(TokenOptimizer, row.entry, None)), row.entry
        assert row.openclaw or row.hermes or row.entry in ("compaction_before", "compaction_after")
        assert row.doc.strip()


def test_every_row_is_documented_in_the_architecture_doc() -> None:
    """Like Datasette's test_plugin_hooks_are_documented: an undocumented row fails."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for row in hooks.HOOK_TABLE:
        name = row.entry or (row.openclaw + row.hermes)[0]
        assert re.search(rf"^### `{re.escape(name)}`", doc, re.M), f"no section for {name}"
        for h in row.openclaw + row.hermes:
            assert f"`{h}`" in doc, f"{h} (row {name}) not mentioned"
