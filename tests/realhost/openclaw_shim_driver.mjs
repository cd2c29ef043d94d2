// Fake-api driver for the OpenClaw shim (dist/index.js): no OpenClaw install needed.
//
// usage: node openclaw_shim_driver.mjs <scenario> <path to dist/index.js>
// env:   SHIM_CONFIG   JSON plugin config (pythonPath, timeoutMs, ...)
//        FAKE_MODE_FILE (crash scenarios) file whose content selects the fake worker's behaviour
// Prints one JSON object (the scenario's observations) on the last stdout line.
import fs from "node:fs";
import { pathToFileURL } from "node:url";

const [scenario, entryPath] = process.argv.slice(2);
const CONFIG = JSON.parse(process.env.SHIM_CONFIG || "{}");
const entryUrl = pathToFileURL(entryPath).href;
const logs = [];
const enqueues = [];
const services = [];
const commands = [];

function makeApi(mode) {
  const handlers = new Map();
  const api = {
    id: "token-optimizer-openclaw",
    registrationMode: mode,
    pluginConfig: CONFIG,
    logger: {
      info: (m) => logs.push(["info", mode, m]),
      warn: (m) => logs.push(["warn", mode, m]),
      error: (m) => logs.push(["error", mode, m]),
      debug: (m) => logs.push(["debug", mode, m]),
    },
    on(name, handler) {
      if (!handlers.has(name)) handlers.set(name, []);
      handlers.get(name).push(handler);
    },
    registerService(s) { services.push({ mode, id: s.id, hasStop: typeof s.stop === "function" }); },
    // like the host's registry: name, description, acceptsArgs and an async handler(ctx) -> {text}
    registerCommand(c) { commands.push({ mode, ...c }); },
    session: {
      workflow: {
        // like the real host: only the full registration's api really queues
        enqueueNextTurnInjection: async (input) => {
          enqueues.push({ mode, input });
          return mode === "full" ? { enqueued: true, id: "inj-" + enqueues.length, sessionKey: input.sessionKey } : { enqueued: false, id: "" };
        },
      },
    },
    handlers,
  };
  return api;
}

// Like the host: every registration gets its own module instance; globalThis is shared.
async function loadInstance(mode) {
  const mod = await import(entryUrl + "?instance=" + mode + "-" + Math.random());
  const api = makeApi(mode);
  const plugin = mod.default;
  const ret = plugin.register(api);
  return { mod, api, plugin, ret };
}

async function fire(api, hook, event, ctx) {
  const hs = api.handlers.get(hook) || [];
  const out = [];
  for (const h of hs) {
    let r;
    try {
      r = await h(event, ctx);
    } catch (e) {
      out.push({ threw: String(e) });
      continue;
    }
    out.push(r === undefined ? null : r);
  }
  return out.length === 1 ? out[0] : out;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitFor(pred, ms = 5000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (pred()) return true;
    await sleep(10);
  }
  return pred();
}

const SK = "agent:main:explicit:drv-1";
const SID = "drv-1";
const ctxBase = { sessionKey: SK, sessionId: SID, agentId: "main", runId: "run-1" };
const hostCtx = { ...ctxBase, trigger: "user", abortSignal: new AbortController().signal, getCron: () => null, config: { huge: true }, toolAuthority: { x: 1 }, hookInvocation: { id: 1 } };

const result = { scenario };

async function registration() {
  const full = await loadInstance("full");
  const disc = await loadInstance("discovery");
  const bridge = full.mod.getBridge();
  result.registerReturn = full.ret === undefined ? "undefined" : typeof full.ret;
  result.hooksFull = [...full.api.handlers.keys()];
  result.hooksDiscovery = [...disc.api.handlers.keys()];
  result.exportedHooks = [...full.mod.HOOKS];
  result.sameBridge = bridge === disc.mod.getBridge();
  result.spawnedByRegister = bridge.spawnCount;
  result.services = services;
  result.commands = commands.map((c) => ({ mode: c.mode, name: c.name, description: c.description, acceptsArgs: c.acceptsArgs, handler: typeof c.handler }));
  result.pluginId = full.plugin.id;
}

// The /token-optimizer chat command, as the host calls it (PluginCommandContext subset).
function commandCtx(args, extra = {}) {
  return { channel: "webchat", isAuthorizedSender: true, commandBody: "/token-optimizer " + args, args, config: {}, ...extra };
}

