//! The HTTP router: health, readiness, metrics and the chat endpoints.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::App;
use crate::error::ApiError;

/// Builds the router over the shared application.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.settings.server.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(public_metrics(&app))
        .route("/", get(|| page("m365bot", ABOUT)))
        .route("/privacy", get(|| page("m365bot privacy", PRIVACY)))
        .route("/terms", get(|| page("m365bot terms of use", TERMS)))
        .route("/api/messages", post(crate::teams::messages))
        .merge(crate::setup::routes())
        .merge(crate::link::routes())
        .merge(crate::notify::routes())
        .merge(crate::slack::routes())
        .fallback(not_found)
        // One middleware for both (each layer costs an allocation or two per request).
        .layer(middleware::from_fn_with_state(app.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

const ABOUT: &str = "m365bot sets up, verifies and operates the Microsoft 365 support integration between ServiceNow and Microsoft 365, from Microsoft Teams. It is self-hosted: this instance is run by your organisation.";
const PRIVACY: &str = "This bot is self-hosted by your organisation. It stores the Teams conversation references it needs to answer you, and the integration settings your administrators enter, encrypted where they are secrets. Nothing is sent anywhere but to your ServiceNow instance, Microsoft Entra ID, Microsoft Graph and Microsoft Teams. Ask your administrators for your organisation's privacy statement.";
const TERMS: &str = "This bot is self-hosted by your organisation and provided under its terms. It acts only on the commands you give it and with the permissions your administrators granted.";

/// A small static page (the manifest's website, privacy and terms URLs).
async fn page(title: &'static str, text: &'static str) -> axum::response::Html<String> {
    axum::response::Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>{title}</h1><p>{text}</p></body></html>"
    ))
}

async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the database answers and its schema is not behind this binary, else
/// 503; the body says which, and what this instance runs (delivery worker, pollers, and which
/// pollers it leads).
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let backend = match app.db.backend {
        crate::db::Backend::Sqlite => "sqlite",
        crate::db::Backend::Postgres => "postgres",
    };
    let (database, migrations, ready) = match app.db.migration_level().await {
        Ok(level) => {
            let state = if level.applied > level.expected {
                "ahead"
            } else if level.is_current() {
                "current"
            } else {
                "behind"
            };
            (
                serde_json::json!({"backend": backend, "reachable": true}),
                serde_json::json!({
                    "applied": level.applied,
                    "expected": level.expected,
                    "state": state,
                }),
                state != "behind",
            )
        }
        Err(err) => (
            serde_json::json!({
                "backend": backend,
                "reachable": false,
                "error": format!("database unreachable: {err}"),
            }),
            serde_json::Value::Null,
            false,
        ),
    };
    let sources = &app.settings.notifications.sources;
    let identity = {
        use crate::integration::runtime::RuntimeMode;
        let (mode, user) = match app.runtime.mode() {
            RuntimeMode::IntegrationUser { user_name, .. } => ("integration_user", Some(user_name)),
            RuntimeMode::AdminFallback => ("admin_fallback", None),
            RuntimeMode::Unavailable => ("unavailable", None),
        };
        let failure = app.runtime.last_failure();
        serde_json::json!({"mode": mode, "user": user, "note": app.runtime.note(), "last_failure": failure})
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "version": crate::VERSION,
        "database": database,
        "migrations": migrations,
        "workers": {"delivery": app.settings.notifications.deliver},
        "pollers": {
            "servicenow": sources.servicenow.poll,
            "service_health": sources.service_health.poll,
        },
        // Per enabled poller: whether this instance holds its lease and polls (null: not run here).
        "leaders": {
            "servicenow": app.metrics.leader("servicenow"),
            "service_health": app.metrics.leader("service_health"),
        },
        "servicenow_identity": identity,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `/metrics` on the public listener, unless `server.metrics_listen` moves it elsewhere.
fn public_metrics(app: &Arc<App>) -> Router<Arc<App>> {
    if app.settings.server.metrics_listen.is_some() {
        Router::new()
    } else {
        Router::new().route("/metrics", get(metrics))
    }
}

/// The router of the internal metrics listener (`server.metrics_listen`): `/metrics` only.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = app.metrics.render();
    text.push_str(&outbox_gauges(&app).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The outbox gauges, read from the database; a failed read is reported as
/// `m365bot_notify_outbox_up 0` (and the gauges left out) instead of failing the scrape.
async fn outbox_gauges(app: &App) -> String {
    use std::fmt::Write;
    let now = crate::db::now_millis();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        crate::notify::outbox::gauges(&app.db, now),
    )
    .await;
    let mut out = String::from(
        "# HELP m365bot_notify_outbox_up 1 when the outbox gauges below were read from the database.\n\
         # TYPE m365bot_notify_outbox_up gauge\n",
    );
    let gauges = match read {
        Ok(Ok(gauges)) => gauges,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "metrics: cannot read the outbox gauges");
            out.push_str("m365bot_notify_outbox_up 0\n");
            return out;
        }
        Err(_) => {
            tracing::warn!("metrics: reading the outbox gauges took longer than 5 s");
            out.push_str("m365bot_notify_outbox_up 0\n");
            return out;
        }
    };
    out.push_str("m365bot_notify_outbox_up 1\n");
    let oldest_age = gauges
        .oldest_pending_at
        .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
    for (name, help, value) in [
        (
            "m365bot_notify_outbox_pending",
            "Outbox rows waiting for delivery (all instances).",
            gauges.pending as f64,
        ),
        (
            "m365bot_notify_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row waiting for delivery; 0 when none waits.",
            oldest_age,
        ),
        (
            "m365bot_notify_frozen_conversations",
            "Conversations frozen by a Retry-After right now.",
            gauges.frozen_conversations as f64,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": {"code": "not_found", "message": "no such route"}})),
    )
        .into_response()
}

/// Turns axum's plain-text 413 into the same JSON error shape as every other refusal.
fn payload_too_large_as_json(response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"))
    {
        return ApiError::PayloadTooLarge.into_response();
    }
    response
}

/// Records the request in the metrics, and answers a 413 in JSON.
async fn record_metrics(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    // `MatchedPath` shares its text: cloning it does not copy the route.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = payload_too_large_as_json(next.run(request).await);
    app.metrics.record_request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
