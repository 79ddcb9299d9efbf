//! Upstream clients: ServiceNow, Entra ID and Microsoft Graph.
