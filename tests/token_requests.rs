//! The exact token requests the bot sends (client credentials against Entra ID v1 and v2,
//! ServiceNow `/oauth_token.do` and the Bot Connector token endpoint; the authorization-code
//! redemption and the sign-in URL of `link-account`), as a recording fake on loopback receives
//! them. Form fields are compared as a set: their order carries no meaning in
//! `application/x-www-form-urlencoded`.
mod support;

use m365bot::config::Settings;
use m365bot::teams::connector::ConnectorClient;
use m365bot::upstream::entra::{AuthorizeRequest, EntraClient, Pkce};
use m365bot::upstream::servicenow::{ServiceNowAuth, ServiceNowClient};
use secrecy::SecretString;
use serde_json::json;
use url::Url;

#[path = "support/upstream.rs"]
mod fake;

use fake::{Canned, Fake, Recorded, http};

const TENANT: &str = "8eaef023-2b34-4da1-9baa-8bc8c9d6a490";

/// The decoded form fields, sorted.
fn sorted_form(request: &Recorded) -> Vec<(String, String)> {
    let mut form = request.form();
    form.sort();
    form
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = expected
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// A form POST that carries the client credentials in the body, never in a header.
fn assert_form_post(request: &Recorded, path: &str) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, path);
    assert_eq!(request.query, "");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("authorization"), None);
}

#[tokio::test]
async fn entra_client_credentials_v1_and_v2_bodies() {
    let fake = Fake::start().await;
    let v1 = format!("/{TENANT}/oauth2/token");
    let v2 = format!("/{TENANT}/oauth2/v2.0/token");
    fake.on(
        "POST",
        &v1,
        &[],
        vec![Canned::sample("entra-v1-token-200.json")],
    );
    fake.on(
        "POST",
        &v2,
        &[],
        vec![Canned::sample("entra-v2-token-200.json")],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    let secret = SecretString::from("s3cret&=+ value");
    entra
        .client_credentials_v1(TENANT, "cid-1", &secret, "https://service.contoso.com/")
        .await
        .expect("v1 token");
    entra
        .client_credentials_v2(
            TENANT,
            "cid-2",
            &secret,
            "https://graph.microsoft.com/.default",
        )
        .await
        .expect("v2 token");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_form_post(&requests[0], &v1);
    assert_eq!(
        sorted_form(&requests[0]),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", "cid-1"),
            ("client_secret", "s3cret&=+ value"),
            ("resource", "https://service.contoso.com/"),
        ])
    );
    assert_form_post(&requests[1], &v2);
    assert_eq!(
        sorted_form(&requests[1]),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", "cid-2"),
            ("client_secret", "s3cret&=+ value"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
    );
}

#[tokio::test]
async fn link_account_sign_in_url_and_code_redemption() {
    let fake = Fake::start().await;
    let token_path = "/contoso.com/oauth2/v2.0/token";
    fake.on(
        "POST",
        token_path,
        &[],
        vec![Canned::json(
            200,
            &json!({"token_type": "Bearer", "scope": "openid profile", "expires_in": 3600,
                    "access_token": "at", "id_token": "header.payload.sig"}),
        )],
    );
    let entra = EntraClient::new(http(), fake.base.clone());
    // RFC 7636 appendix B.
    let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk").expect("pkce");
    let url = entra
        .authorize_url(
            "contoso.com",
            &AuthorizeRequest {
                client_id: "cid",
                redirect_uri: "https://bot.example/auth/link/callback",
                scope: "openid profile email",
                state: "the-state",
                nonce: "the-nonce",
                pkce: &pkce,
                login_hint: Some("admin@contoso.com"),
                prompt: Some("select_account"),
            },
        )
        .expect("sign-in url");
    assert_eq!(url.path(), "/contoso.com/oauth2/v2.0/authorize");
    let mut query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    query.sort();
    assert_eq!(
        query,
        pairs(&[
            ("client_id", "cid"),
            ("response_type", "code"),
            ("redirect_uri", "https://bot.example/auth/link/callback"),
            ("response_mode", "query"),
            ("scope", "openid profile email"),
            ("state", "the-state"),
            ("nonce", "the-nonce"),
            (
                "code_challenge",
                "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
            ),
            ("code_challenge_method", "S256"),
            ("login_hint", "admin@contoso.com"),
            ("prompt", "select_account"),
        ])
    );

    entra
        .exchange_code(
            "contoso.com",
            "cid",
            &SecretString::from("s"),
            "the-code",
            "https://bot.example/auth/link/callback",
            pkce.verifier(),
        )
        .await
        .expect("tokens");
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_form_post(&requests[0], token_path);
    assert_eq!(
        sorted_form(&requests[0]),
        pairs(&[
            ("grant_type", "authorization_code"),
            ("client_id", "cid"),
            ("client_secret", "s"),
            ("code", "the-code"),
            ("redirect_uri", "https://bot.example/auth/link/callback"),
            (
                "code_verifier",
                "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
            ),
        ])
    );
}

