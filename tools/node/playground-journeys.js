#!/usr/bin/env node
// Usage: node --experimental-websocket tools/node/playground-journeys.js <bot endpoint URL>
//          --case-url <ServiceNow Table API URL of a demo case> --servicenow-auth <user:password>
//          [--watch-stdin] [--only setup,link,notify] [--save-cards DIR]
//   The three user journeys of the release, driven through the real Microsoft 365 Agents
//   Playground (HTTP + WebSocket APIs, no browser) against `m365bot sandbox --fresh`:
//     setup   personal chat `setup`: Agree, Start setup (AAD Auth, test environment), the tenant
//             contoso.onmicrosoft.com, *Create it for me* on every step, the cross-scope check,
//             the completion card, its Reveal button followed over HTTP (bot /setup/reveal ->
//             Entra ID emulator -> bot callback: the secrets once, then "already used"), then
//             Run tests -> every check passed;
//     link    `link-account` -> the sign-in card's Action.OpenUrl followed over HTTP (bot
//             /auth/link/start -> Entra ID emulator -> bot callback) -> the success page -> the
//             confirmation card in the chat; `link-account status` shows the link;
//     notify  `@m365bot subscribe` in the M365 Support channel -> the subscribed card; a PATCH of
//             the demo case through the ServiceNow emulator's Table API (as the sandbox's `curl`
//             does) -> the case's root card in the channel; a second change -> the root card
//             updated in place (WebSocket updateMessage) and a reply in its thread.
//   Along the way it tries what a careful admin meets: an existing app that Entra ID refuses
//   (the card keeps the choice and the client id, one plain error with collapsed details), free
//   text, `setup status` (titles, not ids), reopening a spent sign-in link (page only, no chat
//   card), `subscribe priority=banana` (refused, naming the accepted values). Every card seen
//   (WebSocket messages and invoke answers) is rendered with the official Adaptive Cards
//   renderer in headless Chromium (tools/node/render-cards.js); any parse or validation problem
//   fails the run. --save-cards DIR writes the cards shown in the docs (setup step, error,
//   completion, setup status, case root card) as JSON for render-cards.js.
//   Every card is asserted by content. Prints one JSON summary line on stdout and exits 0; on any
//   failure prints the reason (with the Playground's last output) on stderr and exits 1; usage
//   errors exit 2. The Playground is always killed. Overall timeout 90 s (env
//   PLAYGROUND_JOURNEYS_TIMEOUT_MS). --watch-stdin: give up when stdin is closed. Env
//   PLAYGROUND_JOURNEYS_TRACE=1 prints every card seen on stderr.
//   `tests/playground_journeys.rs` starts the sandbox and runs this script.
"use strict";

const lib = require("./playground-lib");

if (lib.reexecWithWebSocket(__filename, "playground-journeys")) return;

const fs = require("fs");
const path = require("path");
const { checkCards } = require("./render-cards");
const { ADAPTIVE_CARD, cardActions, cardHeading, cardTexts, cardsOf, fail, ids } = lib;
const { PERSONAL_CHAT, CHANNEL } = ids;

const JOURNEYS = ["setup", "link", "notify"];
const trace = process.env.PLAYGROUND_JOURNEYS_TRACE === "1";
const started = Date.now();

function log(line) {
  if (trace) process.stderr.write(`[journeys +${Date.now() - started} ms] ${line}\n`);
}

/** Every card the bot answered an invoke with, for the renderer check. */
const invokeCards = [];
/** Cards kept for the docs' screenshots, by file name. */
const keptCards = {};

function keep(name, card) {
  keptCards[name] = card;
}

/** The input `id` of a card (any depth). */
function inputOf(card, id) {
  let found = null;
  const visit = (node) => {
    if (found || !node || typeof node !== "object") return;
    if (Array.isArray(node)) return node.forEach(visit);
    if (typeof node.type === "string" && node.type.startsWith("Input.") && node.id === id) found = node;
    Object.values(node).forEach(visit);
  };
  visit(card.body);
  return found;
}

function textOf(card) {
  return cardTexts(card).join(" | ");
}

