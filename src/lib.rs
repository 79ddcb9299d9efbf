//! m365bot: sets up, verifies and operates the Microsoft 365 support integration between
//! ServiceNow and Microsoft 365, from Microsoft Teams and Slack.

pub mod app;
pub mod cards;
pub mod chat;
pub mod config;
pub mod core;
pub mod db;
pub mod demo;
pub mod error;
pub mod identity;
pub mod ids;
pub mod init;
pub mod integration;
pub mod link;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod routes;
pub mod sandbox;
pub mod setup;
pub mod slack;
pub mod teams;
pub mod telemetry;
pub mod upstream;

/// The crate version and the git revision it was built from, e.g. `0.1.0 (1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUILD_GIT_REVISION"),
    ")"
);

/// The git revision the binary was built from (`unknown` when built without git metadata).
pub const GIT_REVISION: &str = env!("BUILD_GIT_REVISION");
