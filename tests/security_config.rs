//! Operational hardening: `/metrics` on a separate internal listener, and the database URL's
//! password kept out of `Debug` output.

use m365bot::app::Application;
use m365bot::config::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_public_listener() {
    let dir = tempfile::tempdir().expect("dir");
    let settings = Settings::from_toml_str(&format!(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"8f2c4b1e-0000-4000-8000-000000000001\"\n[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n",
        dir.path().join("bot.db").display()
    ))
    .expect("settings");
    let application = Application::build(settings).await.expect("builds");
    let public = application.local_addr();
    let internal = application.metrics_addr().expect("metrics listener");
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let server = tokio::spawn(async move { application.run_until_stopped(shutdown).await });
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.expect("answers") }
    };
    assert_eq!(get(format!("http://{public}/metrics")).await.status(), 404);
    assert_eq!(get(format!("http://{public}/healthz")).await.status(), 200);
    let metrics = get(format!("http://{internal}/metrics")).await;
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.expect("text").contains("# TYPE"));
    assert_eq!(
        get(format!("http://{internal}/api/messages"))
            .await
            .status(),
        404
    );
    stop.cancel();
    let _ = server.await;
}

#[test]
fn the_database_password_is_not_in_debug_output() {
    let settings = Settings::from_toml_str(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"8f2c4b1e-0000-4000-8000-000000000001\"\n[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"postgres://bot:s3cr3t-pw@db.internal:5432/m365bot\"\n",
    )
    .expect("settings");
    let debug = format!("{settings:?}");
    assert!(!debug.contains("s3cr3t-pw"), "{debug}");
    assert!(debug.contains("db.internal"), "{debug}");
}
