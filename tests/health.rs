//! Operational endpoints: liveness, readiness (database), Prometheus metrics, the static pages
//! the manifest links to, and JSON 404s.
mod support;

use support::TestApp;

async fn bot() -> TestApp {
    TestApp::spawn(&format!(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"{}\"\n",
        support::TEST_TENANT_ID
    ))
    .await
}

async fn get(app: &TestApp, path: &str) -> (u16, String) {
    let response = app
        .client
        .get(format!("{}{path}", app.base_url))
        .send()
        .await
        .expect("get");
    (
        response.status().as_u16(),
        response.text().await.expect("body"),
    )
}

#[tokio::test]
async fn liveness_and_readiness_answer() {
    let app = bot().await;
    assert_eq!(get(&app, "/healthz").await, (200, "ok".to_owned()));
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["status"], "ready", "{body}");
    assert_eq!(ready["database"]["reachable"], true, "{body}");
    assert_eq!(ready["database"]["backend"], "sqlite", "{body}");
}

#[tokio::test]
async fn readiness_reports_migrations_version_and_what_runs_here() {
    let app = TestApp::spawn(&format!(
        "[bot]\nauth_mode = \"insecure-local\"\ntenant_id = \"{}\"\n[notifications]\ndeliver = false\n[notifications.sources.servicenow]\npoll = true\n",
        support::TEST_TENANT_ID
    ))
    .await;
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let migrations = std::fs::read_dir("migrations/sqlite")
        .expect("migrations folder")
        .count();
    let latest = std::fs::read_dir("migrations/sqlite")
        .expect("migrations folder")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.split('_').next()?.parse::<i64>().ok()
        })
        .max()
        .expect("at least one migration");
    assert!(migrations > 0);
    assert_eq!(ready["migrations"]["applied"], latest, "{body}");
    assert_eq!(ready["migrations"]["expected"], latest, "{body}");
    assert_eq!(ready["migrations"]["state"], "current", "{body}");
    assert_eq!(ready["workers"]["delivery"], false, "{body}");
    assert_eq!(ready["pollers"]["servicenow"], true, "{body}");
    assert_eq!(ready["pollers"]["service_health"], false, "{body}");
    // A poller not run here has no leader status; one run here leads or not (a boolean).
    assert!(ready["leaders"]["service_health"].is_null(), "{body}");
    assert!(
        ready["leaders"]["servicenow"].is_boolean() || ready["leaders"]["servicenow"].is_null(),
        "{body}"
    );
    assert_eq!(ready["version"], m365bot::VERSION, "{body}");
}

#[tokio::test]
async fn readiness_fails_when_the_schema_is_behind_the_binary() {
    let app = bot().await;
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(&app.app.db.pool)
    .await
    .expect("forget the last migration");
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["migrations"]["state"], "behind", "{body}");
    assert_eq!(ready["status"], "unavailable", "{body}");
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_gone() {
    let app = bot().await;
    app.app.db.pool.close().await;
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database unreachable"), "{body}");
    assert_eq!(
        get(&app, "/healthz").await.0,
        200,
        "liveness does not depend on the database"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = bot().await;
    get(&app, "/healthz").await;
    get(&app, "/healthz").await;
    let refused = app
        .client
        .post(format!("{}/api/messages", app.base_url))
        .body("not json")
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 400);
    let (status, text) = get(&app, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("m365bot_http_requests_total{route=\"/healthz\",status=\"200\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("m365bot_http_requests_total{route=\"/api/messages\",status=\"400\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE m365bot_http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("m365bot_http_request_duration_seconds_count{route=\"/healthz\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn manifest_pages_are_served() {
    let app = bot().await;
    for path in ["/", "/privacy", "/terms"] {
        let (status, body) = get(&app, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains("<h1>m365bot"), "{path}: {body}");
    }
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let app = bot().await;
    let (status, body) = get(&app, "/nope").await;
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["error"]["code"], "not_found");
}
