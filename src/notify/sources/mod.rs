//! The event sources: the ServiceNow push endpoint, the ServiceNow poller and the Microsoft
//! 365 service-health poller (with optional mirroring into ServiceNow incidents).

use std::sync::Arc;

use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// The push endpoint's routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
}

/// Starts the pollers; they stop with `shutdown`.
pub fn start(_app: Arc<App>, _shutdown: CancellationToken) {}
