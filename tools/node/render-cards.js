#!/usr/bin/env node
// Usage: node tools/node/render-cards.js [out-dir] [card.json ...]
//   Renders Adaptive Cards (default: every tests/snapshots/teams_*.json) with the official
//   `adaptivecards` renderer and a Teams-like light host config into <out-dir>/<name>.html, then
//   screenshots each page with headless Debian `chromium` into <out-dir>/<name>.png
//   (default out-dir: target/card-screenshots). Offline: the page loads the renderer from
//   node_modules by file path. Parse and validation problems are printed and drawn in red.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { execFileSync } = require("child_process");

const repo = path.resolve(__dirname, "..", "..");
const rendererJs = path.join(__dirname, "node_modules", "adaptivecards", "dist", "adaptivecards.min.js");

// Approximates the Teams light theme; Teams applies its own, this only makes screenshots readable.
const hostConfig = {
  fontFamily: "'Segoe UI', 'Noto Sans', 'DejaVu Sans', sans-serif",
  supportsInteractivity: true,
  spacing: { small: 4, default: 8, medium: 16, large: 20, extraLarge: 24, padding: 16 },
  separator: { lineThickness: 1, lineColor: "#E0E0E0" },
  fontSizes: { small: 12, default: 14, medium: 16, large: 20, extraLarge: 24 },
  fontWeights: { lighter: 300, default: 400, bolder: 600 },
  fontTypes: {
    default: {
      fontFamily: "'Segoe UI', 'Noto Sans', 'DejaVu Sans', sans-serif",
      fontSizes: { small: 12, default: 14, medium: 16, large: 20, extraLarge: 24 },
      fontWeights: { lighter: 300, default: 400, bolder: 600 },
    },
    monospace: {
      fontFamily: "Consolas, 'DejaVu Sans Mono', monospace",
      fontSizes: { small: 12, default: 14, medium: 16, large: 20, extraLarge: 24 },
      fontWeights: { lighter: 300, default: 400, bolder: 600 },
    },
  },
  containerStyles: {
    default: {
      backgroundColor: "#FFFFFF",
      foregroundColors: {
        default: { default: "#242424", subtle: "#616161" },
        accent: { default: "#5B5FC7", subtle: "#4F52B2" },
        good: { default: "#0E700E", subtle: "#107C10" },
        warning: { default: "#835B00", subtle: "#8A6100" },
        attention: { default: "#C4314B", subtle: "#B10E1C" },
      },
    },
    emphasis: { backgroundColor: "#F5F5F5" },
    accent: { backgroundColor: "#E8EBFA" },
    good: { backgroundColor: "#E7F2DA" },
    warning: { backgroundColor: "#FBF6D9" },
    attention: { backgroundColor: "#FCF4F6" },
  },
  actions: { maxActions: 6, buttonSpacing: 8, actionsOrientation: "horizontal", actionAlignment: "left", showCard: { actionMode: "inline" } },
};
// Every container style inherits the default foreground colours.
for (const style of Object.values(hostConfig.containerStyles)) {
  style.foregroundColors = hostConfig.containerStyles.default.foregroundColors;
}

// Runs in the page: renders `cards` ([{name, card}]) with the official renderer into #cards and
// returns the parse, validation and render problems of each ({name, problems}).
function renderInPage(cards, hostConfig) {
  // Teams supports a small markdown subset: bold, italic, links, lists. No inline code.
  AdaptiveCards.AdaptiveCard.onProcessMarkdown = (text, result) => {
    const esc = text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    result.outputHtml = esc
      .replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|\W)_(.+?)_(?=\W|$)/g, "$1<em>$2</em>")
      .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2">$1</a>')
      .replace(/\n/g, "<br>");
    result.didProcess = true;
  };
  return cards.map(({ name, card }) => {
    const problems = [];
    try {
      const ac = new AdaptiveCards.AdaptiveCard();
      ac.hostConfig = new AdaptiveCards.HostConfig(hostConfig);
      const context = new AdaptiveCards.SerializationContext();
      ac.parse(card, context);
      for (let i = 0; i < context.eventCount; i++) problems.push("parse: " + context.getEventAt(i).message);
      const validation = ac.validateProperties();
      for (const e of validation.validationEvents) problems.push("validation: " + e.message);
      const rendered = ac.render();
      if (!rendered) problems.push("render: the renderer produced nothing");
      else document.getElementById("cards").appendChild(rendered);
    } catch (err) {
      problems.push("exception: " + err);
    }
    return { name, problems };
  });
}

