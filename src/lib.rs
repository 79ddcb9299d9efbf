//! m365bot: sets up, verifies and operates the Microsoft 365 support integration between
//! ServiceNow and Microsoft 365, from Microsoft Teams and Slack.

pub mod app;
pub mod cards;
pub mod config;
pub mod core;
pub mod db;
pub mod demo;
pub mod error;
pub mod integration;
pub mod link;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod routes;
pub mod sandbox;
pub mod setup;
pub mod teams;
pub mod telemetry;
pub mod upstream;
