//! The one case-event model every source (ServiceNow push, ServiceNow poll, Microsoft 365
//! service health) produces and the delivery pipeline consumes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// A ServiceNow record (pushed by the Business Rule or found by the poller).
    ServiceNow,
    /// A Microsoft 365 service-health issue from Graph.
    ServiceHealth,
}

impl EventSource {
    /// The name used in filters and storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceNow => "servicenow",
            Self::ServiceHealth => "service_health",
        }
    }
}

/// One update of one case, whatever the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEvent {
    /// The source.
    pub source: EventSource,
    /// Stable key of the case across updates and sources: `servicenow:<table>:<sys_id>` or
    /// `service_health:<issue id>`.
    pub case_key: String,
    /// What makes this update unique within the case (`sys_mod_count` for ServiceNow, the
    /// `lastModifiedDateTime` for service health): `(case_key, revision)` is the dedupe key, so
    /// push and poll seeing the same update yield one event.
    pub revision: String,
    /// Human reference: `INC0010001`, `MO123456`.
    pub number: String,
    /// Short description or issue title.
    pub title: String,
    /// Current state, as shown to users (`In Progress`, `serviceDegradation`, …).
    pub state: String,
    /// The state before this update, when known (for "state changes only" filters).
    #[serde(default)]
    pub previous_state: Option<String>,
    /// Priority or severity as shown (`1 - Critical`, `incident`/`advisory`).
    #[serde(default)]
    pub priority: Option<String>,
    /// Microsoft 365 service (`Exchange Online`) or ServiceNow category / configuration item.
    #[serde(default)]
    pub service: Option<String>,
    /// ServiceNow assignment group name.
    #[serde(default)]
    pub assignment_group: Option<String>,
    /// The Microsoft support case number the incident tracks.
    #[serde(default)]
    pub microsoft_case: Option<String>,
    /// Link to the record (ServiceNow form or Microsoft 365 admin center).
    #[serde(default)]
    pub url: Option<String>,
    /// The latest comment, work note or service-health post, as plain text.
    #[serde(default)]
    pub latest_note: Option<String>,
    /// True once the case is resolved or closed.
    #[serde(default)]
    pub resolved: bool,
    /// When the source says the update happened.
    pub updated_at: DateTime<Utc>,
}

impl CaseEvent {
    /// The dedupe key of the event: `case_key#revision`.
    pub fn dedupe_key(&self) -> String {
        format!("{}#{}", self.case_key, self.revision)
    }
}