function pageScript(cards) {
  // `<` is escaped so card text such as "</script>" cannot end the script element.
  const data = JSON.stringify({ cards, hostConfig }).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029");
  return `<script src="${pathToFileUrl(rendererJs)}"></script>
<script>
  ${renderInPage.toString()}
  const { cards, hostConfig } = ${data};
  let results;
  try {
    results = renderInPage(cards, hostConfig);
  } catch (err) {
    results = cards.map(({ name }) => ({ name, problems: ["exception: " + err] }));
  }
  const problems = results.flatMap((r) => r.problems.map((p) => (cards.length > 1 ? r.name + ": " : "") + p));
  document.getElementById("problems").textContent = problems.join("\\n");
  document.getElementById("results").textContent = JSON.stringify(results);
  document.title = problems.length ? "PROBLEMS " + problems.length : "OK";
</script>`;
}

/** The page rendering `cards` ([{name, card}]) under the label `name`. */
function page(name, cards) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>${name}</title>
<style>
  body { margin: 0; padding: 24px; background: #EBEBEB; font-family: 'Segoe UI', 'Noto Sans', sans-serif; }
  .bubble { max-width: 720px; background: #fff; border-radius: 6px; box-shadow: 0 1px 3px rgba(0,0,0,.2); overflow: hidden; }
  .label { color: #616161; font-size: 12px; margin: 0 0 6px 2px; }
  .problems { color: #C4314B; font-size: 13px; margin-top: 10px; white-space: pre-wrap; }
  #results { display: none; }
</style>
</head><body>
<div class="label" id="label">m365bot - ${name.replace(/[<>&]/g, "")}</div>
<div class="bubble" id="cards"></div>
<div class="problems" id="problems"></div>
<pre id="results"></pre>
${pageScript(cards)}
</body></html>
`;
}

/** Headless Debian `chromium` on `html` with a throwaway profile; returns its stdout. */
function chromium(html, ...extra) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "render-cards-"));
  try {
    return execFileSync("chromium", [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
      "--allow-file-access-from-files", `--user-data-dir=${profile}`, "--window-size=800,900",
      ...extra, pathToFileUrl(html),
    ], { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  } finally {
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

/** Checks that the installed renderer and `chromium` are present; returns a reason or null. */
function missingTools() {
  if (!fs.existsSync(rendererJs)) return "adaptivecards is not installed: run `npm ci --prefix tools/node`";
  try {
    execFileSync("chromium", ["--version"], { stdio: ["ignore", "pipe", "pipe"] });
  } catch {
    return "headless Chromium is missing: install Debian's `chromium` (apt-get install chromium)";
  }
  return null;
}

/**
 * Renders every card of `cards` ([{name, card}]) with the official renderer in one headless
 * Chromium page and returns [{name, problems: [string]}]; throws when the tools are missing.
 */
function checkCards(cards) {
  const missing = missingTools();
  if (missing) throw new Error(missing);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "check-cards-"));
  try {
    const html = path.join(dir, "cards.html");
    fs.writeFileSync(html, page(`${cards.length} cards`, cards));
    const dom = chromium(html, "--dump-dom");
    const match = dom.match(/<pre id="results">([\s\S]*?)<\/pre>/);
    const text = match ? match[1].replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&") : "";
    if (!text.trim()) throw new Error("the renderer page did not run (no results in the page)");
    return JSON.parse(text);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function pathToFileUrl(p) {
  return require("url").pathToFileURL(p).href;
}

function main() {
  const args = process.argv.slice(2);
  const outDir = path.resolve(args[0] || path.join(repo, "target", "card-screenshots"));
  let cards = args.slice(1);
  if (cards.length === 0) {
    const dir = path.join(repo, "tests", "snapshots");
    cards = fs.readdirSync(dir).filter((f) => f.startsWith("teams_") && f.endsWith(".json")).sort().map((f) => path.join(dir, f));
  }
  const missing = missingTools();
  if (missing) {
    console.error(missing);
    process.exit(2);
  }
  fs.mkdirSync(outDir, { recursive: true });
  let failed = 0;
  for (const file of cards) {
    const name = path.basename(file, ".json");
    const card = JSON.parse(fs.readFileSync(file, "utf8"));
    const html = path.join(outDir, `${name}.html`);
    const png = path.join(outDir, `${name}.png`);
    fs.writeFileSync(html, page(name, [{ name, card }]));
    try {
      chromium(html, `--screenshot=${png}`);
      // The page lists parse/validation problems in #problems; read them back from the DOM.
      const dom = chromium(html, "--dump-dom");
      const match = dom.match(/<div class="problems" id="problems">([\s\S]*?)<\/div>/);
      const problems = match ? match[1].trim() : "page did not render";
      if (problems) {
        failed++;
        console.error(`${name}: ${png}\n  ${problems.split("\n").join("\n  ")}`);
      } else {
        console.log(`${name}: ${png}`);
      }
    } catch (err) {
      failed++;
      console.error(`${name}: chromium failed: ${err.message}`);
    }
  }
  process.exit(failed ? 1 : 0);
}

module.exports = { checkCards, missingTools };

if (require.main === module) main();
