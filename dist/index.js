// Token Optimizer — OpenClaw plugin shim.
//
// This file has no dependencies. It registers a fixed set of typed hooks and forwards every hook
// call to one long-lived Python worker (`<pythonPath> -m token_optimizer.hosts.openclaw`) over JSON
// lines on stdio. The Python side does all the work; this side only moves data, enforces time
// limits and performs the host-side actions the worker asks for (next-turn injections, log lines).
//
// Rules this shim keeps (see the OpenClaw host notes):
//   * register(api) is synchronous and never starts a process: it also runs in discovery,
//     tool-discovery and CLI-metadata registrations, and twice per gateway.
//   * one worker per Node process, started on the first hook, held in a globalThis symbol (each
//     registration gets its own module instance; globalThis is shared).
//   * awaited hooks (agent_turn_prepare, before_tool_call) fail open: on timeout, a dead worker or
//     a bad reply the handler resolves to undefined. Nothing here ever throws into the host.
//   * observe hooks are sent as notifications and not waited for.
//   * the api of the "full" registration is stashed on globalThis and used for
//     enqueueNextTurnInjection: run-time hooks arrive through a discovery-mode api whose enqueue
//     is a silent no-op ({enqueued:false}). The outcome is reported back to the worker, which
//     falls back to prependContext on the next turn when the enqueue was refused.
//   * the chat command /token-optimizer is registered through api.registerCommand when the host
//     has it; the worker builds the report (the one Hermes gives). The handler always resolves to
//     a reply text, even when the worker is missing or slow.
import { spawn } from "node:child_process";

export const PLUGIN_ID = "token-optimizer-openclaw";
/** Version of these plugin files; the worker refuses to run for another package version. */
export const SHIM_VERSION = "0.1.0";
export const WORKER_MODULE = "token_optimizer.hosts.openclaw";
const BRIDGE_KEY = Symbol.for("token-optimizer-openclaw.bridge");
const FULL_API_KEY = Symbol.for("token-optimizer-openclaw.fullApi");

/** Every typed hook registered, in registration order (all exist in OpenClaw 2026.9.6). */
export const HOOKS = Object.freeze([
  "gateway_start",
  "gateway_stop",
  "session_start",
  "session_end",
  "agent_turn_prepare",
  "before_tool_call",
  "after_tool_call",
  "before_compaction",
  "after_compaction",
  "llm_output",
  "model_call_ended",
  "agent_end",
]);
/** Hooks whose return value the host uses: the shim waits (bounded) for the worker's answer. */
export const AWAITED_HOOKS = Object.freeze(["agent_turn_prepare", "before_tool_call"]);
const AWAITED = new Set(AWAITED_HOOKS);
/** The chat command (OpenClaw's OpenClawPluginCommandDefinition, minus the handler). */
export const COMMAND = Object.freeze({
  name: "token-optimizer",
  description: "Token Optimizer status of this chat: context fill, quality, checkpoints (/token-optimizer help).",
  acceptsArgs: true,
});
/** ctx members that are functions, live objects or large host config: never sent. */
const STRIP_CTX = new Set(["abortSignal", "getCron", "hookInvocation", "toolAuthority", "config", "logger", "runtime"]);
const MESSAGE_ARRAYS = ["messages", "historyMessages"];

export const DEFAULTS = Object.freeze({
  pythonPath: "python3",
  timeoutMs: 1500,
  startupTimeoutMs: 5000,
  maxMessages: 200,
  stopGraceMs: 2000,
});

function num(v, dflt, min, max) {
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n)) return dflt;
  return Math.min(max, Math.max(min, Math.floor(n)));
}

/** Shim settings from the plugin config (plugins.entries.<id>.config) and the environment. */
export function resolveSettings(pluginConfig, env = process.env) {
  const cfg = pluginConfig && typeof pluginConfig === "object" ? pluginConfig : {};
  const pythonPath =
    (typeof cfg.pythonPath === "string" && cfg.pythonPath.trim()) ||
    (env.TOKEN_OPTIMIZER_PYTHON && env.TOKEN_OPTIMIZER_PYTHON.trim()) ||
    DEFAULTS.pythonPath;
  return {
    pythonPath,
    timeoutMs: num(cfg.timeoutMs ?? env.TOKEN_OPTIMIZER_TIMEOUT_MS, DEFAULTS.timeoutMs, 10, 14000),
    startupTimeoutMs: num(cfg.startupTimeoutMs, DEFAULTS.startupTimeoutMs, 0, 60000),
    maxMessages: num(cfg.maxMessages, DEFAULTS.maxMessages, 0, 100000),
    stopGraceMs: DEFAULTS.stopGraceMs,
    pluginConfig: cfg,
  };
}