async function command() {
  const full = await loadInstance("full");
  const disc = await loadInstance("discovery");
  const bridge = full.mod.getBridge();
  const handler = commands.find((c) => c.mode === "full").handler;
  result.spawnedByRegister = bridge.spawnCount;
  result.beforeAnyHook = await handler(commandCtx("", { sessionKey: "agent:main:explicit:never-seen" }));
  await fire(full.api, "session_start", { sessionId: SID, sessionKey: SK }, ctxBase);
  await fire(disc.api, "agent_turn_prepare", { prompt: "hello there", messages: [], queuedInjections: [] }, hostCtx);
  await fire(disc.api, "llm_output", { runId: "run-1", sessionId: SID, provider: "anthropic", model: "claude-sonnet-4", contextTokenBudget: 200000, assistantTexts: ["hi"], usage: { input: 50000, output: 100, cacheRead: 0, cacheWrite: 0, total: 50100 } }, ctxBase);
  await fire(disc.api, "agent_end", { messages: [{ role: "user", content: "hello there" }, { role: "assistant", content: "hi" }], success: true }, ctxBase);
  result.status = await bridge.control({ type: "status", sessionId: SID });
  result.inChat = await handler(commandCtx("", { sessionKey: SK, sessionId: SID }));
  result.keyOnly = await handler(commandCtx("", { sessionKey: SK }));
  result.help = await handler(commandCtx("help", { sessionKey: SK, sessionId: SID }));
  result.discHandler = await commands.find((c) => c.mode === "discovery").handler(commandCtx("", { sessionKey: SK, sessionId: SID }));
  await fire(full.api, "gateway_stop", { reason: "gateway stopping" }, { port: 1 });
}

async function flow() {
  const full = await loadInstance("full");
  const disc = await loadInstance("discovery");
  const bridge = full.mod.getBridge();
  result.spawnedByRegister = bridge.spawnCount;
  await fire(full.api, "gateway_start", { port: 1 }, { port: 1, abortSignal: new AbortController().signal, getCron: () => null, config: {} });
  await fire(full.api, "session_start", { sessionId: SID, sessionKey: SK }, ctxBase);
  const t0 = performance.now();
  result.turn1 = await fire(disc.api, "agent_turn_prepare", { prompt: "hello there", messages: [], queuedInjections: [] }, hostCtx);
  result.turn1Ms = performance.now() - t0;
  result.readBefore = await fire(disc.api, "before_tool_call", { toolName: "read", params: { path: "/nonexistent/x.txt" }, runId: "run-1", toolCallId: "c1" }, { ...hostCtx, toolName: "read", toolCallId: "c1" });
  for (let i = 0; i < 6; i++) {
    const params = { path: `/tmp/drv/file${i}.py`, oldText: "a", newText: "b" };
    await fire(disc.api, "before_tool_call", { toolName: "edit", params, runId: "run-1", toolCallId: "e" + i }, { ...hostCtx, toolName: "edit" });
    await fire(disc.api, "after_tool_call", { toolName: "edit", params, runId: "run-1", toolCallId: "e" + i, result: "ok", durationMs: 3 }, { ...ctxBase, toolName: "edit" });
  }
  const messages = [
    { role: "user", content: "please refactor the parser", timestamp: Date.now() - 5000 },
    { role: "assistant", content: [{ type: "text", text: "I will edit file0.py and file1.py" }], timestamp: Date.now() - 4000 },
    { role: "user", content: "also keep the API stable", timestamp: Date.now() - 3000 },
    { role: "assistant", content: "Done: edited six files.", timestamp: Date.now() - 2000 },
  ];
  await fire(disc.api, "before_compaction", { messageCount: 4, tokenCount: 900, messages }, ctxBase);
  await fire(disc.api, "after_compaction", { messageCount: 2, compactedCount: 2, tokenCount: 300, sessionFile: "sqlite:main:" + SID }, ctxBase);
  await waitFor(() => enqueues.length > 0 && bridge.stats.enqueues > 0, 5000);
  result.enqueues = enqueues;
  const status = await bridge.control({ type: "status", sessionId: SID });
  result.statusBeforeEnd = status && status.result;
  result.turn2 = await fire(disc.api, "agent_turn_prepare", { prompt: "second turn", messages, queuedInjections: enqueues.map((e) => ({ text: e.input.text })) }, hostCtx);
  await fire(full.api, "session_end", { sessionId: SID, sessionKey: SK, messageCount: 4, reason: "deleted" }, ctxBase);
  const st2 = await bridge.control({ type: "status" });
  result.statusAfterEnd = st2 && st2.result;
  const pid = bridge.child && bridge.child.pid;
  result.workerPid = pid;
  const s0 = performance.now();
  await fire(full.api, "gateway_stop", { reason: "gateway stopping" }, { port: 1 });
  result.stopMs = performance.now() - s0;
  result.aliveAfterStop = bridge.alive();
  let exists = true;
  try { process.kill(pid, 0); } catch { exists = false; }
  result.pidExistsAfterStop = exists;
  result.stats = bridge.stats;
}

