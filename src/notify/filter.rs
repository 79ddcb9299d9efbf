//! The `subscribe` filter: syntax, parsing with clear usage errors, and matching.
//!
//! Syntax: space-separated terms, each `key=value[,value…]` or a flag; values with spaces are
//! quoted (`group="Service Desk"`). Keys: `source` (`servicenow`, `service_health`),
//! `service`, `priority` (alias `severity`), `group`, and the flag `changes-only`. Values
//! match case-insensitively; a priority value matches the whole priority or its leading
//! number (`1` matches `1 - Critical`). An empty filter matches every event.

use serde::{Deserialize, Serialize};

use super::event::{CaseEvent, EventSource};

/// The usage line shown with every filter error.
pub const USAGE: &str = "subscribe [source=servicenow|service_health] [service=NAME,…] [priority=1,2,…] [group=\"NAME\",…] [changes-only]";

/// Longest filter text accepted.
const MAX_FILTER_CHARS: usize = 500;
/// Most values per key.
const MAX_VALUES: usize = 20;

/// What a subscription lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only this source.
    #[serde(default)]
    pub source: Option<EventSource>,
    /// Only these services (any of them).
    #[serde(default)]
    pub services: Vec<String>,
    /// Only these priorities or severities (any of them).
    #[serde(default)]
    pub priorities: Vec<String>,
    /// Only these assignment groups (any of them).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Only updates that change the state (and new cases).
    #[serde(default)]
    pub changes_only: bool,
}

/// Why a filter text is not valid; the message says what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text is too long.
    #[error("The filter is longer than {MAX_FILTER_CHARS} characters.")]
    TooLong,
    /// A quote is not closed.
    #[error("A quote is not closed: {0}")]
    UnclosedQuote(String),
    /// A key that does not exist.
    #[error(
        "I don't know the filter **{0}**. Use source, service, priority, group or changes-only."
    )]
    UnknownKey(String),
    /// `key=` without a value.
    #[error("**{0}** needs a value, e.g. {0}=…")]
    MissingValue(String),
    /// A flag given a value.
    #[error("**{0}** takes no value.")]
    UnexpectedValue(String),
    /// An unknown source.
    #[error("Unknown source **{0}**: use servicenow or service_health.")]
    UnknownSource(String),
    /// The same key twice.
    #[error("**{0}** is given twice; list the values once, separated by commas.")]
    Duplicate(String),
    /// Too many values.
    #[error("**{0}** has more than {MAX_VALUES} values.")]
    TooManyValues(String),
    /// A value no source produces, so the subscription could never match it.
    #[error("**{key}={value}** can never match: {accepted}")]
    NeverMatches {
        /// The filter key.
        key: &'static str,
        /// The value given.
        value: String,
        /// The values that are accepted, as a sentence.
        accepted: String,
    },
    /// The values of a key could not be checked (the source is unreachable or not configured).
    #[error("I could not check **{key}** values: {reason}")]
    Unchecked {
        /// The filter key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// What the sources can produce, for [`Filter::validate`].
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// Priorities of the case table's choice list (values and labels); empty when it could not
    /// be read (then 1-5 are accepted).
    pub priorities: Vec<String>,
    /// Known service names and ids (Microsoft 365 service health, the case table's service
    /// choices); `Err` says why they are unknown.
    pub services: Result<Vec<String>, String>,
    /// The assignment groups that exist among those the filter names; `Err` says why they
    /// could not be looked up.
    pub groups: Result<Vec<String>, String>,
}

/// Service-health classifications, which the `priority` key matches too.
pub const HEALTH_CLASSIFICATIONS: [&str; 2] = ["incident", "advisory"];

fn listed(values: &[String], max: usize) -> String {
    let mut shown: Vec<String> = values.iter().take(max).map(|v| quote(v)).collect();
    if values.len() > max {
        shown.push(format!("… ({} in all)", values.len()));
    }
    shown.join(", ")
}