// ------------------------------------------------------------------ payload shaping

function jsonLine(obj) {
  try {
    return JSON.stringify(obj) + "\n";
  } catch {
    // BigInt or a cycle somewhere in a host payload: the slow, forgiving path
    const seen = new WeakSet();
    try {
      return (
        JSON.stringify(obj, (_k, v) => {
          if (typeof v === "bigint") return v.toString();
          if (v && typeof v === "object") {
            if (seen.has(v)) return undefined;
            seen.add(v);
          }
          return v;
        }) + "\n"
      );
    } catch {
      return null;
    }
  }
}

/** Shallow copy of the hook ctx without the members that cannot (or should not) cross the pipe. */
export function cleanCtx(ctx) {
  if (!ctx || typeof ctx !== "object") return null;
  const out = {};
  for (const k of Object.keys(ctx)) {
    if (STRIP_CTX.has(k)) continue;
    const v = ctx[k];
    if (typeof v === "function" || typeof v === "symbol") continue;
    out[k] = v;
  }
  return out;
}

/** Shallow copy of the event with long message arrays cut to their newest `maxMessages`. */
export function cleanEvent(event, maxMessages = DEFAULTS.maxMessages) {
  if (!event || typeof event !== "object") return null;
  let out = event;
  for (const k of MESSAGE_ARRAYS) {
    const arr = event[k];
    if (Array.isArray(arr) && arr.length > maxMessages) {
      if (out === event) out = { ...event };
      out[k] = maxMessages > 0 ? arr.slice(arr.length - maxMessages) : [];
    }
  }
  return out;
}

function pickResult(hook, r) {
  if (!r || typeof r !== "object" || Array.isArray(r)) return undefined;
  const out = {};
  if (hook === "agent_turn_prepare") {
    if (typeof r.prependContext === "string" && r.prependContext) out.prependContext = r.prependContext;
    if (typeof r.appendContext === "string" && r.appendContext) out.appendContext = r.appendContext;
  } else if (hook === "before_tool_call") {
    if (r.block === true) {
      out.block = true;
      if (typeof r.blockReason === "string") out.blockReason = r.blockReason;
    }
    if (r.params && typeof r.params === "object" && !Array.isArray(r.params)) out.params = r.params;
  }
  return Object.keys(out).length ? out : undefined;
}

const LEVELS = { DEBUG: "debug", INFO: "info", WARNING: "warn", WARN: "warn", ERROR: "error", CRITICAL: "error" };

function logTo(logger, level, message) {
  if (!logger) return;
  try {
    const lvl = level === "warning" ? "warn" : level === "critical" ? "error" : level;
    const fn = logger[lvl];
    if (typeof fn === "function") fn.call(logger, message);
    else if (lvl !== "debug" && typeof logger.info === "function") logger.info(message);
  } catch {
    /* a broken logger must not break a hook */
  }
}

// ------------------------------------------------------------------ the bridge

class Bridge {
  constructor() {
    this.settings = resolveSettings(undefined);
    this.settingsFromFull = false;
    this.logger = null;
    this.child = null;
    this.ready = false;
    this.buf = "";
    this.errBuf = "";
    this.errLevel = "info";
    this.pending = new Map();
    this.nextId = 1;
    this.crashes = 0;
    this.nextSpawnAt = 0;
    this.spawnedAt = 0;
    this.spawnCount = 0;
    this.stopping = null;
    this.exitHooked = false;
    this.stats = { requests: 0, timeouts: 0, notifications: 0, badLines: 0, enqueues: 0 };
  }

  configure(api) {
    const full = api.registrationMode === "full";
    if (full || !this.settingsFromFull) {
      this.settings = resolveSettings(api.pluginConfig);
      this.settingsFromFull = full;
    }
    if (full || !this.logger) this.logger = api.logger || this.logger;
  }

  log(level, message) {
    logTo(this.logger, level, message.startsWith("[token-optimizer]") ? message : "[token-optimizer] " + message);
  }