function expectText(card, needle, what) {
  const texts = cardTexts(card);
  const found = needle instanceof RegExp ? texts.some((t) => needle.test(t)) : texts.some((t) => t.includes(needle));
  if (!found) fail(`${what}: the card "${cardHeading(card)}" does not show ${needle}; it shows: ${textOf(card).slice(0, 600)}`);
}

function expectHeading(card, heading, what) {
  const actual = cardHeading(card);
  const ok = heading instanceof RegExp ? heading.test(actual ?? "") : actual === heading;
  if (!ok) fail(`${what}: expected the card "${heading}", got "${actual}": ${textOf(card).slice(0, 600)}`);
}

function cardMessageIn(conversation, predicate = () => true) {
  return (m) => m.action === "createMessage" && conversation(m.actionConversationId ?? "") && cardsOf(m).some(predicate);
}

const headingIs = (heading) => (card) => cardHeading(card) === heading;

// ---- journey (a): setup ----

/** The Action.Execute titled `title` on `card`, with the card's input values set from `inputs`. */
function findAction(card, title, what) {
  const action = cardActions(card).find((a) => a.type === "Action.Execute" && a.title === title);
  if (!action) {
    const titles = cardActions(card).map((a) => a.title);
    fail(`${what}: the card "${cardHeading(card)}" has no button "${title}" (buttons: ${titles.join(", ") || "none"})`);
  }
  return action;
}

/** The id and value of the choice titled like `choiceTitle` (a prefix) in the card's ChoiceSets. */
function findChoice(card, choiceTitle, what) {
  let found = null;
  const visit = (node) => {
    if (found || !node || typeof node !== "object") return;
    if (Array.isArray(node)) return node.forEach(visit);
    if (node.type === "Input.ChoiceSet" && Array.isArray(node.choices)) {
      const choice = node.choices.find((c) => typeof c.title === "string" && c.title.startsWith(choiceTitle));
      if (choice) found = { id: node.id, value: choice.value, title: choice.title };
    }
    Object.values(node).forEach(visit);
  };
  visit(card.body);
  if (!found) fail(`${what}: the card "${cardHeading(card)}" offers no choice "${choiceTitle}…": ${textOf(card).slice(0, 600)}`);
  return found;
}

/** Presses `title` on the card message `messageId`; returns the replacement card. */
async function press(session, messageId, card, title, inputs, what) {
  const action = findAction(card, title, what);
  const data = { ...(action.data ?? {}), ...inputs };
  const answer = await session.invoke(PERSONAL_CHAT, messageId, action.verb, data);
  if (answer.type !== ADAPTIVE_CARD || answer.value?.type !== "AdaptiveCard") {
    fail(`${what}: pressing "${title}" (verb ${action.verb}) answered no card: ${JSON.stringify(answer).slice(0, 400)}`);
  }
  log(`${what}: [${title}] -> ${cardHeading(answer.value)}`);
  invokeCards.push({ name: `${what}: [${title}] -> ${cardHeading(answer.value)}`, card: answer.value });
  return answer.value;
}

/** The steps of the AAD branch after the tenant, in order, with the choice each one offers. */
const AAD_STEPS = [
  { heading: "Outbound Entra app", create: "Create it for me (app" },
  { heading: "ServiceNow outbound OAuth provider", create: "Create it for me" },
  { heading: "Inbound REST API Entra app", create: "Create it for me (app" },
  { heading: "ServiceNow OIDC provider configuration", create: "Create it for me" },
  { heading: "ServiceNow OIDC entity", create: "Create it for me" },
  { heading: "REST-user Entra app", create: "Create it for me (app" },
  { heading: "Integration user", create: "Create it for me" },
];