impl Filter {
    /// Parses the text after `subscribe`.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.chars().count() > MAX_FILTER_CHARS {
            return Err(FilterError::TooLong);
        }
        let mut filter = Self::default();
        let mut seen: Vec<&'static str> = Vec::new();
        for term in split_terms(text)? {
            let (key, value) = match term.split_once('=') {
                Some((key, value)) => (key.trim().to_ascii_lowercase(), Some(value.to_owned())),
                None => (term.trim().to_ascii_lowercase(), None),
            };
            let canonical: &'static str = match key.as_str() {
                "source" => "source",
                "service" | "services" => "service",
                "priority" | "priorities" | "severity" => "priority",
                "group" | "groups" | "assignment_group" | "assignment-group" => "group",
                "changes-only" | "changes_only" | "state-changes" | "changes" => "changes-only",
                _ => return Err(FilterError::UnknownKey(shorten(&key))),
            };
            if seen.contains(&canonical) {
                return Err(FilterError::Duplicate(canonical.to_owned()));
            }
            seen.push(canonical);
            if canonical == "changes-only" {
                match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("yes" | "true" | "on") => filter.changes_only = true,
                    Some("no" | "false" | "off") => filter.changes_only = false,
                    Some(_) => return Err(FilterError::UnexpectedValue(canonical.to_owned())),
                }
                continue;
            }
            let values = split_values(value.as_deref().unwrap_or_default());
            if values.is_empty() {
                return Err(FilterError::MissingValue(canonical.to_owned()));
            }
            if values.len() > MAX_VALUES {
                return Err(FilterError::TooManyValues(canonical.to_owned()));
            }
            match canonical {
                "source" => {
                    let [one] = values.as_slice() else {
                        return Err(FilterError::UnknownSource(shorten(&values.join(","))));
                    };
                    filter.source = Some(match one.to_ascii_lowercase().as_str() {
                        "servicenow" | "snow" | "incident" | "incidents" => EventSource::ServiceNow,
                        "service_health" | "service-health" | "servicehealth" | "health" => {
                            EventSource::ServiceHealth
                        }
                        _ => return Err(FilterError::UnknownSource(shorten(one))),
                    });
                }
                "service" => filter.services = values,
                "priority" => filter.priorities = values,
                _ => filter.groups = values,
            }
        }
        Ok(filter)
    }

    /// Checks every value against what the sources can produce, so a subscription never
    /// waits for something that cannot come.
    pub fn validate(&self, known: &Vocabulary) -> Result<(), FilterError> {
        let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
        for wanted in &self.priorities {
            let numeric = wanted.parse::<u8>().is_ok_and(|n| (1..=5).contains(&n));
            let accepted = numeric
                || known.priorities.iter().any(|p| same(p, wanted))
                || HEALTH_CLASSIFICATIONS.iter().any(|c| same(c, wanted));
            if !accepted {
                let mut values: Vec<String> = (1..=5).map(|n| n.to_string()).collect();
                values.extend(
                    known
                        .priorities
                        .iter()
                        .filter(|p| p.parse::<u8>().is_err())
                        .cloned(),
                );
                values.extend(HEALTH_CLASSIFICATIONS.iter().map(|c| (*c).to_owned()));
                return Err(FilterError::NeverMatches {
                    key: "priority",
                    value: shorten(wanted),
                    accepted: format!("use {}.", listed(&values, 12)),
                });
            }
        }
        if !self.services.is_empty() {
            let services = known
                .services
                .as_ref()
                .map_err(|reason| FilterError::Unchecked {
                    key: "service",
                    reason: reason.clone(),
                })?;
            if let Some(unknown) = self
                .services
                .iter()
                .find(|wanted| !services.iter().any(|s| same(s, wanted)))
            {
                return Err(FilterError::NeverMatches {
                    key: "service",
                    value: shorten(unknown),
                    accepted: format!("known services are {}.", listed(services, 10)),
                });
            }
        }
        if !self.groups.is_empty() {
            let groups = known
                .groups
                .as_ref()
                .map_err(|reason| FilterError::Unchecked {
                    key: "group",
                    reason: reason.clone(),
                })?;
            if let Some(unknown) = self
                .groups
                .iter()
                .find(|wanted| !groups.iter().any(|g| same(g, wanted)))
            {
                return Err(FilterError::NeverMatches {
                    key: "group",
                    value: shorten(unknown),
                    accepted: "ServiceNow has no assignment group of that name (check the spelling; quote names with spaces: group=\"Service Desk\").".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The filter as it would be typed, in canonical order (empty for "everything").
    pub fn to_text(&self) -> String {
        let mut terms = Vec::new();
        if let Some(source) = self.source {
            terms.push(format!("source={}", source.as_str()));
        }
        for (key, values) in [
            ("service", &self.services),
            ("priority", &self.priorities),
            ("group", &self.groups),
        ] {
            if !values.is_empty() {
                let joined: Vec<String> = values.iter().map(|v| quote(v)).collect();
                terms.push(format!("{key}={}", joined.join(",")));
            }
        }
        if self.changes_only {
            terms.push("changes-only".to_owned());
        }
        terms.join(" ")
    }

    /// A sentence for cards: what this subscription delivers.
    pub fn describe(&self) -> String {
        let text = self.to_text();
        if text.is_empty() {
            "all case and service-health updates".to_owned()
        } else {
            text
        }
    }

    /// True when `event` passes; `state_changed` says whether it changes the case's state (or
    /// is the first update of the case).
    pub fn matches(&self, event: &CaseEvent, state_changed: bool) -> bool {
        if self.source.is_some_and(|source| source != event.source) {
            return false;
        }
        if self.changes_only && !state_changed {
            return false;
        }
        let any_equal = |wanted: &[String], actual: Option<&str>| {
            wanted.is_empty()
                || actual.is_some_and(|actual| {
                    wanted
                        .iter()
                        .any(|w| w.trim().eq_ignore_ascii_case(actual.trim()))
                })
        };
        if !any_equal(&self.services, event.service.as_deref()) {
            return false;
        }
        if !any_equal(&self.groups, event.assignment_group.as_deref()) {
            return false;
        }
        if !self.priorities.is_empty() {
            let Some(priority) = event.priority.as_deref() else {
                return false;
            };
            let leading = priority_leading(priority);
            if !self.priorities.iter().any(|wanted| {
                wanted.eq_ignore_ascii_case(priority.trim()) || wanted.eq_ignore_ascii_case(leading)
            }) {
                return false;
            }
        }
        true
    }
}

/// The route of a subscription stored before routes existed: a candidate for every event.
pub const UNROUTED: &str = "?";

impl Filter {
    /// The routes a subscription with this filter is indexed by (`notify_subscription_routes`):
    /// the values of its most selective dimension (group, then service, then priority, then
    /// source), or `*` without any. An event can only match when one of these is among
    /// [`event_routes`], so matching reads only those subscriptions.
    pub fn routes(&self) -> Vec<String> {
        let keyed = |key: &str, values: &[String], trim: bool| -> Vec<String> {
            let mut routes: Vec<String> = values
                .iter()
                .map(|v| {
                    let v = if trim { v.trim() } else { v.as_str() };
                    format!("{key}:{}", v.to_ascii_lowercase())
                })
                .collect();
            routes.sort();
            routes.dedup();
            routes
        };
        if !self.groups.is_empty() {
            keyed("group", &self.groups, true)
        } else if !self.services.is_empty() {
            keyed("service", &self.services, true)
        } else if !self.priorities.is_empty() {
            keyed("priority", &self.priorities, false)
        } else if let Some(source) = self.source {
            vec![format!("source:{}", source.as_str())]
        } else {
            vec!["*".to_owned()]
        }
    }
}

/// The routes under which subscriptions that may match `event` are indexed (see
/// [`Filter::routes`]), including [`UNROUTED`].
pub fn event_routes(event: &CaseEvent) -> Vec<String> {
    let mut routes = vec![
        "*".to_owned(),
        UNROUTED.to_owned(),
        format!("source:{}", event.source.as_str()),
    ];
    if let Some(group) = &event.assignment_group {
        routes.push(format!("group:{}", group.trim().to_ascii_lowercase()));
    }
    if let Some(service) = &event.service {
        routes.push(format!("service:{}", service.trim().to_ascii_lowercase()));
    }
    if let Some(priority) = &event.priority {
        routes.push(format!("priority:{}", priority.trim().to_ascii_lowercase()));
        routes.push(format!(
            "priority:{}",
            priority_leading(priority).to_ascii_lowercase()
        ));
    }
    routes.sort();
    routes.dedup();
    routes
}

/// The leading number of a priority (`1` of `1 - Critical`), or its first word.
fn priority_leading(priority: &str) -> &str {
    priority
        .split(|c: char| c.is_whitespace() || c == '-')
        .find(|part| !part.is_empty())
        .unwrap_or_default()
}

/// Splits on whitespace outside quotes; quotes are removed.
fn split_terms(text: &str) -> Result<Vec<String>, FilterError> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut quote_start = 0;
    for (index, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'' | '“' | '”') => {
                quote = Some(if c == '“' { '”' } else { c });
                quote_start = index;
            }
            (Some(q), c) if c == q || (q == '”' && c == '“') => quote = None,
            (None, c) if c.is_whitespace() => {
                if !current.is_empty() {
                    terms.push(std::mem::take(&mut current));
                }
            }
            // A comma inside quotes is part of the value: keep it escaped from the splitter.
            (Some(_), ',') => current.push('\u{0}'),
            (_, c) => current.push(c),
        }
    }
    if quote.is_some() {
        return Err(FilterError::UnclosedQuote(shorten(&text[quote_start..])));
    }
    if !current.is_empty() {
        terms.push(current);
    }
    Ok(terms)
}

/// Comma-separated values, trimmed, empty ones dropped (quoted commas restored).
fn split_values(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|v| v.replace('\u{0}', ",").trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn quote(value: &str) -> String {
    if value.contains(|c: char| c.is_whitespace() || c == ',' || c == '=') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    }
}

fn shorten(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(40).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CaseEvent {
        CaseEvent {
            source: EventSource::ServiceNow,
            case_key: "servicenow:incident:1".to_owned(),
            revision: "3".to_owned(),
            number: "INC0010001".to_owned(),
            title: "Mail down".to_owned(),
            state: "In Progress".to_owned(),
            previous_state: Some("New".to_owned()),
            priority: Some("1 - Critical".to_owned()),
            service: Some("Exchange Online".to_owned()),
            assignment_group: Some("Service Desk".to_owned()),
            microsoft_case: None,
            url: None,
            latest_note: None,
            resolved: false,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let filter =
            Filter::parse(r#"source=servicenow priority=1,2 group="Service Desk" changes-only"#)
                .expect("valid");
        assert_eq!(filter.source, Some(EventSource::ServiceNow));
        assert_eq!(filter.priorities, vec!["1", "2"]);
        assert_eq!(filter.groups, vec!["Service Desk"]);
        assert!(filter.changes_only);
        assert_eq!(
            filter.to_text(),
            r#"source=servicenow priority=1,2 group="Service Desk" changes-only"#
        );
        assert_eq!(Filter::parse(&filter.to_text()), Ok(filter));
        assert_eq!(Filter::parse("  "), Ok(Filter::default()));
        assert_eq!(
            Filter::parse(r#"group="A, B",C"#).expect("valid").groups,
            vec!["A, B", "C"]
        );
    }

    #[test]
    fn usage_errors_are_specific() {
        assert_eq!(
            Filter::parse("colour=red"),
            Err(FilterError::UnknownKey("colour".to_owned()))
        );
        assert_eq!(
            Filter::parse("priority="),
            Err(FilterError::MissingValue("priority".to_owned()))
        );
        assert_eq!(
            Filter::parse("source=jira"),
            Err(FilterError::UnknownSource("jira".to_owned()))
        );
        assert!(matches!(
            Filter::parse(r#"group="Service Desk"#),
            Err(FilterError::UnclosedQuote(_))
        ));
        assert_eq!(
            Filter::parse("priority=1 severity=2"),
            Err(FilterError::Duplicate("priority".to_owned()))
        );
        assert_eq!(
            Filter::parse("changes-only=maybe"),
            Err(FilterError::UnexpectedValue("changes-only".to_owned()))
        );
        assert_eq!(Filter::parse(&"x".repeat(600)), Err(FilterError::TooLong));
    }

    #[test]
    fn a_matching_filter_shares_a_route_with_the_event() {
        let texts = [
            "",
            "changes-only",
            "source=servicenow",
            "source=service_health",
            "priority=1",
            "priority=\"1 - critical\"",
            "priority=2,3",
            "severity=CRITICAL",
            "group=\"service desk\" priority=2",
            "group=\"Service Desk\",Network",
            "group=Network",
            "service=\"EXCHANGE ONLINE\" source=servicenow",
            "service=Teams",
        ];
        let mut events = vec![event()];
        let mut bare = event();
        bare.priority = None;
        bare.assignment_group = None;
        bare.service = None;
        events.push(bare);
        let mut padded = event();
        padded.priority = Some("  critical ".to_owned());
        padded.assignment_group = Some(" SERVICE DESK ".to_owned());
        events.push(padded);
        for text in texts {
            let filter = Filter::parse(text).expect("valid");
            let routes = filter.routes();
            assert!(!routes.is_empty(), "{text}");
            for event in &events {
                let shared = event_routes(event).iter().any(|r| routes.contains(r));
                if filter.matches(event, true) {
                    assert!(shared, "{text:?} matches {event:?} but shares no route");
                }
            }
        }
        let routed = |text: &str| Filter::parse(text).expect("valid").routes();
        assert_eq!(routed(""), vec!["*"]);
        assert_eq!(routed("changes-only"), vec!["*"]);
        assert_eq!(
            routed("source=service_health"),
            vec!["source:service_health"]
        );
        assert_eq!(
            routed("group=\"Service Desk\",network priority=1"),
            vec!["group:network", "group:service desk"]
        );
        assert_eq!(routed("priority=1,1"), vec!["priority:1"]);
        // A subscription routed elsewhere is not read for this event.
        assert!(!event_routes(&event()).contains(&"group:network".to_owned()));
        assert!(event_routes(&event()).contains(&UNROUTED.to_owned()));
    }

    #[test]
    fn matching() {
        let e = event();
        assert!(Filter::default().matches(&e, false));
        let f = |text: &str| Filter::parse(text).expect("valid");
        assert!(f("priority=1").matches(&e, false));
        assert!(f("priority=\"1 - critical\"").matches(&e, false));
        assert!(!f("priority=2,3").matches(&e, false));
        assert!(f("group=\"service desk\"").matches(&e, false));
        assert!(!f("group=Network").matches(&e, false));
        assert!(f("service=\"Exchange Online\",Teams").matches(&e, false));
        assert!(!f("source=service_health").matches(&e, false));
        assert!(!f("changes-only").matches(&e, false));
        assert!(f("changes-only").matches(&e, true));
        let mut no_priority = e.clone();
        no_priority.priority = None;
        assert!(!f("priority=1").matches(&no_priority, true));
    }

    fn vocabulary() -> Vocabulary {
        Vocabulary {
            priorities: vec!["1".into(), "1 - Critical".into(), "2 - High".into()],
            services: Ok(vec!["Exchange Online".into(), "Exchange".into()]),
            groups: Ok(vec!["Service Desk".into()]),
        }
    }

    #[test]
    fn values_no_source_produces_are_refused_naming_the_accepted_ones() {
        let known = vocabulary();
        let ok = Filter::parse(
            r#"priority=1,"2 - high",advisory,5 service="exchange online" group="service desk""#,
        )
        .expect("parses");
        assert_eq!(ok.validate(&known), Ok(()));
        let refused = |text: &str| {
            Filter::parse(text)
                .expect("parses")
                .validate(&known)
                .expect_err(text)
                .to_string()
        };
        let banana = refused("priority=banana");
        assert!(banana.starts_with("**priority=banana** can never match: use 1, 2, 3, 4, 5, \"1 - Critical\", \"2 - High\", incident, advisory."), "{banana}");
        assert!(refused("priority=6").contains("can never match"));
        assert!(
            refused("service=Exchnage")
                .contains("known services are \"Exchange Online\", Exchange.")
        );
        assert!(refused(r#"group="Servce Desk""#).contains("no assignment group of that name"));
        // Unknown sources are refused at parse time already.
        assert!(Filter::parse("source=slack").is_err());
        // When a source cannot be read, the key is refused with the reason, never stored blind.
        let unreachable = Vocabulary {
            groups: Err("ServiceNow answered 503".into()),
            ..vocabulary()
        };
        let error = Filter::parse("group=x")
            .expect("parses")
            .validate(&unreachable)
            .expect_err("unchecked");
        assert_eq!(
            error.to_string(),
            "I could not check **group** values: ServiceNow answered 503"
        );
    }
}