#[tokio::test]
async fn servicenow_oauth_token_body() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/oauth_token.do",
        &[],
        vec![Canned::sample("sn-oauth-token-200.json")],
    );
    fake.on(
        "GET",
        "/api/now/v2/table/incident/a9e30c7dc61122760116894de7bcc7bd",
        &[],
        vec![Canned::json(
            200,
            &json!({"result": {"number": "INC0010001"}}),
        )],
    );
    let client = ServiceNowClient::new(
        http(),
        fake.base.clone(),
        ServiceNowAuth::OAuthClientCredentials {
            client_id: "sn-client".to_owned(),
            client_secret: SecretString::from("sn secret"),
        },
    );
    client
        .get("incident", "a9e30c7dc61122760116894de7bcc7bd", &["number"])
        .await
        .expect("read");
    let tokens = fake.requests_to("/oauth_token.do");
    assert_eq!(tokens.len(), 1);
    assert_form_post(&tokens[0], "/oauth_token.do");
    assert_eq!(
        sorted_form(&tokens[0]),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sn-client"),
            ("client_secret", "sn secret"),
        ])
    );
}

#[tokio::test]
async fn bot_connector_token_body() {
    let fake = Fake::start().await;
    fake.on(
        "POST",
        "/botframework/token",
        &[],
        vec![Canned::sample("entra-v2-token-200.json")],
    );
    fake.on(
        "POST",
        "/v3/conversations/conv1/activities",
        &[],
        vec![Canned::json(200, &json!({"id": "1"}))],
    );
    let toml = format!(
        "[bot]\napp_id = \"{}\"\napp_password = \"bot secret\"\ntenant_id = \"{}\"\n\
         outbound_token_url = \"{}\"\nallowed_service_url_hosts = [\"127.0.0.1\"]\n",
        support::TEST_APP_ID,
        support::TEST_TENANT_ID,
        fake.url("botframework/token"),
    );
    let settings = Settings::from_toml_str(&toml).expect("settings");
    let metrics = std::sync::Arc::new(m365bot::metrics::Metrics::default());
    let client = ConnectorClient::new(&settings, http(), metrics);
    let service_url = Url::parse(&fake.url("/")).expect("url");
    client
        .send(
            service_url.as_str(),
            "conv1",
            &json!({"type": "message", "text": "hi"}),
        )
        .await
        .expect("sent");
    let tokens = fake.requests_to("/botframework/token");
    assert_eq!(tokens.len(), 1);
    assert_form_post(&tokens[0], "/botframework/token");
    assert_eq!(
        sorted_form(&tokens[0]),
        pairs(&[
            ("grant_type", "client_credentials"),
            ("client_id", support::TEST_APP_ID),
            ("client_secret", "bot secret"),
            ("scope", "https://api.botframework.com/.default"),
        ])
    );
}
