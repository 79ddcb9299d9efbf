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
//   re-runs itself with the flag. The Playground plumbing is in playground-lib.js.
"use strict";

const lib = require("./playground-lib");

if (lib.reexecWithWebSocket(__filename, "playground-smoke")) return;

const { ADAPTIVE_CARD, cardTitle, cardsOf, fail, ids } = lib;
const { PERSONAL_CHAT, CHANNEL } = ids;
const HELP_TITLE = "m365bot commands";
const started = Date.now();

function isCardIn(conversation) {
  return (m) => m.action === "createMessage" && conversation(m.actionConversationId ?? "") && cardsOf(m).length > 0;
}

function isHelpCardIn(conversationId) {
  return (m) => isCardIn((c) => c === conversationId)(m) && cardsOf(m).some((card) => JSON.stringify(card).includes(HELP_TITLE));
}

async function run(session) {
  const { stream } = session;

  // 1. personal chat: "help" -> help card.
  session.step = "personal `help`";
  let from = stream.mark();
  await session.say(PERSONAL_CHAT, "help");
  const help = await stream.waitFor(from, isHelpCardIn(PERSONAL_CHAT), "personal `help`: the help card (the bot answered nothing the Playground shows; is it in insecure-local mode with the Playground's tenant and `localhost` service URLs allowed? see the bot's log)");
  const helpMessageId = help.message.messageId;
  if (!helpMessageId) fail("personal `help`: the card message has no messageId");

  // 2. Action.Execute on that card -> the replacement card, synchronously.
  session.step = "invoke verb help";
  const invoked = await session.invoke(PERSONAL_CHAT, helpMessageId, "help", {});
  if (invoked.type !== ADAPTIVE_CARD) fail(`invoke verb help: expected type ${ADAPTIVE_CARD}, got ${JSON.stringify(invoked).slice(0, 300)}`);
  if (!invoked.value || invoked.value.type !== "AdaptiveCard") fail(`invoke verb help: the value is no Adaptive Card: ${JSON.stringify(invoked.value).slice(0, 300)}`);
  if (!JSON.stringify(invoked.value).includes(HELP_TITLE)) fail(`invoke verb help: the card does not contain "${HELP_TITLE}"`);

  // 3. channel: mention + unknown command -> a reply card in the thread.
  session.step = "channel mention";
  from = stream.mark();
  const posted = await session.say(CHANNEL, "frobnicate", { mention: true });
  const thread = posted.postConversationId;
  if (typeof thread !== "string" || !thread.startsWith(`${CHANNEL};messageid=`)) {
    fail(`channel message: expected postConversationId "${CHANNEL};messageid=…", got ${JSON.stringify(posted).slice(0, 300)}`);
  }
  const channelReply = await stream.waitFor(from, isCardIn((c) => c === thread), "channel mention: the reply card in the thread");
  const channelCard = JSON.stringify(cardsOf(channelReply)[0]);
  if (!channelCard.includes("frobnicate")) fail(`channel mention: the reply card does not name the unknown command: ${channelCard.slice(0, 300)}`);
  if (channelCard.includes("<at>")) fail("channel mention: the bot did not strip its mention from the command");

  // 4. installationUpdate + conversationUpdate from the Playground -> welcome help card.
  session.step = "installation welcome card";
  from = stream.mark();
  await session.post(`/_debug/conversation/${encodeURIComponent(PERSONAL_CHAT)}/installation`, {});
  const welcome = await stream.waitFor(from, isHelpCardIn(PERSONAL_CHAT), "installation: the welcome help card");

  const cardsSeen = stream.messages.reduce((n, m) => n + (m.action === "createMessage" ? cardsOf(m).length : 0), 0);
  return {
    ok: true,
    playgroundPort: session.port,
    wsMessages: stream.messages.length,
    cardsSeen,
    personalHelp: { messageId: helpMessageId, title: cardTitle(cardsOf(help)[0]) },
    invoke: { type: invoked.type, card: true, title: cardTitle(invoked.value) },
    channel: { conversationId: channelReply.actionConversationId, title: cardTitle(cardsOf(channelReply)[0]) },
    welcome: { messageId: welcome.message.messageId, title: cardTitle(cardsOf(welcome)[0]) },
    elapsedMs: Date.now() - started,
  };
}

lib.main({
  name: "playground-smoke",
  usageLine: "node --experimental-websocket tools/node/playground-smoke.js <bot endpoint URL, e.g. http://127.0.0.1:3978/api/messages> [--watch-stdin]",
  timeoutEnv: "PLAYGROUND_SMOKE_TIMEOUT_MS",
  defaultTimeoutMs: 60_000,
  parse(args) {
    const positional = args.filter((a) => !a.startsWith("--"));
    if (positional.length !== 1) return "expected exactly one argument, the bot endpoint URL";
    return { endpoint: positional[0] };
  },
  run,
});
