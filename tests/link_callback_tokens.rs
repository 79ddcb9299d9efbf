//! Account linking through the real callback with a bad ID token: the browser walks start →
//! Entra emulator → `/auth/link/callback`, and the emulator's token endpoint answers the code
//! with an ID token that is forged, for another audience or issuer, for another nonce, expired,
//! unsigned (`alg: none`) or HS256. Each is refused with a clear page and nothing is stored
//! (no link row, no ServiceNow column), and the refusal is audited.

mod support;

use std::sync::Arc;

use m365bot::link::store::LinkStore;
use serde_json::{Value, json};
use support::link::{ADMIN, LinkHarness};
use support::tokens;

type Rewrite = fn(&Value, &str) -> String;

fn with(claims: &Value, name: &str, value: Value) -> Value {
    let mut claims = claims.clone();
    claims[name] = value;
    claims
}

fn cases() -> Vec<(&'static str, Rewrite)> {
    vec![
        ("forged signature", |_, signed| {
            tokens::with_forged_signature(signed)
        }),
        ("other audience", |claims, _| {
            tokens::sandbox_signed(&with(claims, "aud", json!("another-app")))
        }),
        ("other issuer", |claims, _| {
            tokens::sandbox_signed(&with(
                claims,
                "iss",
                json!(
                    "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"
                ),
            ))
        }),
        ("wrong nonce", |claims, _| {
            tokens::sandbox_signed(&with(claims, "nonce", json!("replayed-nonce")))
        }),
        ("expired", |claims, _| {
            let past = chrono::Utc::now().timestamp() - 3600;
            let claims = with(claims, "exp", json!(past));
            tokens::sandbox_signed(&with(&claims, "nbf", json!(past - 3600)))
        }),
        ("alg none", |claims, _| tokens::unsigned(claims)),
        ("HS256 with the public exponent as secret", |claims, _| {
            tokens::hs256_signed(claims, b"AQAB")
        }),
    ]
}

#[tokio::test]
async fn bad_id_tokens_are_refused_at_the_callback_and_nothing_is_stored() {
    let h = LinkHarness::start().await;
    for (what, rewrite) in cases() {
        h.sandbox.handle().set_id_token_rewrite(Some(Arc::new(
            move |claims: &Value, signed: &str| rewrite(claims, signed),
        )));
        let start = h.sign_in_url(ADMIN).await;
        let (locations, status, html) = h.walk(&start).await;
        assert!(
            locations
                .last()
                .is_some_and(|l| l.contains("/auth/link/callback?")),
            "{what}: the walk reached the callback: {locations:?}"
        );
        assert_eq!(status, 502, "{what}: {html}");
        assert!(
            html.contains("The sign-in could not be verified"),
            "{what}: {html}"
        );
        assert!(html.contains("Nothing was linked"), "{what}: {html}");
        if what == "wrong nonce" {
            assert!(html.contains("nonce mismatch"), "{what}: {html}");
        }
        assert!(h.stored_link(ADMIN).await.is_none(), "{what}: link stored");
        assert_eq!(
            h.servicenow_link("admin"),
            None,
            "{what}: ServiceNow written"
        );
    }
    let audit = LinkStore::new(&h.app.app.db)
        .recent_audit(50)
        .await
        .expect("audit");
    let refused = audit
        .iter()
        .filter(|a| a.action == "link" && a.outcome == "refused")
        .count();
    assert_eq!(refused, cases().len(), "{audit:?}");

    // The same walk with the emulator's own token links: the refusals came from the token.
    h.sandbox.handle().set_id_token_rewrite(None);
    let (_, status, html) = h.walk(&h.sign_in_url(ADMIN).await).await;
    assert_eq!(status, 200, "{html}");
    assert!(h.stored_link(ADMIN).await.is_some());
}
