// Runs the Business Rule printed by `m365bot servicenow-script` outside ServiceNow, against
// stand-ins of the scripting objects it uses. The stand-ins make real HTTP calls: the OAuth
// client asks the provider's token URL (client credentials, as ServiceNow's OAuth provider
// does), RESTMessageV2 posts to the bot.
//
// Usage: node servicenow-script.js <script.js> <world.json>
// world.json: {
//   "providers": {"<OAuth provider name>": {"client_id", "client_secret", "token_url"}},
//   "table": "incident",
//   "fields": {"<name>": {"value", "display_value"}},   // the record (`current`)
//   "changed": ["state", "comments"],                     // fields changed by the update
//   "journal": {"comments": "latest comment text"},
//   "previous": {"state": "New"}                          // display values before the update
// }
// Prints one JSON line: {"token_requests", "pushes": [{"status", "body"}], "errors": [...]}.
'use strict';

const fs = require('fs');
const vm = require('vm');
const { execFileSync } = require('child_process');

const [scriptPath, worldPath] = process.argv.slice(2);
if (!scriptPath || !worldPath) {
  console.error('usage: node servicenow-script.js <script.js> <world.json>');
  process.exit(2);
}
const script = fs.readFileSync(scriptPath, 'utf8');
const world = JSON.parse(fs.readFileSync(worldPath, 'utf8'));

const errors = [];
const pending = [];
let tokenRequests = 0;

/** A blocking HTTP request (ServiceNow's OAuth client is synchronous): a child node fetches. */
function syncRequest(url, method, headers, body) {
  const child = `fetch(process.argv[1], JSON.parse(process.argv[2]))
    .then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })))
    .catch((e) => process.stdout.write(JSON.stringify({ status: 0, body: String(e) })));`;
  const out = execFileSync(process.execPath, ['-e', child, url, JSON.stringify({ method, headers, body })]);
  return JSON.parse(out.toString('utf8'));
}

class GlideOAuthClientRequest {
  constructor() {
    this.params = {};
    this.grantType = null;
  }
  setGrantType(grantType) { this.grantType = grantType; }
  getGrantType() { return this.grantType; }
  setParameter(name, value) { this.params[name] = String(value); }
  getParameter(name) { return this.params[name]; }
  setScope(scope) { this.params.scope = scope; }
}

class GlideOAuthToken {
  constructor(answer) { this.answer = answer; }
  getAccessToken() { return this.answer.access_token || null; }
  getExpiresIn() { return Number(this.answer.expires_in || 0); }
}

class GlideOAuthClientResponse {
  constructor(status, answer) {
    this.status = status;
    this.answer = answer;
  }
  getToken() { return this.answer && this.answer.access_token ? new GlideOAuthToken(this.answer) : null; }
  getErrorMessage() { return this.answer ? String(this.answer.error_description || this.answer.error || '') : 'no answer'; }
  getResponseCode() { return this.status; }
}

class GlideOAuthClient {
  /** Asks the named OAuth provider's token URL, as ServiceNow does with the provider's client. */
  requestTokenByRequest(providerName, request) {
    const provider = world.providers[providerName];
    if (!provider) {
      return new GlideOAuthClientResponse(0, { error: 'invalid_provider', error_description: `no OAuth provider named ${providerName}` });
    }
    const form = new URLSearchParams({
      grant_type: request.getGrantType() || 'client_credentials',
      client_id: provider.client_id,
      client_secret: provider.client_secret,
      ...request.params,
    });
    tokenRequests += 1;
    const answer = syncRequest(provider.token_url, 'POST', { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' }, form.toString());
    let parsed = null;
    try { parsed = JSON.parse(answer.body); } catch (_) { parsed = { error: 'unreadable', error_description: answer.body }; }
    return new GlideOAuthClientResponse(answer.status, parsed);
  }
}

class RESTMessageV2 {
  constructor() {
    this.headers = {};
    this.method = 'GET';
    this.endpoint = null;
    this.body = undefined;
  }
  setEndpoint(url) { this.endpoint = url; }
  setHttpMethod(method) { this.method = String(method).toUpperCase(); }
  setRequestHeader(name, value) { this.headers[name] = String(value); }
  setRequestBody(body) { this.body = body; }
  setHttpTimeout(ms) { this.timeout = ms; }
  executeAsync() {
    pending.push(fetch(this.endpoint, { method: this.method, headers: this.headers, body: this.body })
      .then(async (r) => ({ status: r.status, body: await r.text() }))
      .catch((e) => ({ status: 0, body: String(e) })));
  }
}

/** `current`: field values, elements with changes() and getJournalEntry(). */
function glideRecord(table, fields, changed, journal) {
  const methods = {
    getValue: (name) => (fields[name] ? fields[name].value : null),
    getDisplayValue: (name) => (fields[name] ? fields[name].display_value : null),
    isValidField: (name) => Object.prototype.hasOwnProperty.call(fields, name),
    getTableName: () => table,
  };
  return new Proxy(methods, {
    get(target, prop) {
      if (prop in target) return target[prop];
      const name = String(prop);
      return {
        changes: () => changed.includes(name),
        getJournalEntry: () => (journal[name] ? `2026-01-01 00:00:00 - System Administrator (Additional comments)\n${journal[name]}` : ''),
        toString: () => (fields[name] ? fields[name].value : ''),
      };
    },
  });
}

/** GlideFilter.checkRecord for the encoded queries the bot prints (`<field>ISNOTEMPTY`, `^`). */
const GlideFilter = {
  checkRecord(record, filter) {
    return String(filter).split('^').every((term) => {
      const notEmpty = term.match(/^([A-Za-z0-9_.]+)ISNOTEMPTY$/);
      if (!notEmpty) throw new Error(`the stand-in cannot evaluate the filter term ${term}`);
      return Boolean(record.getValue(notEmpty[1]));
    });
  },
};

const previous = world.previous
  ? { getDisplayValue: (name) => (world.previous[name] === undefined ? null : world.previous[name]) }
  : null;

const context = {
  current: glideRecord(world.table, world.fields, world.changed || [], world.journal || {}),
  previous,
  sn_auth: { GlideOAuthClient, GlideOAuthClientRequest },
  sn_ws: { RESTMessageV2 },
  GlideFilter,
  GlideDateTime: class { getNumericValue() { return Date.now(); } },
  gs: {
    error: (message) => errors.push(String(message)),
    info: () => {},
    getProperty: () => null,
  },
  JSON,
  String,
  Math,
};

vm.runInNewContext(script, context, { filename: 'business-rule.js' });
Promise.all(pending).then((pushes) => {
  process.stdout.write(`${JSON.stringify({ token_requests: tokenRequests, pushes, errors })}\n`);
});
