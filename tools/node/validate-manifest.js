#!/usr/bin/env node
// Usage: node tools/node/validate-manifest.js <manifest.json>
// Validates a Teams app manifest against the JSON schema bundled in @microsoft/app-manifest,
// fully offline: any network access throws. Prints the errors; exits 1 when invalid, 2 on usage
// or read errors, 0 when valid.
"use strict";

globalThis.fetch = async (url) => {
  throw new Error(`network access blocked (offline validation): ${url}`);
};

const fs = require("fs");
const { AppManifestUtils } = require("@microsoft/app-manifest");

async function main() {
  const file = process.argv[2];
  if (!file) {
    console.error("usage: node validate-manifest.js <manifest.json>");
    return 2;
  }
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (err) {
    console.error(`${file}: cannot read manifest: ${err.message}`);
    return 2;
  }
  let errors;
  try {
    errors = await AppManifestUtils.validateAgainstSchema(manifest);
  } catch (err) {
    console.error(`${file}: cannot validate: ${err.message}`);
    return 1;
  }
  if (errors.length > 0) {
    console.error(`${file}: ${errors.length} schema error(s):`);
    for (const error of errors) {
      console.error(`  ${error}`);
    }
    return 1;
  }
  console.log(`${file}: valid (${manifest.$schema})`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