async function journeySetup(session) {
  const { stream } = session;
  session.step = "setup: `setup` in the personal chat";
  const from = stream.mark();
  await session.say(PERSONAL_CHAT, "setup");
  const first = await stream.waitFor(from, cardMessageIn((c) => c === PERSONAL_CHAT), "setup: the first wizard card");
  const messageId = first.message?.messageId;
  if (!messageId) fail("setup: the wizard card has no messageId");
  let card = cardsOf(first)[0];
  log(`setup -> ${cardHeading(card)}`);
  expectHeading(card, "What setup will do", "setup (sandbox --fresh, so a new setup)");
  const visited = [cardHeading(card)];

  session.step = "setup: consent";
  card = await press(session, messageId, card, "Agree", {}, "setup consent");
  expectHeading(card, "Environment and authentication type", "setup after Agree");
  visited.push(cardHeading(card));

  session.step = "setup: environment";
  const auth = findChoice(card, "No: AAD Auth", "setup environment");
  card = await press(session, messageId, card, "Start setup", { [auth.id]: auth.value, test_environment: "true" }, "setup environment");
  expectHeading(card, "Microsoft 365 tenant", "setup after Start setup");
  visited.push(cardHeading(card));

  session.step = "setup: tenant";
  card = await press(session, messageId, card, "Verify and continue", { domain: ids.TENANT_DOMAIN }, "setup tenant");
  const created = [];
  let refusedApp = null;
  for (const step of AAD_STEPS) {
    session.step = `setup: ${step.heading}`;
    expectHeading(card, step.heading, `setup step ${visited.length + 1}`);
    visited.push(cardHeading(card));
    if (step === AAD_STEPS[0]) {
      keep("setup_step", card);
      refusedApp = await existingAppRefused(session, messageId, card);
      card = refusedApp.card;
      created.push(step.heading);
      continue;
    }
    const choice = findChoice(card, step.create, `setup step "${step.heading}"`);
    if (choice.value !== "create") fail(`setup step "${step.heading}": "${choice.title}" has the value ${choice.value}, not create`);
    const inputs = { [choice.id]: choice.value };
    card = await press(session, messageId, card, "Continue", inputs, `setup step "${step.heading}"`);
    created.push(step.heading);
  }

  session.step = "setup: cross-scope access";
  expectHeading(card, "Cross-scope access to oauth_entity", "setup after the integration user");
  visited.push(cardHeading(card));
  card = await press(session, messageId, card, "Check again", {}, "setup cross-scope");

  session.step = "setup: completion card";
  expectHeading(card, "Setup complete: the bot now runs the integration", "setup after the cross-scope check");
  visited.push(cardHeading(card));
  for (const label of ["Application ID", "Repository"]) expectText(card, label, "setup completion card");
  const completionValues = cardTexts(card).length;

  session.step = "setup: the Reveal page";
  const revealButton = cardActions(card).find((a) => a.type === "Action.OpenUrl" && a.title === "Reveal the secrets (once)");
  if (!revealButton) fail(`setup completion card: no Action.OpenUrl "Reveal the secrets (once)": ${textOf(card).slice(0, 600)}`);
  if (new URL(revealButton.url).pathname !== "/setup/reveal") fail(`setup: the Reveal button opens ${revealButton.url}, not the bot's /setup/reveal`);
  const revealed = await followSignIn(revealButton.url, "setup Reveal sign-in");
  const revealedText = pageText(revealed.html);
  if (revealed.status !== 200 || !/Client secret/.test(revealedText) || !/Rest user password/.test(revealedText)) {
    fail(`setup Reveal: HTTP ${revealed.status} (${revealed.hops.join(" -> ")}): ${revealedText.slice(0, 400)}`);
  }
  const revealedAgain = await followSignIn(revealButton.url, "setup Reveal, second open");
  const revealedAgainText = pageText(revealedAgain.html);
  if (revealedAgain.status !== 410 || !/already used/i.test(revealedAgainText)) {
    fail(`setup Reveal: the second open answered HTTP ${revealedAgain.status}: ${revealedAgainText.slice(0, 300)}`);
  }

  session.step = "setup: Run tests";
  card = await press(session, messageId, card, "Run tests", {}, "setup Run tests");
  expectHeading(card, "Run tests", "setup Run tests");
  const summaryLine = cardTexts(card).find((t) => /^\d+ passed, \d+ failed, \d+ not verified$/.test(t));
  if (!summaryLine) fail(`setup Run tests: no "N passed, N failed, N not verified" line on "${cardHeading(card)}": ${textOf(card).slice(0, 800)}`);
  const [passed, failed, skipped] = summaryLine.match(/\d+/g).map(Number);
  if (failed !== 0 || skipped !== 0 || passed === 0) {
    fail(`setup Run tests: not every check passed (${summaryLine}): ${textOf(card).slice(0, 1500)}`);
  }

  session.step = "setup: Show the values";
  const values = await press(session, messageId, card, "Show the values", {}, "setup Run tests");
  expectHeading(values, "Setup complete: the bot now runs the integration", "setup Show the values");
  keep("setup_complete", values);

  session.step = "setup: `setup status`";
  let mark = stream.mark();
  await session.say(PERSONAL_CHAT, "setup status");
  const statusMessage = await stream.waitFor(mark, cardMessageIn((c) => c === PERSONAL_CHAT), "setup: the status card");
  const statusCard = cardsOf(statusMessage)[0];
  expectHeading(statusCard, "Setup status", "setup status");
  expectText(statusCard, "Outbound app gets a token", "setup status (titles as Run tests shows them)");
  const internalId = cardTexts(statusCard).find((t) => /\b(outbound_app|inbound_app|rest_user_app|servicenow)\.[a-z_]+\b/.test(t));
  if (internalId) fail(`setup status: shows an internal check id: ${internalId}`);
  keep("setup_status", statusCard);

  session.step = "setup: free text";
  mark = stream.mark();
  await session.say(PERSONAL_CHAT, "hi, can you help?");
  const freeText = cardsOf(await stream.waitFor(mark, cardMessageIn((c) => c === PERSONAL_CHAT), "setup: the answer to free text"))[0];
  expectHeading(freeText, "I understand commands; type help", "free text");
  expectText(freeText, '"hi"', "free text (the first word without its comma)");
  if (cardTexts(freeText).some((t) => t.includes("hi,"))) fail(`free text: the answer quotes the punctuation: ${textOf(freeText)}`);

  session.step = "setup: help";
  mark = stream.mark();
  await session.say(PERSONAL_CHAT, "help");
  const help = cardsOf(await stream.waitFor(mark, cardMessageIn((c) => c === PERSONAL_CHAT), "setup: the help card"))[0];
  expectHeading(help, "m365bot commands", "help");
  return {
    cards: visited,
    created,
    completion: { title: visited[visited.length - 1], texts: completionValues },
    reveal: { status: revealed.status, hops: revealed.hops, again: revealedAgain.status },
    refusedApp: refusedApp.summary,
    status: cardHeading(statusCard),
    freeText: cardHeading(freeText),
    runTests: { title: cardHeading(card), passed, failed, skipped },
  };
}

