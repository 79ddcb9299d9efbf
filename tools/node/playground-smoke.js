#!/usr/bin/env node
// Usage: node --experimental-websocket tools/node/playground-smoke.js <bot endpoint URL> [--watch-stdin]
//   End-to-end smoke test of the bot's Teams endpoint with the real Microsoft 365 Agents Playground
//   (npm @microsoft/m365agentsplayground, `npm ci --prefix tools/node`), driven over its HTTP and
//   WebSocket APIs without a browser. The bot must run in insecure-local mode with the tenant of
//   sandbox/m365agentsplayground.yml and accept `localhost` service URLs.
//
//   Steps: start the Playground on a free port (cwd and log file in a temporary directory), wait
//   for /_debug/ping, connect the conversation WebSocket, then
//     1. personal chat "help"            -> a help card ("m365bot commands") on the WebSocket
//     2. adaptiveCard/action invoke "help" -> the help card in the synchronous invoke response
//     3. channel mention "frobnicate"    -> a reply card in the channel thread
//     4. installationUpdate (Playground)  -> the welcome help card in the personal chat
//   Prints one JSON summary line on stdout and exits 0; on any failure prints the reason (and the
//   Playground's last output) on stderr and exits 1. Usage errors exit 2. The Playground is killed
//   on exit, on errors, on SIGINT/SIGTERM and after the overall timeout (60 s, env
//   PLAYGROUND_SMOKE_TIMEOUT_MS). With --watch-stdin the script also gives up when its stdin is
//   closed, so a parent that dies (or drops the pipe) never leaves a Playground behind.
//
//   Node 20 needs --experimental-websocket for the global WebSocket; without it the script
//   re-runs itself with the flag.
"use strict";

const { spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const WS_FLAG = "--experimental-websocket";

if (typeof globalThis.WebSocket !== "function") {
  if (process.execArgv.includes(WS_FLAG)) {
    console.error(`playground-smoke: FAIL: this Node (${process.version}) has no WebSocket even with ${WS_FLAG}; Node >= 20 is needed`);
    process.exit(1);
  }
  const again = spawn(process.execPath, [...process.execArgv, WS_FLAG, __filename, ...process.argv.slice(2)], {
    stdio: "inherit",
  });
  for (const signal of ["SIGINT", "SIGTERM"]) {
    process.on(signal, () => again.kill(signal));
  }
  again.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
  again.on("error", (err) => {
    console.error(`playground-smoke: FAIL: cannot re-run node with ${WS_FLAG}: ${err.message}`);
    process.exit(1);
  });
  return;
}

const repo = path.resolve(__dirname, "..", "..");
const cliJs = path.join(__dirname, "node_modules", "@microsoft", "m365agentsplayground", "cli.js");
const configPath = path.join(repo, "sandbox", "m365agentsplayground.yml");

// Ids from sandbox/m365agentsplayground.yml.
const PERSONAL_CHAT = "a:1sandboxPersonalChat";
const CHANNEL = "19:sandboxM365Support@thread.tacv2";
const USER = "29:1sandboxAdmin";
const BOT_ID = "28:00000000-0000-0000-0000-00000000b07a";
const BOT_NAME = "m365bot";
const ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive";
const HELP_TITLE = "m365bot commands";

const overallTimeoutMs = Number(process.env.PLAYGROUND_SMOKE_TIMEOUT_MS) || 60_000;
const stepTimeoutMs = Math.min(20_000, overallTimeoutMs);
const started = Date.now();

class SmokeError extends Error {}

// ---- state shared with the cleanup ----
let playground = null; // child process
let playgroundExited = false;
let playgroundOutput = "";
let tempDir = null;
let socket = null;
let logSocket = null;
const playgroundProblems = [];
let currentStep = "starting";
let finished = false;

function fail(message) {
  throw new SmokeError(message);
}

function usage(message) {
  console.error(`playground-smoke: ${message}`);
  console.error("usage: node --experimental-websocket tools/node/playground-smoke.js <bot endpoint URL, e.g. http://127.0.0.1:3978/api/messages> [--watch-stdin]");
  process.exit(2);
}

function tail(text, lines) {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

function killPlaygroundNow() {
  if (playground && !playgroundExited) {
    try {
      playground.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

function removeTempDir() {
  if (tempDir) {
    try {
      fs.rmSync(tempDir, { recursive: true, force: true });
    } catch {
      // best effort
    }
    tempDir = null;
  }
}

// Last resort: whatever happens, no Playground and no temp dir survive this process.
process.on("exit", () => {
  killPlaygroundNow();
  removeTempDir();
});

async function stopPlayground() {
  for (const ws of [socket, logSocket]) {
    try {
      ws?.close();
    } catch {
      // ignore
    }
  }
  if (playground && !playgroundExited) {
    playground.kill("SIGTERM");
    const deadline = Date.now() + 3000;
    while (!playgroundExited && Date.now() < deadline) {
      await sleep(50);
    }
    killPlaygroundNow();
  }
}

async function finish(code, line, stream) {
  if (finished) return;
  finished = true;
  await stopPlayground();
  let logTail = "";
  if (code !== 0 && tempDir) {
    try {
      logTail = tail(fs.readFileSync(path.join(tempDir, "m365agentsplayground.log"), "utf8"), 15);
    } catch {
      // no log written
    }
  }
  removeTempDir();
  if (code === 0) {
    process.stdout.write(`${line}\n`);
  } else {
    let message = `playground-smoke: FAIL: ${line}`;
    if (playgroundProblems.length) message += `\n--- Playground warnings and errors ---\n${playgroundProblems.slice(-10).join("\n")}`;
    if (playgroundOutput.trim()) message += `\n--- Playground output (last lines) ---\n${tail(playgroundOutput, 20)}`;
    if (logTail) message += `\n--- Playground log (last lines) ---\n${logTail}`;
    stream.write(`${message}\n`);
  }
  process.exit(code);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
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

function startPlayground(port, botEndpoint) {
  tempDir = fs.mkdtempSync(path.join(os.tmpdir(), "m365bot-playground-"));
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
    M365_AGENTS_PLAYGROUND_LOGFILE: path.join(tempDir, "m365agentsplayground.log"),
    TEAMSAPPTESTER_BROWSER: "none",
  });
  const child = spawn(process.execPath, [cliJs, "--disable-telemetry", "--port", String(port)], {
    cwd: tempDir,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let listening = null;
  const listeningPort = new Promise((resolve) => {
    listening = resolve;
  });
  const collect = (chunk) => {
    playgroundOutput += chunk.toString();
    if (playgroundOutput.length > 64_000) playgroundOutput = playgroundOutput.slice(-32_000);
    const match = /Listening on (\d+)/.exec(playgroundOutput);
    if (match) listening(Number(match[1]));
  };
  child.stdout.on("data", collect);
  child.stderr.on("data", collect);
  child.on("exit", (code, signal) => {
    playgroundExited = true;
    listening(null);
    if (!finished) {
      finish(1, `the Playground exited early (code ${code}, signal ${signal})`, process.stderr);
    }
  });
  child.on("error", (err) => {
    playgroundExited = true;
    listening(null);
    if (!finished) finish(1, `cannot start the Playground: ${err.message}`, process.stderr);
  });
  playground = child;
  return listeningPort;
}

async function waitForPing(base) {
  const deadline = Date.now() + stepTimeoutMs;
  let last = "no answer";
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`${base}/_debug/ping`, { signal: AbortSignal.timeout(2000) });
      const body = await response.text();
      if (response.ok && body.trim() === "pong") return;
      last = `HTTP ${response.status} ${body.slice(0, 100)}`;
    } catch (err) {
      last = err.cause?.code ?? err.message;
    }
    await sleep(200);
  }
  fail(`the Playground did not answer /_debug/ping with pong within ${stepTimeoutMs} ms (last: ${last})`);
}

/** Conversation WebSocket: every message is kept; waiters scan from an index. */
class ConversationStream {
  constructor(url) {
    this.url = url;
    this.messages = [];
    this.waiters = [];
    this.closedReason = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      socket = ws;
      const timer = setTimeout(() => reject(new SmokeError(`WebSocket ${this.url} did not open within ${stepTimeoutMs} ms`)), stepTimeoutMs);
      ws.addEventListener("open", () => {
        clearTimeout(timer);
        resolve();
      });
      ws.addEventListener("error", () => {
        clearTimeout(timer);
        this.closedReason = "WebSocket error";
        reject(new SmokeError(`WebSocket ${this.url} failed`));
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

  wake() {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Resolves with the first message at index >= `from` matching `predicate`. */
  waitFor(from, predicate, label) {
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
        if (this.closedReason && !finished) {
          done();
          reject(new SmokeError(`${label}: ${this.closedReason} before it arrived`));
        }
      };
      const done = () => {
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
      };
      timer = setTimeout(() => {
        done();
        const seen = this.messages.slice(from).map(describeWsMessage);
        reject(new SmokeError(`${label}: nothing matching within ${stepTimeoutMs} ms; WebSocket messages since: ${seen.length ? seen.join(" | ") : "none"}`));
      }, stepTimeoutMs);
      this.waiters.push(check);
      check();
    });
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

function checkReachable(endpoint) {
  const url = new URL(endpoint);
  const port = Number(url.port) || (url.protocol === "https:" ? 443 : 80);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  return new Promise((resolve, reject) => {
    const connection = net.connect({ host, port });
    const timer = setTimeout(() => {
      connection.destroy();
      reject(new SmokeError(`the bot endpoint ${endpoint} is not reachable (connect timed out)`));
    }, 5000);
    connection.on("connect", () => {
      clearTimeout(timer);
      connection.end();
      resolve();
    });
    connection.on("error", (err) => {
      clearTimeout(timer);
      reject(new SmokeError(`the bot endpoint ${endpoint} is not reachable (${err.code ?? err.message}); start the bot first`));
    });
  });
}

function cardsOf(wsMessage) {
  const attachments = wsMessage?.message?.attachments;
  if (!Array.isArray(attachments)) return [];
  return attachments.filter((a) => a && a.contentType === ADAPTIVE_CARD && a.content && typeof a.content === "object").map((a) => a.content);
}

function isCardIn(conversation) {
  return (m) => m.action === "createMessage" && conversation(m.actionConversationId ?? "") && cardsOf(m).length > 0;
}

function isHelpCardIn(conversationId) {
  return (m) => isCardIn((c) => c === conversationId)(m) && cardsOf(m).some((card) => JSON.stringify(card).includes(HELP_TITLE));
}

function describeWsMessage(m) {
  const cards = cardsOf(m).length;
  const text = m?.message?.text ? ` text=${JSON.stringify(String(m.message.text).slice(0, 80))}` : "";
  return `${m.action ?? "?"} in ${m.actionConversationId ?? "?"} (${cards} card(s))${text}`;
}

async function post(base, route, body) {
  let response;
  try {
    response = await fetch(`${base}${route}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(stepTimeoutMs),
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

async function run(botEndpoint) {
  if (!fs.existsSync(cliJs)) fail("the Agents Playground is not installed: run `npm ci --prefix tools/node`");
  if (!fs.existsSync(configPath)) fail(`missing Playground config ${path.relative(repo, configPath)}`);

  currentStep = "checking the bot endpoint";
  await checkReachable(botEndpoint);

  currentStep = "starting the Playground";
  const requested = await freePort();
  const port = await startPlayground(requested, botEndpoint);
  if (!port) fail("the Playground did not report `Listening on <port>`");
  const base = `http://127.0.0.1:${port}`;
  await waitForPing(base);

  logSocket = watchLog(`ws://127.0.0.1:${port}/_ws/log/stream`, playgroundProblems);
  const stream = new ConversationStream(`ws://127.0.0.1:${port}/_ws_conversation/v1/conversations/stream`);
  await stream.open();

  // 1. personal chat: "help" -> help card.
  currentStep = "personal `help`";
  let from = stream.messages.length;
  await post(base, `/_conversation/v1/conversations/${encodeURIComponent(PERSONAL_CHAT)}/messages`, {
    from: { id: USER },
    text: "help",
    textFormat: "plain",
  });
  const help = await stream.waitFor(from, isHelpCardIn(PERSONAL_CHAT), "personal `help`: the help card (the bot answered nothing the Playground shows; is it in insecure-local mode with the Playground's tenant and `localhost` service URLs allowed? see the bot's log)");
  const helpMessageId = help.message.messageId;
  if (!helpMessageId) fail("personal `help`: the card message has no messageId");

  // 2. Action.Execute on that card -> the replacement card, synchronously.
  currentStep = "invoke verb help";
  const invoked = await post(base, "/_conversation/v1/invoke", {
    name: "adaptiveCard/action",
    conversation: { id: PERSONAL_CHAT },
    from: { id: USER },
    replyToId: helpMessageId,
    value: { action: { type: "Action.Execute", verb: "help", data: {} }, trigger: "manual" },
  });
  if (invoked.type !== ADAPTIVE_CARD) fail(`invoke verb help: expected type ${ADAPTIVE_CARD}, got ${JSON.stringify(invoked).slice(0, 300)}`);
  if (!invoked.value || invoked.value.type !== "AdaptiveCard") fail(`invoke verb help: the value is no Adaptive Card: ${JSON.stringify(invoked.value).slice(0, 300)}`);
  if (!JSON.stringify(invoked.value).includes(HELP_TITLE)) fail(`invoke verb help: the card does not contain "${HELP_TITLE}"`);

  // 3. channel: mention + unknown command -> a reply card in the thread.
  currentStep = "channel mention";
  from = stream.messages.length;
  const mention = `<at>${BOT_NAME}</at>`;
  const posted = await post(base, `/_conversation/v1/conversations/${encodeURIComponent(CHANNEL)}/messages`, {
    from: { id: USER },
    text: `${mention} frobnicate`,
    textFormat: "plain",
    mentions: [{ mentioned: { id: BOT_ID, name: BOT_NAME }, text: mention }],
  });
  const thread = posted.postConversationId;
  if (typeof thread !== "string" || !thread.startsWith(`${CHANNEL};messageid=`)) {
    fail(`channel message: expected postConversationId "${CHANNEL};messageid=…", got ${JSON.stringify(posted).slice(0, 300)}`);
  }
  const channelReply = await stream.waitFor(from, isCardIn((c) => c === thread), "channel mention: the reply card in the thread");
  const channelCard = JSON.stringify(cardsOf(channelReply)[0]);
  if (!channelCard.includes("frobnicate")) fail(`channel mention: the reply card does not name the unknown command: ${channelCard.slice(0, 300)}`);
  if (channelCard.includes("<at>")) fail("channel mention: the bot did not strip its mention from the command");

  // 4. installationUpdate + conversationUpdate from the Playground -> welcome help card.
  currentStep = "installation welcome card";
  from = stream.messages.length;
  await post(base, `/_debug/conversation/${encodeURIComponent(PERSONAL_CHAT)}/installation`, {});
  const welcome = await stream.waitFor(from, isHelpCardIn(PERSONAL_CHAT), "installation: the welcome help card");

  const cardsSeen = stream.messages.reduce((n, m) => n + (m.action === "createMessage" ? cardsOf(m).length : 0), 0);
  return {
    ok: true,
    playgroundPort: port,
    wsMessages: stream.messages.length,
    cardsSeen,
    personalHelp: { messageId: helpMessageId, title: cardTitle(cardsOf(help)[0]) },
    invoke: { type: invoked.type, card: true, title: cardTitle(invoked.value) },
    channel: { conversationId: channelReply.actionConversationId, title: cardTitle(cardsOf(channelReply)[0]) },
    welcome: { messageId: welcome.message.messageId, title: cardTitle(cardsOf(welcome)[0]) },
    elapsedMs: Date.now() - started,
  };
}

function main() {
  const args = process.argv.slice(2);
  const watchStdin = args.includes("--watch-stdin");
  const positional = args.filter((a) => !a.startsWith("--"));
  if (positional.length !== 1) usage("expected exactly one argument, the bot endpoint URL");
  let endpoint;
  try {
    endpoint = new URL(positional[0]);
  } catch {
    usage(`not a URL: ${positional[0]}`);
  }
  if (endpoint.protocol !== "http:" && endpoint.protocol !== "https:") usage(`not an http(s) URL: ${positional[0]}`);

  const timer = setTimeout(() => finish(1, `overall timeout of ${overallTimeoutMs} ms exceeded during: ${currentStep}`, process.stderr), overallTimeoutMs);
  timer.unref();
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
    process.on(signal, () => finish(1, `stopped by ${signal}`, process.stderr));
  }
  if (watchStdin) {
    process.stdin.on("end", () => finish(1, "stdin closed (the parent gave up)", process.stderr));
    process.stdin.on("error", () => finish(1, "stdin failed (the parent gave up)", process.stderr));
    process.stdin.resume();
  }

  run(endpoint.href).then(
    (summary) => finish(0, JSON.stringify(summary), process.stdout),
    (err) => finish(1, err instanceof SmokeError ? err.message : (err?.stack ?? String(err)), process.stderr),
  );
}

main();