  alive() {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Start the worker if none runs and the crash backoff allows it. Returns whether one runs. */
  ensure() {
    if (this.alive()) return true;
    if (Date.now() < this.nextSpawnAt) return false;
    try {
      this.spawnWorker();
    } catch (e) {
      this.log("warn", `cannot start the Python worker (${this.settings.pythonPath}): ${e && e.message}`);
      this.markCrash();
      return false;
    }
    return this.alive();
  }

  spawnWorker() {
    const s = this.settings;
    const child = spawn(s.pythonPath, ["-m", WORKER_MODULE], {
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, PYTHONIOENCODING: "utf-8" },
      windowsHide: true,
      // own process group: a terminal's Ctrl-C or a group SIGTERM reaches the gateway, which then
      // stops the worker in order (gateway_stop first); stdin EOF ends it if the gateway dies
      detached: true,
    });
    if (child.pid === undefined) {
      // spawn failed synchronously (ENOENT/EACCES); the "error" event follows on the next tick
      child.on("error", () => {});
      throw new Error("spawn failed (is pythonPath right?)");
    }
    this.child = child;
    this.ready = false;
    this.buf = "";
    this.errBuf = "";
    this.spawnedAt = Date.now();
    this.spawnCount += 1;
    let gone = false;
    const onGone = (why) => {
      if (gone) return;
      gone = true;
      this.workerGone(child, why);
    };
    child.on("error", (e) => onGone(`error: ${e && e.message}`));
    child.on("exit", (code, signal) => onGone(signal ? `signal ${signal}` : `exit code ${code}`));
    child.stdin.on("error", () => {}); // EPIPE after a crash: handled through "exit"
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => this.onStdout(chunk));
    child.stdout.on("error", () => {});
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => this.onStderr(chunk));
    child.stderr.on("error", () => {});
    // Let short-lived CLI processes exit: nothing of ours keeps the event loop alive while idle.
    child.unref();
    this.idle();
    if (!this.exitHooked) {
      this.exitHooked = true;
      process.once("exit", () => this.kill("SIGTERM"));
    }
    this.write({ type: "init", config: s.pluginConfig, shimVersion: SHIM_VERSION });
  }

  idle() {
    const c = this.child;
    if (!c) return;
    for (const st of [c.stdin, c.stdout, c.stderr]) {
      try { st && typeof st.unref === "function" && st.unref(); } catch { /* ignore */ }
    }
  }

  busy() {
    const c = this.child;
    if (c && c.stdout && typeof c.stdout.ref === "function") {
      try { c.stdout.ref(); } catch { /* ignore */ }
    }
  }

  markCrash() {
    this.crashes += 1;
    const delay = this.crashes <= 1 ? 0 : Math.min(30000, 250 * 2 ** (this.crashes - 2));
    this.nextSpawnAt = Date.now() + delay;
  }

  workerGone(child, why) {
    if (this.child !== child) return;
    this.child = null;
    this.ready = false;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.resolve(undefined);
    }
    this.pending.clear();
    if (this.stopping || child.tokenOptimizerStopping) return;
    if (Date.now() - this.spawnedAt > 30000) this.crashes = 0;
    this.markCrash();
    this.log("warn", `Python worker stopped (${why}); hooks fail open until it is restarted`);
  }

  write(obj) {
    const c = this.child;
    if (!c || !c.stdin || c.stdin.destroyed || !c.stdin.writable) return false;
    const line = jsonLine(obj);
    if (line === null) return false;
    try {
      c.stdin.write(line);
      return true;
    } catch {
      return false;
    }
  }

  onStdout(chunk) {
    this.buf += chunk;
    let nl;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onLine(line);
    }
  }

  onStderr(chunk) {
    this.errBuf += chunk;
    let nl;
    while ((nl = this.errBuf.indexOf("\n")) >= 0) {
      const line = this.errBuf.slice(0, nl);
      this.errBuf = this.errBuf.slice(nl + 1);
      if (!line.trim()) continue;
      const sp = line.indexOf(" ");
      const lvl = sp > 0 ? LEVELS[line.slice(0, sp)] : undefined;
      if (lvl) {
        this.errLevel = lvl;
        this.log(lvl, line.slice(sp + 1));
      } else {
        this.log(this.errLevel, line); // continuation (traceback) or a stray write
      }
    }
  }

  onLine(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      this.stats.badLines += 1;
      this.log("debug", "ignored a non-JSON line from the worker");
      return;
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) {
      this.stats.badLines += 1;
      return;
    }
    if (msg.type === "ready") {
      this.ready = true;
      return;
    }
    const p = msg.id !== null && msg.id !== undefined ? this.pending.get(msg.id) : undefined;
    if (p) {
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (this.pending.size === 0) this.idle();
      if (Array.isArray(msg.actions) && msg.actions.length) this.perform(msg.actions, p.api);
      if (typeof msg.error === "string" && p.hook) this.log("warn", `worker error on ${p.hook}: ${msg.error}`);
      if (p.hook === null) p.resolve(msg);
      else p.resolve(msg.error === undefined ? pickResult(p.hook, msg.result) : undefined);
      return;
    }
    if (typeof msg.error === "string") {
      this.log("warn", `worker error: ${msg.error}`);
      return;
    }
    if (Array.isArray(msg.actions) && msg.actions.length) this.perform(msg.actions, null);
  }

  /** Awaited hook: resolves to the sanitised result or undefined; never rejects. */
  request(hook, event, ctx, api) {
    if (!this.ensure()) return Promise.resolve(undefined);
    const id = this.nextId++;
    this.stats.requests += 1;
    return new Promise((resolve) => {
      const budget = this.settings.timeoutMs + (this.ready ? 0 : this.settings.startupTimeoutMs);
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) {
          this.stats.timeouts += 1;
          if (this.pending.size === 0) this.idle();
          this.log("warn", `${hook} got no answer within ${budget} ms; continuing without it`);
          resolve(undefined);
        }
      }, budget);
      this.pending.set(id, { resolve, timer, hook, api });
      this.busy();
      if (!this.write({ id, hook, event, ctx })) {
        this.pending.delete(id);
        clearTimeout(timer);
        if (this.pending.size === 0) this.idle();
        resolve(undefined);
      }
    });
  }

  /** Control request (ping, status): resolves to the worker's reply object, or undefined. */
  control(msg, timeoutMs = this.settings.timeoutMs + this.settings.startupTimeoutMs) {
    if (!this.ensure()) return Promise.resolve(undefined);
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id) && this.pending.size === 0) this.idle();
        resolve(undefined);
      }, timeoutMs);
      this.pending.set(id, { resolve, timer, hook: null, api: null });
      this.busy();
      if (!this.write({ ...msg, id })) {
        this.pending.delete(id);
        clearTimeout(timer);
        resolve(undefined);
      }
    });
  }

  /** `/token-optimizer [args]` typed in a chat: `{text}` from the worker, or a short note. Never throws. */
  async command(ctx) {
    try {
      const c = ctx && typeof ctx === "object" ? ctx : {};
      const msg = { type: "command", args: typeof c.args === "string" ? c.args : "" };
      if (typeof c.sessionKey === "string" && c.sessionKey) msg.sessionKey = c.sessionKey;
      if (typeof c.sessionId === "string" && c.sessionId) msg.sessionId = c.sessionId;
      const r = await this.control(msg);
      const text = r && r.result && typeof r.result.text === "string" ? r.result.text : "";
      if (text) return { text };
    } catch (e) {
      this.log("warn", `/token-optimizer failed: ${e && e.message}`);
    }
    return { text: "[Token Optimizer] status unavailable: the Python worker did not answer (see the gateway log)." };
  }

  /** Observe hook: fire and forget. */
  notify(hook, event, ctx) {
    if (!this.ensure()) return;
    this.stats.notifications += 1;
    this.write({ id: null, hook, event, ctx });
  }

  perform(actions, hookApi) {
    for (const a of actions) {
      if (!a || typeof a !== "object") continue;
      if (a.type === "log" && typeof a.message === "string") {
        this.log(typeof a.level === "string" ? a.level : "info", a.message);
      } else if (a.type === "enqueue_next_turn_injection") {
        this.enqueue(a, hookApi).catch(() => {});
      }
    }
  }

  async enqueue(a, hookApi) {
    if (typeof a.sessionKey !== "string" || typeof a.text !== "string") return;
    const api = globalThis[FULL_API_KEY] || hookApi;
    const input = { sessionKey: a.sessionKey, text: a.text, placement: a.placement === "append_context" ? "append_context" : "prepend_context" };
    if (typeof a.idempotencyKey === "string") input.idempotencyKey = a.idempotencyKey;
    let enqueued = false;
    try {
      const wf = api && api.session && api.session.workflow;
      let r;
      if (wf && typeof wf.enqueueNextTurnInjection === "function") r = await wf.enqueueNextTurnInjection(input);
      else if (api && typeof api.enqueueNextTurnInjection === "function") r = await api.enqueueNextTurnInjection(input);
      enqueued = !!(r && r.enqueued === true);
    } catch (e) {
      this.log("warn", `enqueueNextTurnInjection failed: ${e && e.message}`);
    }
    this.stats.enqueues += 1;
    this.write({ type: "enqueue_result", sessionKey: a.sessionKey, idempotencyKey: String(a.idempotencyKey ?? ""), enqueued });
  }

  /** Close the worker's stdin (it flushes and exits); escalate to signals after a grace period. */
  stop(graceMs = this.settings.stopGraceMs) {
    if (this.stopping) return this.stopping;
    const child = this.child;
    if (!child || !this.alive()) return Promise.resolve();
    this.stopping = new Promise((resolve) => {
      let t1 = null;
      let t2 = null;
      const done = () => {
        clearTimeout(t1);
        clearTimeout(t2);
        this.stopping = null;
        resolve();
      };
      child.tokenOptimizerStopping = true;
      child.once("exit", done);
      child.once("error", done);
      try { child.stdin.end(); } catch { /* ignore */ }
      t1 = setTimeout(() => {
        try { child.kill("SIGTERM"); } catch { /* ignore */ }
        t2 = setTimeout(() => {
          try { child.kill("SIGKILL"); } catch { /* ignore */ }
          done();
        }, 1000);
      }, graceMs);
    });
    return this.stopping;
  }

  kill(signal = "SIGTERM") {
    const c = this.child;
    if (c && this.alive()) {
      try { c.kill(signal); } catch { /* ignore */ }
    }
  }

  dispatch(hook, event, ctx, api) {
    try {
      const ev = cleanEvent(event, this.settings.maxMessages);
      const cx = cleanCtx(ctx);
      if (AWAITED.has(hook)) return this.request(hook, ev, cx, api);
      if (hook === "gateway_stop") {
        if (this.alive()) this.write({ id: null, hook, event: ev, ctx: cx });
        return this.stop().catch(() => undefined);
      }
      this.notify(hook, ev, cx);
    } catch (e) {
      this.log("warn", `${hook} not forwarded: ${e && e.message}`);
    }
    return undefined;
  }
}