async function crash() {
  const modeFile = process.env.FAKE_MODE_FILE;
  const full = await loadInstance("full");
  const disc = await loadInstance("discovery");
  const bridge = full.mod.getBridge();
  const timeoutMs = bridge.settings.timeoutMs;
  // 1. worker hangs, gets killed mid-hook: the hook resolves undefined quickly (not at the timeout)
  fs.writeFileSync(modeFile, "hang");
  const p = fire(disc.api, "before_tool_call", { toolName: "exec", params: { command: "ls" } }, hostCtx);
  await waitFor(() => bridge.ready, 5000);
  const pid1 = bridge.child.pid;
  const k0 = performance.now();
  process.kill(pid1, "SIGKILL");
  result.killedResult = await p;
  result.killedResolveMs = performance.now() - k0;
  // 2. hang without a kill: resolves undefined at the timeout
  fs.writeFileSync(modeFile, "hang");
  const t0 = performance.now();
  result.timeoutResult = await fire(disc.api, "before_tool_call", { toolName: "exec", params: { command: "ls" } }, hostCtx);
  result.timeoutElapsedMs = performance.now() - t0;
  result.timeoutMs = timeoutMs;
  result.startupTimeoutMs = bridge.settings.startupTimeoutMs;
  // 3. garbage replies: ignored, hook resolves undefined, nothing thrown
  bridge.kill("SIGKILL");
  await waitFor(() => !bridge.alive(), 2000);
  await sleep(400); // past the crash backoff
  fs.writeFileSync(modeFile, "garbage");
  result.garbageResult = await fire(disc.api, "before_tool_call", { toolName: "exec", params: { command: "ls" } }, hostCtx);
  result.garbageTurn = await fire(disc.api, "agent_turn_prepare", { prompt: "x", messages: [] }, hostCtx);
  result.badLines = bridge.stats.badLines;
  // 4. back to the real worker: the next hook respawns and gets a real answer
  bridge.kill("SIGKILL");
  await waitFor(() => !bridge.alive(), 2000);
  await sleep(1200);
  fs.writeFileSync(modeFile, "real");
  const before = bridge.spawnCount;
  result.respawnResult = await fire(disc.api, "before_tool_call", { toolName: "read", params: { path: "/nonexistent/y" } }, hostCtx);
  result.respawned = bridge.spawnCount - before;
  // The respawned worker may still be importing on a loaded machine: retry the ping.
  let ping;
  for (let i = 0; i < 20 && !(ping && ping.result); i++) {
    ping = await bridge.control({ type: "ping" });
    if (!(ping && ping.result)) await sleep(250);
  }
  result.pingAfterRespawn = ping && ping.result;
  result.pidsDiffer = ping && ping.result && ping.result.pid !== pid1;
  result.spawnCount = bridge.spawnCount;
  await fire(full.api, "gateway_stop", { reason: "gateway stopping" }, { port: 1 });
}

async function nopython() {
  const full = await loadInstance("full");
  const bridge = full.mod.getBridge();
  const t0 = performance.now();
  result.toolResult = await fire(full.api, "before_tool_call", { toolName: "exec", params: {} }, hostCtx);
  result.turnResult = await fire(full.api, "agent_turn_prepare", { prompt: "x" }, hostCtx);
  await fire(full.api, "after_tool_call", { toolName: "exec", params: {} }, hostCtx);
  result.elapsedMs = performance.now() - t0;
  result.alive = bridge.alive();
  const c0 = performance.now();
  result.commandResult = await commands.find((c) => c.mode === "full").handler(commandCtx("", { sessionKey: SK }));
  result.commandMs = performance.now() - c0;
}

async function idle() {
  // a CLI-like process: one hook, then nothing; it must exit by itself and take the worker along
  const full = await loadInstance("full");
  const bridge = full.mod.getBridge();
  result.toolResult = await fire(full.api, "before_tool_call", { toolName: "read", params: { path: "/nonexistent/z" } }, hostCtx);
  result.workerPid = bridge.child && bridge.child.pid;
}

const scenarios = { registration, flow, crash, nopython, idle, command };
const t0 = Date.now();
try {
  await scenarios[scenario]();
} catch (e) {
  result.driverError = String(e && e.stack || e);
}
result.logs = logs;
result.totalMs = Date.now() - t0;
process.stdout.write(JSON.stringify(result) + "\n");
// exiting must not need help: the worker and its pipes are unref'd