/**
 * On the first app step: *Use an existing app registration* with a client id Entra ID does not
 * know. The card must come back with the choice and the client id kept, one plain-words error
 * under the field, the Entra answer behind a Details toggle, and only a count in the top box;
 * then *Create it for me*, chosen explicitly, goes on. Returns the card to continue from.
 */
async function existingAppRefused(session, messageId, card) {
  const what = "setup: an existing app Entra ID refuses";
  const existing = findChoice(card, "Use an existing app registration", what);
  const clientId = "0badc0de-0000-4000-8000-00000000dead";
  const refused = await press(session, messageId, card, "Continue", { [existing.id]: existing.value, client_id: clientId, client_secret: "not-the-secret" }, what);
  expectHeading(refused, "Outbound Entra app", what);
  const mode = inputOf(refused, existing.id);
  if (mode?.value !== "existing") fail(`${what}: the choice came back as ${JSON.stringify(mode?.value)}, not "existing" (the admin's choice was replaced)`);
  const id = inputOf(refused, "client_id");
  if (id?.value !== clientId) fail(`${what}: the client id came back as ${JSON.stringify(id?.value)}, not what was typed`);
  const secret = inputOf(refused, "client_secret");
  if (secret && "value" in secret) fail(`${what}: the secret input carries a value`);
  const errors = [];
  const visit = (node) => {
    if (!node || typeof node !== "object") return;
    if (Array.isArray(node)) return node.forEach(visit);
    if (node.type === "TextBlock" && node.color === "Attention" && node.isVisible !== false) errors.push(node.text);
    Object.values(node).forEach(visit);
  };
  visit(refused.body);
  const underField = errors.filter((t) => t !== "1 field needs attention");
  if (underField.length !== 1) fail(`${what}: expected one error under the field, found ${JSON.stringify(errors)}`);
  if (/AADSTS/.test(underField[0])) fail(`${what}: the visible error is raw AADSTS text: ${underField[0]}`);
  if (!errors.includes("1 field needs attention")) fail(`${what}: the top box does not just count: ${JSON.stringify(errors)}`);
  const toggle = cardActions(refused).find((a) => a.type === "Action.ToggleVisibility" && a.title === "Details");
  if (!toggle) fail(`${what}: no collapsed Details (Action.ToggleVisibility)`);
  const details = cardTexts(refused).find((t) => /AADSTS\d+/.test(t));
  if (!details || !/trace id/.test(details)) fail(`${what}: the Details do not hold the AADSTS code and trace id: ${details}`);
  keep("setup_error", refused);
  const create = findChoice(refused, "Create it for me (app", what);
  const next = await press(session, messageId, refused, "Continue", { [create.id]: create.value, client_id: "", client_secret: "" }, `${what}, then Create it for me`);
  return { card: next, summary: { kept: { mode: mode.value, clientId: id.value }, error: underField[0], details: details.slice(0, 120) } };
}