// OpenClaw may call register() more than once in one process (openclaw/openclaw#77822), and
// when two registrations' handlers are live the host hands each of them the same call: the
// same ctx object and the same event object (before_tool_call clones the event per handler,
// but the ctx and its toolCallId are the same). Such a second dispatch is not forwarded again.
const SEEN_KEY = Symbol.for("token-optimizer-openclaw.seenCalls");

function isRepeat(hook, event, ctx) {
  if (!ctx || typeof ctx !== "object") return false;
  const seen = (globalThis[SEEN_KEY] ??= new WeakMap());
  let hooks = seen.get(ctx);
  if (!hooks) {
    hooks = new Map();
    seen.set(ctx, hooks);
  }
  const prev = hooks.get(hook);
  const callId = typeof ctx.toolCallId === "string" && ctx.toolCallId ? ctx.toolCallId : null;
  hooks.set(hook, { event, callId });
  if (!prev) return false;
  return prev.event === event || (callId !== null && prev.callId === callId);
}

/** The per-process bridge (shared by every registration's module instance). */
export function getBridge() {
  let b = globalThis[BRIDGE_KEY];
  if (!b) {
    b = new Bridge();
    globalThis[BRIDGE_KEY] = b;
  }
  return b;
}

export function register(api) {
  const bridge = getBridge();
  bridge.configure(api);
  if (api.registrationMode === "full") globalThis[FULL_API_KEY] = api;
  if (typeof api.registerService === "function") {
    api.registerService({
      id: "token-optimizer",
      start: () => {},
      stop: () => getBridge().stop().catch(() => undefined),
    });
  }
  for (const hook of HOOKS) {
    api.on(hook, (event, ctx) =>
      isRepeat(hook, event, ctx) ? undefined : getBridge().dispatch(hook, event, ctx, api));
  }
  if (typeof api.registerCommand === "function") {
    try {
      api.registerCommand({ ...COMMAND, handler: (ctx) => getBridge().command(ctx) });
    } catch (e) {
      bridge.log("warn", `/token-optimizer not registered: ${e && e.message}`);
    }
  }
}

const plugin = {
  id: PLUGIN_ID,
  name: "Token Optimizer",
  description:
    "Progressive checkpoints, compaction restore, continuity hints and a read cache for long agent sessions (Python worker).",
  register,
};
export default plugin;
