// Shared helpers of the scripts that drive the real Microsoft 365 Agents Playground
// (npm @microsoft/m365agentsplayground, `npm ci --prefix tools/node`) over its HTTP and WebSocket
// APIs without a browser: tools/node/playground-smoke.js and tools/node/playground-journeys.js.
//
//   const lib = require("./playground-lib");
//   if (lib.reexecWithWebSocket(__filename, "my-script")) return;   // Node 20 needs a flag
//   lib.main({ name, usageLine, timeoutEnv, defaultTimeoutMs, parse(args), run(session, options) });
//
// `main` owns the process: the overall timeout, SIGINT/SIGTERM/SIGHUP, `--watch-stdin` (give up
// when the parent closes our stdin), one JSON summary line on stdout and exit 0, or the reason
// plus the Playground's last output on stderr and exit 1 (usage errors exit 2). The Playground
// child is always killed and its temporary directory removed.
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const WS_FLAG = "--experimental-websocket";

const repo = path.resolve(__dirname, "..", "..");
const cliJs = path.join(__dirname, "node_modules", "@microsoft", "m365agentsplayground", "cli.js");
const configPath = path.join(repo, "sandbox", "m365agentsplayground.yml");

/** Ids from sandbox/m365agentsplayground.yml. */
const ids = Object.freeze({
  PERSONAL_CHAT: "a:1sandboxPersonalChat",
  CHANNEL: "19:sandboxM365Support@thread.tacv2",
  USER: "29:1sandboxAdmin",
  USER_UPN: "admin@contoso.onmicrosoft.com",
  TENANT_DOMAIN: "contoso.onmicrosoft.com",
  BOT_ID: "28:00000000-0000-0000-0000-00000000b07a",
  BOT_NAME: "m365bot",
});
const ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive";

/** A failure with a message meant for the user (no stack trace). */
class PlaygroundError extends Error {}