// ---- journey (b): link-account ----

async function followSignIn(url, what) {
  const hops = [];
  let current = url;
  for (let hop = 0; hop < 6; hop++) {
    let response;
    try {
      response = await fetch(current, { redirect: "manual", signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      fail(`${what}: GET ${new URL(current).origin}${new URL(current).pathname} failed: ${err.cause?.code ?? err.message}`);
    }
    const where = new URL(current);
    hops.push(`${response.status} ${where.pathname}`);
    if (response.status >= 300 && response.status < 400) {
      const location = response.headers.get("location");
      if (!location) fail(`${what}: ${response.status} from ${where.pathname} without Location`);
      current = new URL(location, current).href;
      continue;
    }
    const html = await response.text();
    return { status: response.status, html, hops, finalPath: where.pathname };
  }
  fail(`${what}: more than 6 redirects: ${hops.join(" -> ")}`);
}

function pageText(html) {
  return html
    .replace(/<(script|style)[^>]*>[\s\S]*?<\/\1>/gi, " ")
    .replace(/<[^>]+>/g, " ")
    .replace(/&amp;/g, "&")
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&#(\d+);/g, (_, code) => String.fromCodePoint(Number(code)))
    .replace(/\s+/g, " ")
    .trim();
}

async function journeyLink(session) {
  const { stream } = session;
  session.step = "link: `link-account`";
  let from = stream.mark();
  await session.say(PERSONAL_CHAT, "link-account");
  const signin = await stream.waitFor(
    from,
    cardMessageIn((c) => c === PERSONAL_CHAT),
    "link: the sign-in card",
  );
  const signinCard = cardsOf(signin)[0];
  log(`link-account -> ${cardHeading(signinCard)}: ${textOf(signinCard).slice(0, 300)}`);
  expectHeading(signinCard, "Link your Microsoft 365 admin account", "link-account");
  const open = cardActions(signinCard).find((a) => a.type === "Action.OpenUrl" && typeof a.url === "string");
  if (!open) fail(`link: the card "${cardHeading(signinCard)}" has no Action.OpenUrl sign-in button: ${textOf(signinCard).slice(0, 600)}`);
  const startUrl = new URL(open.url);
  if (startUrl.pathname !== "/auth/link/start" || !startUrl.searchParams.get("state")) {
    fail(`link: the sign-in button opens ${startUrl.origin}${startUrl.pathname}, not the bot's /auth/link/start?state=…`);
  }

  session.step = "link: the sign-in over HTTP";
  from = stream.mark();
  const page = await followSignIn(open.url, "link sign-in");
  const text = pageText(page.html);
  log(`link sign-in: ${page.hops.join(" -> ")}: ${text.slice(0, 200)}`);
  if (page.status !== 200) fail(`link sign-in: the final page answered HTTP ${page.status} (${page.hops.join(" -> ")}): ${text.slice(0, 400)}`);
  if (page.finalPath !== "/auth/link/callback") fail(`link sign-in: ended at ${page.finalPath}, not the bot's /auth/link/callback (${page.hops.join(" -> ")})`);
  if (!/linked/i.test(text) || /fail|error|could not|expired/i.test(text)) fail(`link sign-in: the page does not report success: ${text.slice(0, 400)}`);

  session.step = "link: the confirmation card";
  const confirmation = await stream.waitFor(
    from,
    cardMessageIn((c) => c === PERSONAL_CHAT),
    "link: the confirmation card in the personal chat",
  );
  const confirmCard = cardsOf(confirmation)[0];
  expectText(confirmCard, "Microsoft 365 account linked", "link confirmation");
  expectText(confirmCard, ids.USER_UPN, "link confirmation");

  session.step = "link: reopening the spent sign-in link";
  from = stream.mark();
  const again = await followSignIn(open.url, "link: the spent sign-in link");
  const againText = pageText(again.html);
  if (again.status !== 400 || !/already used/i.test(againText)) fail(`link: reopening the spent link answered HTTP ${again.status}: ${againText.slice(0, 300)}`);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const posted = stream.messages.slice(from).filter(cardMessageIn((c) => c === PERSONAL_CHAT));
  if (posted.length) fail(`link: reopening the spent link posted ${posted.length} card(s) into the chat: ${posted.map((m) => cardHeading(cardsOf(m)[0])).join(", ")}`);

  session.step = "link: `link-account status`";
  from = stream.mark();
  await session.say(PERSONAL_CHAT, "link-account status");
  const status = await stream.waitFor(from, cardMessageIn((c) => c === PERSONAL_CHAT), "link: the status card");
  const statusCard = cardsOf(status)[0];
  expectText(statusCard, "is linked to your ServiceNow user", "link-account status");
  expectText(statusCard, ids.USER_UPN, "link-account status");
  return {
    spentLink: { status: again.status, chatCards: posted.length },
    signInCard: cardHeading(signinCard),
    hops: page.hops,
    page: text.slice(0, 240),
    confirmation: cardHeading(confirmCard),
    status: cardHeading(statusCard),
  };
}

// ---- journey (c): notifications ----

async function patchCase(caseUrl, auth, body, what) {
  let response;
  try {
    response = await fetch(caseUrl, {
      method: "PATCH",
      headers: {
        authorization: `Basic ${Buffer.from(auth).toString("base64")}`,
        "content-type": "application/json",
        accept: "application/json",
      },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    fail(`${what}: PATCH ${caseUrl} failed: ${err.cause?.code ?? err.message}`);
  }
  const text = await response.text();
  if (!response.ok) fail(`${what}: PATCH ${caseUrl} answered HTTP ${response.status}: ${text.slice(0, 300)}`);
  let record;
  try {
    record = JSON.parse(text).result;
  } catch {
    fail(`${what}: PATCH ${caseUrl} answered non-JSON: ${text.slice(0, 300)}`);
  }
  const number = typeof record?.number === "object" ? record.number.value : record?.number;
  if (!number) fail(`${what}: the PATCH answer has no case number: ${text.slice(0, 300)}`);
  return { number: String(number), shortDescription: String(record.short_description?.value ?? record.short_description ?? "") };
}

async function journeyNotify(session, options) {
  const { stream } = session;
  session.step = "notify: `@m365bot subscribe priority=banana`";
  let from = stream.mark();
  const bananaPost = await session.say(CHANNEL, "subscribe priority=banana", { mention: true });
  const banana = cardsOf(await stream.waitFor(from, cardMessageIn((c) => c === bananaPost.postConversationId), "notify: the answer to priority=banana"))[0];
  expectHeading(banana, "That filter is not valid", "notify subscribe priority=banana");
  expectText(banana, "can never match", "notify subscribe priority=banana");
  expectText(banana, "1 - Critical", "notify subscribe priority=banana (the accepted values)");

  session.step = "notify: `@m365bot subscribe` in the channel";
  from = stream.mark();
  const posted = await session.say(CHANNEL, "subscribe", { mention: true });
  const thread = posted.postConversationId;
  if (typeof thread !== "string" || !thread.startsWith(`${CHANNEL};messageid=`)) {
    fail(`notify subscribe: expected postConversationId "${CHANNEL};messageid=…", got ${JSON.stringify(posted).slice(0, 300)}`);
  }
  const subscribed = await stream.waitFor(from, cardMessageIn((c) => c === thread), "notify: the subscribed card in the thread");
  const subscribedCard = cardsOf(subscribed)[0];
  expectHeading(subscribedCard, "Subscribed", "notify subscribe");

  session.step = "notify: first change of the demo case";
  from = stream.mark();
  const first = await patchCase(options.caseUrl, options.auth, { state: "3", comments: "Waiting for Microsoft support" }, "notify first change");
  const isRoot = cardMessageIn((c) => c === CHANNEL, (card) => cardTexts(card).some((t) => t.includes(first.number)));
  const root = await stream.waitFor(from, isRoot, `notify: the root card of ${first.number} in the channel`);
  const rootId = root.message?.messageId;
  if (!rootId) fail("notify: the root card has no messageId");
  const rootCard = cardsOf(root)[0];
  expectText(rootCard, "On Hold", "notify root card");
  keep("notify_root", rootCard);

  session.step = "notify: second change of the demo case";
  // Anything the bot sends for this case after the root card counts from here.
  from = stream.mark();
  await patchCase(options.caseUrl, options.auth, { state: "6", comments: "Microsoft fixed it" }, "notify second change");
  const update = await stream.waitFor(
    from,
    (m) => m.action === "updateMessage" && m.message?.messageId === rootId && cardsOf(m).some((card) => cardTexts(card).includes("Resolved")),
    `notify: the root card ${rootId} updated to Resolved (updateMessage)`,
  );
  const updatedCard = cardsOf(update)[0];
  expectText(updatedCard, first.number, "notify updated root card");
  // The update reply: wherever it lands, then assert that it is in the root card's thread.
  const threadId = `${CHANNEL};messageid=${rootId}`;
  const reply = await stream.waitFor(
    from,
    (m) =>
      m.action === "createMessage" &&
      (m.actionConversationId ?? "").startsWith(CHANNEL) &&
      cardsOf(m).some((card) => cardTexts(card).some((t) => t.includes("Microsoft fixed it"))),
    `notify: the update reply ("Microsoft fixed it") in the thread of the root card ${rootId}`,
  );
  if (reply.actionConversationId !== threadId) {
    fail(
      `notify: the update reply was not posted in the root card's thread "${threadId}" but in "${reply.actionConversationId}"` +
        (reply.message?.postConversationId ? ` as a new channel post (its own thread ${reply.message.postConversationId})` : "") +
        `; Teams ignores the replyToId of POST /v3/conversations/{channel}/activities/{root}: a thread reply must be sent to the conversation "${threadId}"`,
    );
  }
  // The reply must not be a second root post in the channel.
  const duplicateRoots = stream.messages.filter((m) => m.action === "createMessage" && m.actionConversationId === CHANNEL && cardsOf(m).some((card) => cardHeading(card) === cardHeading(rootCard)) && m.message?.messageId !== rootId);
  if (duplicateRoots.length) fail(`notify: a second root card for ${first.number} was posted instead of updating ${rootId}`);
  const replyCard = cardsOf(reply)[0];
  let replyColour = null;
  lib.walk(replyCard.body, (node) => {
    if (!replyColour && node.type === "TextBlock" && /resolved/i.test(node.text ?? "") && node.color) replyColour = node.color;
  });
  if (replyColour !== "Good") fail(`notify: the "resolved" reply is coloured ${replyColour}, not Good`);
  return {
    refused: cardHeading(banana),
    replyColour,
    subscribed: cardHeading(subscribedCard),
    case: first.number,
    root: { messageId: rootId, title: cardHeading(rootCard), state: "On Hold" },
    updated: { messageId: update.message.messageId, state: "Resolved" },
    reply: { conversationId: reply.actionConversationId, text: cardTexts(cardsOf(reply)[0]).find((t) => t.includes("Microsoft fixed it")) },
  };
}

async function run(session, options) {
  const summary = { ok: true, playgroundPort: session.port };
  if (options.only.includes("setup")) summary.setup = await journeySetup(session);
  if (options.only.includes("link")) summary.link = await journeyLink(session);
  if (options.only.includes("notify")) summary.notify = await journeyNotify(session, options);
  if (trace) {
    for (const m of session.stream.messages) log(`ws: ${lib.describeWsMessage(m)}`);
  }
  // Every card seen, through the official renderer.
  const seen = [...invokeCards];
  session.stream.messages.forEach((m, index) => {
    cardsOf(m).forEach((card) => seen.push({ name: `ws #${index} ${m.action}: ${cardHeading(card)}`, card }));
  });
  session.step = `rendering ${seen.length} cards with the official Adaptive Cards renderer`;
  let results;
  try {
    results = checkCards(seen);
  } catch (err) {
    fail(`the renderer check could not run: ${err.message}`);
  }
  const problems = results.filter((r) => r.problems.length);
  if (problems.length) {
    fail(`${problems.length} of ${seen.length} cards fail the official Adaptive Cards renderer:\n` + problems.map((r) => `  ${r.name}: ${r.problems.join("; ")}`).join("\n"));
  }
  summary.rendered = { cards: results.length, problems: 0 };
  if (options.saveCards) {
    fs.mkdirSync(options.saveCards, { recursive: true });
    for (const [name, card] of Object.entries(keptCards)) {
      fs.writeFileSync(path.join(options.saveCards, `${name}.json`), JSON.stringify(card, null, 2) + "\n");
    }
    summary.savedCards = Object.keys(keptCards).sort();
  }
  summary.wsMessages = session.stream.messages.length;
  summary.elapsedMs = Date.now() - started;
  return summary;
}

function parse(args) {
  const options = { only: [...JOURNEYS] };
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const value = () => {
      if (i + 1 >= args.length) return null;
      i += 1;
      return args[i];
    };
    if (arg === "--case-url") options.caseUrl = value();
    else if (arg === "--servicenow-auth") options.auth = value();
    else if (arg === "--only") options.only = String(value() ?? "").split(",").filter(Boolean);
    else if (arg === "--save-cards") {
      options.saveCards = value();
      if (!options.saveCards) return "--save-cards needs a directory";
    }
    else if (arg.startsWith("--")) return `unknown option ${arg}`;
    else positional.push(arg);
  }
  if (positional.length !== 1) return "expected exactly one argument, the bot endpoint URL";
  const unknown = options.only.filter((j) => !JOURNEYS.includes(j));
  if (unknown.length || !options.only.length) return `--only takes a list of ${JOURNEYS.join(", ")}`;
  if (options.only.includes("notify")) {
    if (!options.caseUrl) return "the notify journey needs --case-url <ServiceNow Table API URL of a demo case>";
    try {
      if (!new URL(options.caseUrl).pathname.includes("/api/now/table/")) return `--case-url is no Table API record URL: ${options.caseUrl}`;
    } catch {
      return `--case-url is not a URL: ${options.caseUrl}`;
    }
    if (!options.auth || !options.auth.includes(":")) return "the notify journey needs --servicenow-auth <user:password>";
  }
  return { endpoint: positional[0], ...options };
}

lib.main({
  name: "playground-journeys",
  usageLine:
    "node --experimental-websocket tools/node/playground-journeys.js <bot endpoint URL> --case-url <Table API URL of a demo case> --servicenow-auth <user:password> [--only setup,link,notify] [--save-cards DIR] [--watch-stdin]",
  timeoutEnv: "PLAYGROUND_JOURNEYS_TIMEOUT_MS",
  defaultTimeoutMs: 90_000,
  stepTimeoutMs: 20_000,
  parse,
  run,
});
