//! `m365bot sandbox` lets the Agents Playground's default user link an account: the bot built
//! from the demo settings, a Playground-shaped message over HTTP, the sign-in card's button
//! walked through the emulated Entra sign-in, the confirmation back in the chat.

mod support;

use std::time::Duration;

use m365bot::app::Application;
use m365bot::demo::Demo;
use m365bot::link::store::LinkStore;
use m365bot::sandbox::SandboxOptions;
use serde_json::{Value, json};
use support::connector::FakeConnector;
use support::link::ADMIN;
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A personal message from the Playground's default user (`sandbox/m365agentsplayground.yml`).
fn playground_message(service_url: &str, text: &str) -> Value {
    json!({
        "type": "message",
        "text": text,
        "id": "f3b1c2d4-0000-4000-8000-000000000001",
        "from": {"id": ADMIN.id, "name": ADMIN.name, "aadObjectId": ADMIN.oid},
        "serviceUrl": service_url,
        "conversation": {
            "conversationType": "personal",
            "tenantId": "8eaef023-2b34-4da1-9baa-8bc8c9d6a490",
            "id": "a:1sandboxPersonalChat"
        },
        "recipient": {"id": "28:00000000-0000-0000-0000-00000000b07a", "name": "m365bot"},
        "textFormat": "plain",
        "channelData": {"tenant": {"id": "8eaef023-2b34-4da1-9baa-8bc8c9d6a490"}},
        "channelId": "msteams"
    })
}

#[tokio::test]
async fn the_playground_admin_links_an_account_in_the_sandbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let port = free_port();
    let demo = Demo::start(
        SandboxOptions::default(),
        format!("127.0.0.1:{port}").parse().expect("addr"),
        &database,
    )
    .await
    .expect("demo starts");
    assert!(demo.welcome().contains("link-account"));
    let application = Application::build(demo.settings.clone())
        .await
        .expect("bot builds");
    let app = application.app();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { application.run_until_stopped(stop).await });

    let playground = FakeConnector::start().await;
    playground.add_member(ADMIN.id, ADMIN.name, ADMIN.upn, ADMIN.oid);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let answer = client
        .post(format!("{base}/api/messages"))
        .json(&playground_message(
            &playground.service_url(),
            "link-account",
        ))
        .send()
        .await
        .expect("bot answers");
    assert!(answer.status().is_success(), "{}", answer.status());
    let replies = playground
        .wait_for_requests(1, Duration::from_secs(10))
        .await;
    let card = &replies[0].body["attachments"][0]["content"];
    let action = &card["actions"][0];
    assert_eq!(action["type"], "Action.OpenUrl", "{card}");
    let mut url = action["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!("{base}/auth/link/start?state=")),
        "{url}"
    );

    // The browser: bot → Entra emulator → bot.
    let mut hops = 0;
    let page = loop {
        let response = client.get(&url).send().await.expect("hop");
        if response.status() == 302 {
            url = response.headers()["location"]
                .to_str()
                .expect("location")
                .to_owned();
            hops += 1;
            assert!(hops <= 2, "{url}");
            continue;
        }
        assert_eq!(response.status(), 200);
        break response.text().await.expect("page");
    };
    assert_eq!(hops, 2);
    assert!(
        page.contains("Your Microsoft 365 account is linked"),
        "{page}"
    );
    assert!(page.contains("admin@contoso.onmicrosoft.com"), "{page}");
    assert!(page.contains("Global Administrator"), "{page}");

    let replies = playground
        .wait_for_requests(2, Duration::from_secs(10))
        .await;
    let confirmation = replies[1].body["attachments"][0]["content"].to_string();
    assert!(
        confirmation.contains("Microsoft 365 account linked"),
        "{confirmation}"
    );
    assert_eq!(
        replies[1].conversation_id.as_deref(),
        Some("a:1sandboxPersonalChat")
    );
    let link = LinkStore::new(&app.db)
        .link("teams", ADMIN.id)
        .await
        .expect("read")
        .expect("linked");
    assert_eq!(link.m365_upn, ADMIN.upn);
    let rows = demo
        .sandbox
        .handle()
        .sn_query("sys_user", "user_name=admin")
        .expect("sys_user");
    assert_eq!(rows[0]["u_m365_admin_account"], ADMIN.upn);
    shutdown.cancel();
}
