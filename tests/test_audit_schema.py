"""The copied host DDL under tests/audit_schema matches the installed hosts.

Reads the hosts' files only (no host is run). The hosts are installed into the real-host
cache on first use, like the other real-host tests: these skip only when that cannot be
done, and fail then with TOKEN_OPTIMIZER_REQUIRE_HOSTS=1.
Also pins that the audit never sits on the hook/runtime import path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost.oc_host import HostUnavailable, cache_dir, ensure_openclaw
from test_hermes_realhost import REQUIRE, hermes_or_skip

SCHEMA = Path(__file__).parent / "audit_schema"
OC_CACHE = cache_dir()  # resolved at import: the per-test fixtures redirect HOME afterwards


def _tables(sql: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in
            re.finditer(r"CREATE TABLE IF NOT EXISTS (\w+) \(.*?\n\)[^;]*;", sql, re.S)}


def test_openclaw_ddl_matches_installed_host() -> None:
    try:
        dist = ensure_openclaw(OC_CACHE).openclaw_mjs.parent / "dist"
    except (HostUnavailable, OSError, subprocess.SubprocessError) as exc:
        if REQUIRE:
            pytest.fail(f"real OpenClaw host required but unavailable: {exc}")
        pytest.skip(f"OpenClaw unavailable: {exc}")
    files = sorted(dist.glob("openclaw-agent-board-schema-*.mjs"))
    assert files, f"no agent schema module in {dist}"
    src = files[0].read_text()
    m = re.search(r'const OPENCLAW_AGENT_SCHEMA_SQL = (".*?");\n', src, re.S)
    assert m is not None
    host = _tables(json.loads(m.group(1)))
    ours = _tables((SCHEMA / "openclaw_agent.sql").read_text())
    for name, ddl in ours.items():
        assert host[name] == ddl, name


def test_hermes_ddl_matches_installed_host() -> None:
    with hermes_or_skip() as py:
        venv = py.parent.parent
    hits = sorted(venv.glob("lib/python3*/site-packages/hermes_state.py"))
    assert hits, f"no hermes_state.py in {venv}"
    m = re.search(r'SCHEMA_SQL = """(.*?)"""', hits[0].read_text(), re.S)
    assert m is not None
    host = {name: ddl for ddl, name in re.findall(r"(CREATE TABLE IF NOT EXISTS (\w+) \(.*?\n\);)",
                                                   m.group(1), re.S)}
    ours = {name: ddl for ddl, name in re.findall(r"(CREATE TABLE IF NOT EXISTS (\w+) \(.*?\n\);)",
                                                   (SCHEMA / "hermes_state.sql").read_text(), re.S)}
    for name, ddl in ours.items():
        assert host[name] == ddl, name


def test_runtime_path_does_not_import_the_audit() -> None:
    code = ("import sys, token_optimizer.runtime, token_optimizer.hosts.hermes;"
            "bad = [m for m in sys.modules if m.startswith(('token_optimizer.audit',"
            " 'token_optimizer.commands', 'rich', 'backports.zstd', 'compression.zstd',"
            " 'genai_prices'))];"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
