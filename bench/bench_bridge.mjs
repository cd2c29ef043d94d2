// Per-hook overhead of the OpenClaw bridge: host -> dist/index.js -> Python worker (real runtime)
// -> back, measured at the hook handler exactly as the host calls it.
//
// usage: node bench/bench_bridge.mjs [N=5000] [--python PATH]
//   env PYTHON (default python3) selects the worker's interpreter; HOME / TOKEN_OPTIMIZER_HOME
//   should point at a scratch directory (bench_bridge.py does that for you).
// Prints one JSON object.
import { performance } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import path from "node:path";

const args = process.argv.slice(2);
const N = Number(args.find((a) => /^\d+$/.test(a)) || 5000);
const pyIdx = args.indexOf("--python");
const python = pyIdx >= 0 ? args[pyIdx + 1] : process.env.PYTHON || "python3";
const here = path.dirname(fileURLToPath(import.meta.url));
const entry = pathToFileURL(path.join(here, "..", "dist", "index.js")).href;

const mod = await import(entry);
const handlers = new Map();
const api = {
  registrationMode: "full",
  pluginConfig: { pythonPath: python, timeoutMs: 10000 },
  logger: { info() {}, warn() {}, error() {}, debug() {} },
  on(name, h) { handlers.set(name, h); },
  registerService() {},
  session: { workflow: { enqueueNextTurnInjection: async () => ({ enqueued: true, id: "x" }) } },
};
mod.default.register(api);
const bridge = mod.getBridge();
const fire = (hook, event, ctx) => handlers.get(hook)(event, ctx);

const ctx = {
  agentId: "main", sessionKey: "agent:main:explicit:bench-1", sessionId: "bench-1", runId: "run-1",
  toolCallId: "call-1", trace: { traceId: "t" }, abortSignal: new AbortController().signal,
};
const toolEvent = { toolName: "exec", params: { command: "ls -la src/" }, runId: "run-1", toolCallId: "call-1" };
const turnEvent = { prompt: "continue with the refactor", messages: [], queuedInjections: [] };

const t0 = performance.now();
const ping = await bridge.control({ type: "ping" }, 30000);
const startupMs = performance.now() - t0;
if (!ping || !ping.result) {
  console.log(JSON.stringify({ error: "worker did not start", python }));
  process.exit(1);
}
await fire("session_start", { sessionId: "bench-1", sessionKey: ctx.sessionKey }, ctx);
await fire("agent_turn_prepare", turnEvent, { ...ctx, trigger: "user" });

function stats(lat) {
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] * 1000;
  const mean = (lat.reduce((a, b) => a + b, 0) / lat.length) * 1000;
  return { n: lat.length, mean_us: +mean.toFixed(1), p50_us: +q(0.5).toFixed(1), p99_us: +q(0.99).toFixed(1), max_us: +(lat[lat.length - 1] * 1000).toFixed(1) };
}

async function seq(label, fn, n) {
  for (let i = 0; i < Math.min(500, n); i++) await fn(i); // warm-up
  const lat = new Array(n);
  for (let i = 0; i < n; i++) {
    const a = performance.now();
    await fn(i);
    lat[i] = performance.now() - a;
  }
  return { label, ...stats(lat) };
}

const results = {};
results.before_tool_call = await seq("before_tool_call(exec)", () => fire("before_tool_call", toolEvent, ctx), N);
results.agent_turn_prepare = await seq("agent_turn_prepare(later turn)", () => fire("agent_turn_prepare", turnEvent, { ...ctx, trigger: "user" }), Math.max(1, N / 5) | 0);
results.ping = await seq("protocol only (ping)", () => bridge.control({ type: "ping" }), N);
// observe hooks: the host does not wait; measure what the handler costs the host, then drain
const obsEvent = { toolName: "exec", params: { command: "ls" }, runId: "run-1", toolCallId: "c", result: "ok", durationMs: 2 };
const o0 = performance.now();
for (let i = 0; i < N; i++) fire("after_tool_call", obsEvent, ctx);
const handlerUs = ((performance.now() - o0) * 1000) / N;
await bridge.control({ type: "ping" }, 60000); // the worker answers after draining the queue
const drainedUs = ((performance.now() - o0) * 1000) / N;
results.after_tool_call = { label: "after_tool_call notifications", n: N, host_handler_us_per_call: +handlerUs.toFixed(2), worker_throughput_us_per_call: +drainedUs.toFixed(2) };

await fire("gateway_stop", { reason: "bench done" }, {});
console.log(JSON.stringify({ node: process.version, python, N, workerStartupMs: +startupMs.toFixed(1), stats: bridge.stats, results }));
