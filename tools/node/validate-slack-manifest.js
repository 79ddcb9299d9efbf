#!/usr/bin/env node
// Usage: node tools/node/validate-slack-manifest.js <schema.json> <manifest.json>
// Validates a Slack app manifest against Slack's published JSON Schema (slackapi/manifest-schema,
// draft-07) with ajv, offline. Prints the errors; exits 1 when invalid, 2 on usage or read
// errors, 0 when valid.
"use strict";

const fs = require("fs");
const Ajv = require("ajv");
const addFormats = require("ajv-formats");

function main() {
  const [schemaFile, manifestFile] = process.argv.slice(2);
  if (!schemaFile || !manifestFile) {
    console.error("usage: node validate-slack-manifest.js <schema.json> <manifest.json>");
    return 2;
  }
  let schema;
  let manifest;
  try {
    schema = JSON.parse(fs.readFileSync(schemaFile, "utf8"));
    manifest = JSON.parse(fs.readFileSync(manifestFile, "utf8"));
  } catch (err) {
    console.error(`cannot read: ${err.message}`);
    return 2;
  }
  // strict: false accepts keywords the schema uses beyond draft-07; every standard keyword and
  // format (uri, …) is still enforced.
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats(ajv);
  const validate = ajv.compile(schema);
  if (!validate(manifest)) {
    console.error(`${manifestFile}: ${validate.errors.length} schema error(s):`);
    for (const error of validate.errors) {
      console.error(`  ${error.instancePath || "/"} ${error.message}`);
    }
    return 1;
  }
  console.log(`${manifestFile}: valid`);
  return 0;
}

process.exitCode = main();
