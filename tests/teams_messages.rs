//! `/api/messages` end to end: samples parse and get replies through a fake connector.
mod support;