function fail(message) {
  throw new PlaygroundError(message);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function tail(text, lines) {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * Node 20 has the global WebSocket only with --experimental-websocket: without it, re-runs the
 * script with the flag and returns true (the caller must then return at once).
 */
function reexecWithWebSocket(filename, name) {
  if (typeof globalThis.WebSocket === "function") return false;
  if (process.execArgv.includes(WS_FLAG)) {
    console.error(`${name}: FAIL: this Node (${process.version}) has no WebSocket even with ${WS_FLAG}; Node >= 20 is needed`);
    process.exit(1);
  }
  const again = spawn(process.execPath, [...process.execArgv, WS_FLAG, filename, ...process.argv.slice(2)], {
    stdio: "inherit",
  });
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => again.kill(signal));
  }
  again.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
  again.on("error", (err) => {
    console.error(`${name}: FAIL: cannot re-run node with ${WS_FLAG}: ${err.message}`);
    process.exit(1);
  });
  return true;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    // All interfaces, as the Playground listens on `*:port`.
    server.listen(0, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function checkReachable(endpoint) {
  const url = new URL(endpoint);
  const port = Number(url.port) || (url.protocol === "https:" ? 443 : 80);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  return new Promise((resolve, reject) => {
    const connection = net.connect({ host, port });
    const timer = setTimeout(() => {
      connection.destroy();
      reject(new PlaygroundError(`the bot endpoint ${endpoint} is not reachable (connect timed out)`));
    }, 5000);
    connection.on("connect", () => {
      clearTimeout(timer);
      connection.end();
      resolve();
    });
    connection.on("error", (err) => {
      clearTimeout(timer);
      reject(new PlaygroundError(`the bot endpoint ${endpoint} is not reachable (${err.code ?? err.message}); start the bot first`));
    });
  });
}

// ---- cards ----

/** The Adaptive Cards attached to a WebSocket message. */
function cardsOf(wsMessage) {
  const attachments = wsMessage?.message?.attachments;
  if (!Array.isArray(attachments)) return [];
  return attachments.filter((a) => a && a.contentType === ADAPTIVE_CARD && a.content && typeof a.content === "object").map((a) => a.content);
}

/** The first TextBlock of a card. */
function cardTitle(card) {
  const first = (items) => {
    for (const item of items ?? []) {
      if (item?.type === "TextBlock" && typeof item.text === "string") return item.text;
      const inner = first(item?.items);
      if (inner) return inner;
    }
    return null;
  };
  return first(card?.body);
}

/** The heading of a card (the TextBlock with style "heading"), else its first TextBlock. */
function cardHeading(card) {
  let found = null;
  walk(card?.body, (node) => {
    if (!found && node?.type === "TextBlock" && node.style === "heading" && typeof node.text === "string") found = node.text;
  });
  return found ?? cardTitle(card);
}

function walk(value, visit) {
  if (Array.isArray(value)) {
    for (const item of value) walk(item, visit);
  } else if (value && typeof value === "object") {
    visit(value);
    for (const inner of Object.values(value)) walk(inner, visit);
  }
}

/** Every user-visible string of a card: texts, titles, fact values, choice titles. */
function cardTexts(card) {
  const out = [];
  walk(card, (node) => {
    for (const key of ["text", "title", "value", "label", "placeholder"]) {
      if (typeof node[key] === "string") out.push(node[key]);
    }
  });
  return out;
}

/** Every action of a card (top-level `actions`, ActionSets, nested cards of ShowCard). */
function cardActions(card) {
  const out = [];
  walk(card, (node) => {
    if (typeof node.type === "string" && node.type.startsWith("Action.")) out.push(node);
  });
  return out;
}

function describeWsMessage(m) {
  const cards = cardsOf(m);
  const text = m?.message?.text ? ` text=${JSON.stringify(String(m.message.text).slice(0, 80))}` : "";
  const heading = cards.length ? ` "${String(cardHeading(cards[0]) ?? "").slice(0, 80)}"` : "";
  return `${m.action ?? "?"} in ${m.actionConversationId ?? "?"} (${cards.length} card(s))${heading}${text}`;
}

// ---- the conversation stream ----

/** Conversation WebSocket: every message is kept; waiters scan from an index. */
class ConversationStream {
  constructor(url, stepTimeoutMs, isFinished) {
    this.url = url;
    this.stepTimeoutMs = stepTimeoutMs;
    this.isFinished = isFinished;
    this.messages = [];
    this.waiters = [];
    this.closedReason = null;
    this.socket = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.socket = ws;
      const timer = setTimeout(() => reject(new PlaygroundError(`WebSocket ${this.url} did not open within ${this.stepTimeoutMs} ms`)), this.stepTimeoutMs);
      ws.addEventListener("open", () => {
        clearTimeout(timer);
        resolve();
      });
      ws.addEventListener("error", () => {
        clearTimeout(timer);
        this.closedReason = "WebSocket error";
        reject(new PlaygroundError(`WebSocket ${this.url} failed`));
        this.wake();
      });
      ws.addEventListener("close", (event) => {
        this.closedReason = `WebSocket closed (code ${event.code})`;
        this.wake();
      });
      ws.addEventListener("message", (event) => {
        let parsed;
        try {
          parsed = JSON.parse(String(event.data));
        } catch {
          parsed = { unparsable: String(event.data).slice(0, 200) };
        }
        this.messages.push(parsed);
        this.wake();
      });
    });
  }

  /** The index the next message will get: wait from here for answers to what you send next. */
  mark() {
    return this.messages.length;
  }

  wake() {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Resolves with the first message at index >= `from` matching `predicate`. */
  waitFor(from, predicate, label, timeoutMs = this.stepTimeoutMs) {
    return new Promise((resolve, reject) => {
      let timer = null;
      const check = () => {
        for (let i = from; i < this.messages.length; i++) {
          if (predicate(this.messages[i])) {
            done();
            resolve(this.messages[i]);
            return;
          }
        }
        if (this.closedReason && !this.isFinished()) {
          done();
          reject(new PlaygroundError(`${label}: ${this.closedReason} before it arrived`));
        }
      };
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      timer = setTimeout(() => {
        done();
        const seen = this.messages.slice(from).map(describeWsMessage);
        reject(new PlaygroundError(`${label}: nothing matching within ${timeoutMs} ms; WebSocket messages since: ${seen.length ? seen.join(" | ") : "none"}`));
      }, timeoutMs);
      this.waiters.push(check);
      check();
    });
  }

  close() {
    try {
      this.socket?.close();
    } catch {
      // ignore
    }
  }
}

/** Playground log WebSocket: keeps warnings and errors (e.g. "Cannot connect to your app") for failure messages. */
function watchLog(url, problems) {
  try {
    const ws = new WebSocket(url);
    ws.addEventListener("message", (event) => {
      try {
        const { log } = JSON.parse(String(event.data));
        if (log && (log.level === "warning" || log.level === "error")) {
          problems.push(`${log.level}: ${String(log.displayText ?? log.message ?? "").slice(0, 200)}`);
        }
      } catch {
        // not a log line
      }
    });
    ws.addEventListener("error", () => {});
    return ws;
  } catch {
    return null;
  }
}

// ---- the Playground process ----

/** One Playground child process with its conversation stream; `main` creates and stops it. */
class PlaygroundSession {
  constructor(name, stepTimeoutMs) {
    this.name = name;
    this.stepTimeoutMs = stepTimeoutMs;
    this.child = null;
    this.exited = false;
    this.output = "";
    this.tempDir = null;
    this.logSocket = null;
    this.stream = null;
    this.problems = [];
    this.finished = false;
    this.onEarlyExit = () => {};
    this.base = null;
    this.port = null;
    this.step = "starting";
  }

  /** Checks the installation and the bot, starts the Playground, opens the conversation stream. */
  async start(botEndpoint) {
    if (!fs.existsSync(cliJs)) fail("the Agents Playground is not installed: run `npm ci --prefix tools/node`");
    if (!fs.existsSync(configPath)) fail(`missing Playground config ${path.relative(repo, configPath)}`);
    this.step = "checking the bot endpoint";
    await checkReachable(botEndpoint);
    this.step = "starting the Playground";
    const requested = await freePort();
    const port = await this.spawn(requested, botEndpoint);
    if (!port) fail("the Playground did not report `Listening on <port>`");
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    await this.waitForPing();
    this.logSocket = watchLog(`ws://127.0.0.1:${port}/_ws/log/stream`, this.problems);
    this.stream = new ConversationStream(`ws://127.0.0.1:${port}/_ws_conversation/v1/conversations/stream`, this.stepTimeoutMs, () => this.finished);
    await this.stream.open();
  }

  spawn(port, botEndpoint) {
    this.tempDir = fs.mkdtempSync(path.join(os.tmpdir(), "m365bot-playground-"));
    const env = { ...process.env };
    // Settings of the caller's shell that would change what this test sees.
    for (const name of [
      "TEAMSAPPTESTER_PORT",
      "M365_AGENTS_PLAYGROUND_SERVICE_URL",
      "M365_AGENTS_PLAYGROUND_CONVERSATION_ID",
      "M365_AGENTS_PLAYGROUND_RECORDING_FILE",
      "DEFAULT_CHANNEL_ID",
      "SEND_INSTALLATION_ACTIVITY",
      "TEAMS_APP_TEST_TOOL_CONFIG_PATH",
      "AUTH_CLIENT_ID",
      "AUTH_CLIENT_SECRET",
      "AUTH_TENANT_ID",
    ]) {
      delete env[name];
    }
    Object.assign(env, {
      BOT_ENDPOINT: botEndpoint,
      M365_AGENTS_PLAYGROUND_CONFIG_PATH: configPath,
      M365_AGENTS_PLAYGROUND_LOGFILE: path.join(this.tempDir, "m365agentsplayground.log"),
      TEAMSAPPTESTER_BROWSER: "none",
    });
    const child = spawn(process.execPath, [cliJs, "--disable-telemetry", "--port", String(port)], {
      cwd: this.tempDir,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let listening = null;
    const listeningPort = new Promise((resolve) => {
      listening = resolve;
    });
    const collect = (chunk) => {
      this.output += chunk.toString();
      if (this.output.length > 64_000) this.output = this.output.slice(-32_000);
      const match = /Listening on (\d+)/.exec(this.output);
      if (match) listening(Number(match[1]));
    };
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    child.on("exit", (code, signal) => {
      this.exited = true;
      listening(null);
      if (!this.finished) this.onEarlyExit(`the Playground exited early (code ${code}, signal ${signal})`);
    });
    child.on("error", (err) => {
      this.exited = true;
      listening(null);
      if (!this.finished) this.onEarlyExit(`cannot start the Playground: ${err.message}`);
    });
    this.child = child;
    return listeningPort;
  }

  async waitForPing() {
    const deadline = Date.now() + this.stepTimeoutMs;
    let last = "no answer";
    while (Date.now() < deadline) {
      try {
        const response = await fetch(`${this.base}/_debug/ping`, { signal: AbortSignal.timeout(2000) });
        const body = await response.text();
        if (response.ok && body.trim() === "pong") return;
        last = `HTTP ${response.status} ${body.slice(0, 100)}`;
      } catch (err) {
        last = err.cause?.code ?? err.message;
      }
      await sleep(200);
    }
    fail(`the Playground did not answer /_debug/ping with pong within ${this.stepTimeoutMs} ms (last: ${last})`);
  }

  /** POSTs JSON to the Playground; returns the parsed answer ({} when empty). */
  async post(route, body) {
    let response;
    try {
      response = await fetch(`${this.base}${route}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.stepTimeoutMs),
      });
    } catch (err) {
      fail(`POST ${route} failed: ${err.cause?.code ?? err.message}`);
    }
    const text = await response.text();
    if (!response.ok) fail(`POST ${route} answered HTTP ${response.status}: ${text.slice(0, 300)}`);
    if (!text.trim()) return {};
    try {
      return JSON.parse(text);
    } catch {
      fail(`POST ${route} answered non-JSON: ${text.slice(0, 300)}`);
    }
  }

  /** The user types `text` in a conversation; with `mention`, prefixed by an @mention of the bot. */
  say(conversationId, text, { mention = false } = {}) {
    const body = { from: { id: ids.USER }, text, textFormat: "plain" };
    if (mention) {
      const at = `<at>${ids.BOT_NAME}</at>`;
      body.text = `${at} ${text}`;
      body.mentions = [{ mentioned: { id: ids.BOT_ID, name: ids.BOT_NAME }, text: at }];
    }
    return this.post(`/_conversation/v1/conversations/${encodeURIComponent(conversationId)}/messages`, body);
  }

  /** An Action.Execute on the card message `replyToId`: returns the invoke response body. */
  invoke(conversationId, replyToId, verb, data) {
    return this.post("/_conversation/v1/invoke", {
      name: "adaptiveCard/action",
      conversation: { id: conversationId },
      from: { id: ids.USER },
      replyToId,
      value: { action: { type: "Action.Execute", verb, data: data ?? {} }, trigger: "manual" },
    });
  }

  killNow() {
    if (this.child && !this.exited) {
      try {
        this.child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }

  removeTempDir() {
    if (this.tempDir) {
      try {
        fs.rmSync(this.tempDir, { recursive: true, force: true });
      } catch {
        // best effort
      }
      this.tempDir = null;
    }
  }

  async stop() {
    this.stream?.close();
    try {
      this.logSocket?.close();
    } catch {
      // ignore
    }
    if (this.child && !this.exited) {
      this.child.kill("SIGTERM");
      const deadline = Date.now() + 3000;
      while (!this.exited && Date.now() < deadline) {
        await sleep(50);
      }
      this.killNow();
    }
  }

  /** The tail of the Playground's log file, for failure messages. */
  logTail(lines) {
    if (!this.tempDir) return "";
    try {
      return tail(fs.readFileSync(path.join(this.tempDir, "m365agentsplayground.log"), "utf8"), lines);
    } catch {
      return "";
    }
  }
}

/**
 * Runs a Playground script. `parse(args)` gets the arguments without `--watch-stdin` and returns
 * `{ endpoint, ...options }` or a string (a usage error); `run(session, options)` returns the
 * summary object. The session's Playground is started before `run` and stopped after it.
 */
function main({ name, usageLine, timeoutEnv, defaultTimeoutMs, stepTimeoutMs: stepMs, parse, run }) {
  const usage = (message) => {
    console.error(`${name}: ${message}`);
    console.error(`usage: ${usageLine}`);
    process.exit(2);
  };
  const args = process.argv.slice(2);
  const watchStdin = args.includes("--watch-stdin");
  const parsed = parse(args.filter((a) => a !== "--watch-stdin"));
  if (typeof parsed === "string") usage(parsed);
  let endpoint;
  try {
    endpoint = new URL(parsed.endpoint);
  } catch {
    usage(`not a URL: ${parsed.endpoint}`);
  }
  if (endpoint.protocol !== "http:" && endpoint.protocol !== "https:") usage(`not an http(s) URL: ${parsed.endpoint}`);

  const overallTimeoutMs = Number(process.env[timeoutEnv]) || defaultTimeoutMs;
  const session = new PlaygroundSession(name, Math.min(stepMs ?? 20_000, overallTimeoutMs));

  // Last resort: whatever happens, no Playground and no temp dir survive this process.
  process.on("exit", () => {
    session.killNow();
    session.removeTempDir();
  });

  const finish = async (code, line) => {
    if (session.finished) return;
    session.finished = true;
    await session.stop();
    const logTail = code !== 0 ? session.logTail(15) : "";
    session.removeTempDir();
    if (code === 0) {
      process.stdout.write(`${line}\n`);
    } else {
      let message = `${name}: FAIL: ${line}`;
      if (session.problems.length) message += `\n--- Playground warnings and errors ---\n${session.problems.slice(-10).join("\n")}`;
      if (session.output.trim()) message += `\n--- Playground output (last lines) ---\n${tail(session.output, 20)}`;
      if (logTail) message += `\n--- Playground log (last lines) ---\n${logTail}`;
      process.stderr.write(`${message}\n`);
    }
    process.exit(code);
  };
  session.onEarlyExit = (reason) => finish(1, reason);

  const timer = setTimeout(() => finish(1, `overall timeout of ${overallTimeoutMs} ms exceeded during: ${session.step}`), overallTimeoutMs);
  timer.unref();
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
    process.on(signal, () => finish(1, `stopped by ${signal}`));
  }
  if (watchStdin) {
    process.stdin.on("end", () => finish(1, "stdin closed (the parent gave up)"));
    process.stdin.on("error", () => finish(1, "stdin failed (the parent gave up)"));
    process.stdin.resume();
  }

  (async () => {
    await session.start(endpoint.href);
    return run(session, { ...parsed, endpoint: endpoint.href });
  })().then(
    (summary) => finish(0, JSON.stringify(summary)),
    (err) => finish(1, err instanceof PlaygroundError ? `${err.message} (step: ${session.step})` : (err?.stack ?? String(err))),
  );
}

module.exports = {
  ADAPTIVE_CARD,
  ConversationStream,
  PlaygroundError,
  PlaygroundSession,
  cardActions,
  cardHeading,
  cardTexts,
  cardTitle,
  cardsOf,
  describeWsMessage,
  fail,
  ids,
  main,
  reexecWithWebSocket,
  sleep,
  walk,
};
