//! `m365bot servicenow-script`: the Business Rule that pushes case updates to the bot.

use crate::config::Settings;

/// The placeholder the administrator replaces with the shared secret.
pub const SECRET_PLACEHOLDER: &str = "<SECRET>";

/// Quotes `text` as a JavaScript single-quoted string literal.
fn js_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '<' => out.push_str("\\x3c"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn js_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| js_string(item)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The push endpoint URL under `server.public_url`.
pub fn endpoint(settings: &Settings) -> String {
    format!(
        "{}/api/servicenow/events",
        settings.server.public_url.as_str().trim_end_matches('/')
    )
}

/// How the Business Rule authenticates its pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAuth {
    /// An HMAC signature with the shared secret (the placeholder [`SECRET_PLACEHOLDER`]).
    Hmac,
    /// An Entra token of the outbound app, from the outbound OAuth provider setup created
    /// (client credentials), sent as `Authorization: Bearer`.
    OAuth {
        /// Name of the OAuth provider (`oauth_entity`) in ServiceNow.
        provider: String,
        /// The v1 `resource` asked for: the outbound app's client id (the bot checks `aud`).
        resource: String,
    },
}

impl PushAuth {
    /// The OAuth variant for an integration: the provider setup creates and its outbound app.
    pub fn for_integration(spec: &crate::integration::IntegrationSpec) -> Self {
        Self::OAuth {
            provider: spec.outbound_provider_name(),
            resource: spec.outbound_app.client_id.clone(),
        }
    }
}

/// The Business Rule script (JavaScript) for the configured case table, posting to
/// `endpoint` with an HMAC signature; the secret is the placeholder [`SECRET_PLACEHOLDER`].
pub fn business_rule(settings: &Settings, endpoint: &str) -> String {
    business_rule_with(settings, endpoint, &PushAuth::Hmac)
}

