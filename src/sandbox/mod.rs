//! In-process emulators of ServiceNow, Entra ID and Microsoft Graph for the sandbox and tests.
