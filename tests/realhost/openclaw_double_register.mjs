// Two registrations of the shim in one process whose handlers are both live, like
// openclaw/openclaw#77822: every call reaches both handlers with the same ctx object.
// usage: node openclaw_double_register.mjs <path to dist/index.js>   (env SHIM_CONFIG)
// Prints one JSON object on the last stdout line.
import { pathToFileURL } from "node:url";

const entryUrl = pathToFileURL(process.argv[2]).href;
const CONFIG = JSON.parse(process.env.SHIM_CONFIG || "{}");
const live = new Map(); // hook -> handlers of every registration (one hook runner)

function makeApi(mode) {
  return {
    id: "token-optimizer-openclaw", registrationMode: mode, pluginConfig: CONFIG,
    logger: { info() {}, warn() {}, error() {}, debug() {} },
    on(name, h) { if (!live.has(name)) live.set(name, []); live.get(name).push(h); },
    registerService() {},
    session: { workflow: { enqueueNextTurnInjection: async () => ({ enqueued: true, id: "x" }) } },
  };
}

async function fire(hook, event, ctx) {
  const out = [];
  for (const h of live.get(hook) || []) out.push(await h(hook === "before_tool_call" ? { ...event } : event, ctx));
  return out;
}

for (const mode of ["full", "full"]) {
  const mod = await import(entryUrl + "?instance=" + Math.random());
  mod.default.register(makeApi(mode));
}
const ctx = { sessionId: "dup-1", sessionKey: "agent:main:explicit:dup-1", agentId: "main", trigger: "user" };
const results = {};
results.turn = await fire("agent_turn_prepare", { prompt: "Task: hello", messages: [] }, { ...ctx, workspaceDir: "/tmp" });
for (let i = 0; i < 3; i++) {
  const tc = { ...ctx, toolName: "edit", toolCallId: "call-" + i };
  await fire("before_tool_call", { toolName: "edit", params: { path: "src/a.py" } }, tc);
  await fire("after_tool_call", { toolName: "edit", params: { path: "src/a.py" } }, tc);
}
const bridge = globalThis[Symbol.for("token-optimizer-openclaw.bridge")];
await new Promise((r) => setTimeout(r, 500)); // let the observe notifications land
await bridge.stop();
console.log(JSON.stringify({ handlers: (live.get("after_tool_call") || []).length, turn: results.turn }));