/// The Business Rule script for the configured case table, posting to `endpoint` with `auth`.
pub fn business_rule_with(settings: &Settings, endpoint: &str, auth: &PushAuth) -> String {
    let sn = &settings.notifications.sources.servicenow;
    let filter = sn.filter();
    let (install_note, constants, sign) = match auth {
        PushAuth::Hmac => (
            format!(
                "// Replace {SECRET_PLACEHOLDER} with the bot's notifications.sources.push.hmac_secret (better: keep it in a\n\
// system property and read it with gs.getProperty). The bot's poller still reconciles missed pushes.\n"
            ),
            format!(
                "    var SECRET = '{SECRET_PLACEHOLDER}'; // the value of notifications.sources.push.hmac_secret\n"
            ),
            "    var timestamp = String(Math.floor(new GlideDateTime().getNumericValue() / 1000));\n\
    // HMAC-SHA256 of '<timestamp>.<body>'; generateMac takes the key base64-encoded and\n\
    // returns the MAC base64-encoded (the bot accepts base64 or hex after 'v1=').\n\
    var mac = new CertificateEncryption().generateMac(\n\
        GlideStringUtil.base64Encode(SECRET), 'HmacSHA256', timestamp + '.' + text);\n\
    var request = new sn_ws.RESTMessageV2();\n\
    request.setRequestHeader('X-M365bot-Timestamp', timestamp);\n\
    request.setRequestHeader('X-M365bot-Signature', 'v1=' + mac);\n"
                .to_owned(),
        ),
        PushAuth::OAuth { provider, resource } => (
            "// Authentication: a client-credentials token of the outbound Entra app, from the outbound OAuth\n\
// provider setup created (System OAuth > Application Registry); no shared secret to copy. If you\n\
// picked an existing provider during setup, put its name in OAUTH_PROVIDER. The bot accepts\n\
// tokens of exactly this app. The bot's poller still reconciles missed pushes.\n"
                .to_owned(),
            format!(
                "    var OAUTH_PROVIDER = {provider};\n    var RESOURCE = {resource}; // the outbound app: the token's audience\n",
                provider = js_string(provider),
                resource = js_string(resource),
            ),
            "    var tokenRequest = new sn_auth.GlideOAuthClientRequest();\n\
    tokenRequest.setGrantType('client_credentials');\n\
    tokenRequest.setParameter('resource', RESOURCE);\n\
    var tokenResponse = new sn_auth.GlideOAuthClient().requestTokenByRequest(OAUTH_PROVIDER, tokenRequest);\n\
    var token = tokenResponse ? tokenResponse.getToken() : null;\n\
    var accessToken = token ? String(token.getAccessToken() || '') : '';\n\
    if (!accessToken) {\n\
        gs.error('m365bot: the OAuth provider ' + OAUTH_PROVIDER + ' gave no token: ' +\n\
            (tokenResponse ? tokenResponse.getErrorMessage() : 'no answer'));\n\
        return;\n\
    }\n\
    var request = new sn_ws.RESTMessageV2();\n\
    request.setRequestHeader('Authorization', 'Bearer ' + accessToken);\n"
                .to_owned(),
        ),
    };
    format!(
        "// m365bot: push case updates to the bot (generated by `m365bot servicenow-script`).\n\
// Install: System Definition > Business Rules > New\n\
//   Name: m365bot case notifications    Table: {table}\n\
//   Advanced: checked    When: after    Insert: checked    Update: checked\n\
//   (no Filter Conditions: the script applies the bot's case filter itself)\n\
{install_note}\
(function executeRule(current, previous /*null when async*/) {{\n\
    var ENDPOINT = {endpoint};\n\
{constants}\
    var FILTER = {filter};\n\
    var FIELDS = {fields};\n\
    var NOTE_ELEMENTS = {notes};\n\
    if (FILTER && !GlideFilter.checkRecord(current, FILTER)) {{\n\
        return;\n\
    }}\n\
    var record = {{}};\n\
    for (var i = 0; i < FIELDS.length; i++) {{\n\
        var name = FIELDS[i];\n\
        if (!current.isValidField(name)) {{\n\
            continue;\n\
        }}\n\
        record[name] = {{\n\
            value: String(current.getValue(name) || ''),\n\
            display_value: String(current.getDisplayValue(name) || '')\n\
        }};\n\
    }}\n\
    var body = {{ table: String(current.getTableName()), record: record }};\n\
    if (previous && current.{state}.changes()) {{\n\
        body.previous_state = String(previous.getDisplayValue({state_js}) || '');\n\
    }}\n\
    for (var j = 0; j < NOTE_ELEMENTS.length; j++) {{\n\
        var element = current[NOTE_ELEMENTS[j]];\n\
        if (element && element.changes()) {{\n\
            // getJournalEntry(1): 'date - user (label)\\ntext'; keep the text.\n\
            body.note = String(element.getJournalEntry(1) || '').replace(/^[^\\n]*\\n/, '');\n\
            break;\n\
        }}\n\
    }}\n\
    var text = JSON.stringify(body);\n\
{sign}\
    request.setEndpoint(ENDPOINT);\n\
    request.setHttpMethod('POST');\n\
    request.setRequestHeader('Content-Type', 'application/json');\n\
    request.setRequestHeader('Accept', 'application/json');\n\
    request.setRequestBody(text);\n\
    request.setHttpTimeout(10000);\n\
    request.executeAsync(); // does not hold up the user's transaction\n\
}})(current, previous);\n",
        table = sn.table,
        endpoint = js_string(endpoint),
        filter = js_string(&filter),
        fields = js_array(&sn.fields()),
        notes = js_array(&sn.note_elements),
        state = sn.state_field,
        state_js = js_string(&sn.state_field),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_everything_the_push_parser_reads() {
        let settings = Settings::from_toml_str(
            "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n[server]\nlisten = \"127.0.0.1:3978\"\npublic_url = \"https://bot.example.com/\"",
        )
        .expect("settings");
        let script = business_rule(&settings, &endpoint(&settings));
        for needle in [
            "'https://bot.example.com/api/servicenow/events'",
            "'<SECRET>'",
            "'sys_mod_count'",
            "'sys_updated_on'",
            "'correlation_id'",
            "'correlation_idISNOTEMPTY'",
            "sn_ws.RESTMessageV2",
            "CertificateEncryption",
            "X-M365bot-Signature",
            "Table: incident",
        ] {
            assert!(script.contains(needle), "{needle} missing:\n{script}");
        }
        assert_eq!(js_string("a'b\\c</script>"), "'a\\'b\\\\c\\x3c/script>'");
    }

    #[test]
    fn the_oauth_script_asks_the_outbound_provider_and_sends_a_bearer() {
        let settings = Settings::from_toml_str(
            "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"t\"\n[server]\nlisten = \"127.0.0.1:3978\"\npublic_url = \"https://bot.example.com/\"",
        )
        .expect("settings");
        let auth = PushAuth::OAuth {
            provider: "contoso.onmicrosoft.com Microsoft 365 outbound".to_owned(),
            resource: "0a1b2c3d-out".to_owned(),
        };
        let script = business_rule_with(&settings, &endpoint(&settings), &auth);
        for needle in [
            "var OAUTH_PROVIDER = 'contoso.onmicrosoft.com Microsoft 365 outbound';",
            "var RESOURCE = '0a1b2c3d-out';",
            "new sn_auth.GlideOAuthClientRequest()",
            "setGrantType('client_credentials')",
            "setParameter('resource', RESOURCE)",
            "requestTokenByRequest(OAUTH_PROVIDER, tokenRequest)",
            "'Authorization', 'Bearer ' + accessToken",
        ] {
            assert!(script.contains(needle), "{needle} missing:\n{script}");
        }
        for absent in ["<SECRET>", "X-M365bot-Signature", "CertificateEncryption"] {
            assert!(!script.contains(absent), "{absent} present:\n{script}");
        }
    }
}
