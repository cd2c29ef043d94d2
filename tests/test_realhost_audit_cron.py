"""``stale_cron`` over cron rows written by the real OpenClaw's own storage code.

The installed host (``tests/realhost/oc_host.py`` cache; installed from the npm registry on
first use, like the other real-host tests) persists jobs with its ``upsertCronJobRow`` (``dist/row-codec-*.mjs``, found by
function name, so the bundle's hashed file name and minified export letters do not matter)
into a ``state/openclaw.sqlite`` made with the host's ``cron_jobs`` DDL. The audit then reads
that file the way it reads a user's. Skips when the host cannot be installed (fails when
TOKEN_OPTIMIZER_REQUIRE_HOSTS=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "realhost"))
from oc_host import OPENCLAW_VERSION, HostUnavailable, ensure_openclaw

from token_optimizer.audit.detectors import run_detectors
from token_optimizer.audit.openclaw import read_cron_commands

pytestmark = pytest.mark.realhost

SCHEMA = Path(__file__).resolve().parent / "audit_schema" / "openclaw_state.sql"
BASE = {"enabled": True, "createdAtMs": 1_780_000_000_000, "updatedAtMs": 1_780_000_000_000,
        "wakeMode": "now", "state": {}}
JOBS = [
    {**BASE, "id": "j-cmd", "name": "nightly backup", "agentId": "ops",
     "sessionTarget": "isolated", "schedule": {"kind": "cron", "expr": "0 3 * * *"},
     "payload": {"kind": "command", "argv": ["sh", "-lc", "/nowhere/backup.sh --full"],
                 "cwd": "/nowhere/work"}, "delivery": {"mode": "none"}},
    {**BASE, "id": "j-exit", "name": "after deploy", "sessionTarget": "main",
     "schedule": {"kind": "on-exit", "command": "/nowhere/deploy.sh"},
     "payload": {"kind": "systemEvent", "text": "deploy finished"}},
    {**BASE, "id": "j-stream", "name": "tail log", "sessionTarget": "isolated",
     "schedule": {"kind": "stream", "command": ["/nowhere/tail-log", "-f"], "cwd": "/tmp"},
     "payload": {"kind": "agentTurn", "message": "summarise /nowhere/notes"},
     "delivery": {"mode": "none"}},
    {**BASE, "id": "j-off", "name": "switched off", "enabled": False, "sessionTarget": "isolated",
     "schedule": {"kind": "every", "everyMs": 60_000},
     "payload": {"kind": "command", "argv": ["/nowhere/off.sh"]}, "delivery": {"mode": "none"}},
]

WRITER = """
import { DatabaseSync } from "node:sqlite";
import { readFileSync, readdirSync } from "node:fs";
import { pathToFileURL } from "node:url";
const [dist, dbPath, schema, jobsJson] = process.argv.slice(2);
let upsert;
for (const f of readdirSync(dist).filter((n) => /^row-codec-.*\\.mjs$/.test(n))) {
  const mod = await import(pathToFileURL(`${dist}/${f}`).href);
  upsert = Object.values(mod).find((v) => typeof v === "function" && v.name === "upsertCronJobRow");
  if (upsert) break;
}
if (!upsert) { console.error("upsertCronJobRow not found"); process.exit(3); }
const db = new DatabaseSync(dbPath);
db.exec(readFileSync(schema, "utf8"));
JSON.parse(jobsJson).forEach((job, i) => upsert(db, "default", job, i));
db.close();
"""


@pytest.fixture(scope="module")
def cached_host() -> tuple[Path, Path]:
    """(node, openclaw dist), installed into the cache on first use like the other real-host
    tests; module-scoped, so it resolves the cache before the per-test HOME."""
    try:
        host = ensure_openclaw()
    except (HostUnavailable, OSError, subprocess.SubprocessError) as exc:
        msg = f"OpenClaw {OPENCLAW_VERSION} unavailable: {exc}"
        if os.environ.get("TOKEN_OPTIMIZER_REQUIRE_HOSTS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return host.node, host.openclaw_mjs.parent / "dist"


def test_stale_cron_on_rows_the_host_wrote(tmp_path: Path, cached_host: tuple[Path, Path]) -> None:
    node, dist = cached_host
    (tmp_path / "state").mkdir()
    script = tmp_path / "write.mjs"
    script.write_text(WRITER)
    p = subprocess.run([str(node), str(script), str(dist), str(tmp_path / "state" / "openclaw.sqlite"),
                        str(SCHEMA), json.dumps(JOBS)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    found = {(f.evidence["jobId"], f.evidence["field"], f.evidence["missingPath"])
             for f in run_detectors([], cron=read_cron_commands(tmp_path)).findings
             if f.waste_type == "stale_cron"}
    # the agent turn's prompt, the existing /tmp and the disabled job are not findings
    assert found == {("j-cmd", "payload.argv", "/nowhere/backup.sh"),
                     ("j-cmd", "payload.cwd", "/nowhere/work"),
                     ("j-exit", "schedule.command", "/nowhere/deploy.sh"),
                     ("j-stream", "schedule.command", "/nowhere/tail-log")}
