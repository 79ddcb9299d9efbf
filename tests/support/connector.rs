//! Fake Bot Connector and outbound token endpoint.
