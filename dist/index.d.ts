// Typings for the Token Optimizer OpenClaw shim (dist/index.js) and its JSON-lines protocol.

/** The subset of the OpenClaw plugin api the shim uses. */
export interface PluginLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  debug?(message: string): void;
}

export interface NextTurnInjection {
  sessionKey: string;
  text: string;
  idempotencyKey?: string;
  placement?: "prepend_context" | "append_context";
}

export interface NextTurnInjectionResult {
  enqueued: boolean;
  id?: string;
  sessionKey?: string;
}

export interface PluginApi {
  id?: string;
  registrationMode?: "full" | "discovery" | "tool-discovery" | "setup-only" | "setup-runtime" | "cli-metadata" | string;
  pluginConfig?: Record<string, unknown>;
  logger?: PluginLogger;
  on(hook: HookName, handler: (event: Record<string, unknown>, ctx: Record<string, unknown>) => unknown, opts?: Record<string, unknown>): void;
  registerService?(service: { id: string; start(ctx?: unknown): void | Promise<void>; stop?(ctx?: unknown): void | Promise<void> }): void;
  session?: { workflow?: { enqueueNextTurnInjection?(input: NextTurnInjection): Promise<NextTurnInjectionResult> } };
  enqueueNextTurnInjection?(input: NextTurnInjection): Promise<NextTurnInjectionResult>;
}

/** plugins.entries["token-optimizer-openclaw"].config */
export interface TokenOptimizerPluginConfig {
  /** Python with token_optimizer installed (default: $TOKEN_OPTIMIZER_PYTHON, else "python3"). */
  pythonPath?: string;
  /** Wait for awaited hooks before failing open (default 1500). */
  timeoutMs?: number;
  /** Extra wait while the worker is starting (default 5000). */
  startupTimeoutMs?: number;
  /** Newest N messages sent per event (default 200). */
  maxMessages?: number;
  /** Session-index retention in days; 0 disables pruning (default 90). */
  sessionStoreMaxAgeDays?: number;
}

export type HookName =
  | "gateway_start"
  | "gateway_stop"
  | "session_start"
  | "session_end"
  | "agent_turn_prepare"
  | "before_tool_call"
  | "after_tool_call"
  | "before_compaction"
  | "after_compaction"
  | "llm_output"
  | "model_call_ended"
  | "agent_end";

export type AwaitedHookName = "agent_turn_prepare" | "before_tool_call";

export interface TurnPrepareResult { prependContext?: string; appendContext?: string }
export interface BeforeToolCallResult { block?: true; blockReason?: string; params?: Record<string, unknown> }

// ------------------------------------------------------------------ protocol (one JSON object per line)

/** JS -> worker: first line after spawn. */
export interface InitMessage { type: "init"; config: TokenOptimizerPluginConfig | Record<string, unknown> }
/** JS -> worker: a hook call; id null = notification (no reply). */
export interface HookRequest { id: number | null; hook: HookName | string; event: Record<string, unknown> | null; ctx: Record<string, unknown> | null }
/** JS -> worker: outcome of an enqueue action (lets the runtime fall back to prependContext). */
export interface EnqueueResultMessage { type: "enqueue_result"; sessionKey: string; idempotencyKey: string; enqueued: boolean }
/** JS -> worker: liveness / debugging. */
export interface PingMessage { id: number | string; type: "ping" }
export interface StatusMessage { id: number | string; type: "status"; sessionId?: string }
export type ShimToWorker = InitMessage | HookRequest | EnqueueResultMessage | PingMessage | StatusMessage;

export interface EnqueueAction {
  type: "enqueue_next_turn_injection";
  sessionKey: string;
  sessionId: string;
  text: string;
  idempotencyKey: string;
  placement: "prepend_context" | "append_context";
}
export interface LogAction { type: "log"; level: "debug" | "info" | "warn" | "error"; message: string }
export type WorkerAction = EnqueueAction | LogAction;

/** worker -> JS */
export interface ReadyMessage { id: null; type: "ready"; pid: number; protocol: number }
export interface HookReply { id: number | string; result: Record<string, unknown> | null; actions: WorkerAction[] }
export interface ActionsMessage { id: null; type: "actions"; hook: string; actions: WorkerAction[] }
export interface ErrorReply { id: number | string | null; error: string }
export type WorkerToShim = ReadyMessage | HookReply | ActionsMessage | ErrorReply;

// ------------------------------------------------------------------ exports

export declare const PLUGIN_ID: "token-optimizer-openclaw";
export declare const WORKER_MODULE: "token_optimizer.hosts.openclaw";
export declare const HOOKS: readonly HookName[];
export declare const AWAITED_HOOKS: readonly AwaitedHookName[];
export declare const DEFAULTS: Readonly<{ pythonPath: string; timeoutMs: number; startupTimeoutMs: number; maxMessages: number; stopGraceMs: number }>;

export interface ShimSettings {
  pythonPath: string;
  timeoutMs: number;
  startupTimeoutMs: number;
  maxMessages: number;
  stopGraceMs: number;
  pluginConfig: Record<string, unknown>;
}
export declare function resolveSettings(pluginConfig: unknown, env?: Record<string, string | undefined>): ShimSettings;
export declare function cleanCtx(ctx: unknown): Record<string, unknown> | null;
export declare function cleanEvent(event: unknown, maxMessages?: number): Record<string, unknown> | null;

/** The per-process bridge (for diagnostics and tests). */
export interface Bridge {
  readonly settings: ShimSettings;
  readonly child: { pid?: number } | null;
  readonly ready: boolean;
  readonly spawnCount: number;
  readonly stats: { requests: number; timeouts: number; notifications: number; badLines: number; enqueues: number };
  alive(): boolean;
  /** Send a control message (ping/status) and resolve to the raw reply, or undefined. */
  control(msg: PingMessage | StatusMessage | { type: string; [k: string]: unknown }, timeoutMs?: number): Promise<Record<string, unknown> | undefined>;
  stop(graceMs?: number): Promise<void>;
  kill(signal?: NodeJS.Signals | string): void;
}
export declare function getBridge(): Bridge;
export declare function register(api: PluginApi): void;

declare const plugin: { id: "token-optimizer-openclaw"; name: string; description: string; register(api: PluginApi): void };
export default plugin;
