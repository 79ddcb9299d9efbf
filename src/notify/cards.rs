//! The view models of the notification cards (`cards/teams/notify_*.json.hbs`, rendered by
//! [`crate::cards`]): the case root card, the update reply, the status card.

use serde_json::{Value, json};

use super::event::{CaseEvent, EventSource};

/// Longest note shown on a card.
const MAX_NOTE_CHARS: usize = 1500;
/// Longest single field shown on a card.
const MAX_FIELD_CHARS: usize = 300;

/// At most `max` characters, control characters (but newlines) flattened.
pub fn clip(text: &str, max: usize) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .take(max)
        .collect();
    if text.trim().chars().count() > max {
        out.push('…');
    }
    out
}

/// Untrusted text for a TextBlock: clipped to `max` characters, markdown escaped so a caller's
/// comment cannot post links or formatting under the bot's name.
pub fn untrusted(text: &str, max: usize) -> String {
    crate::cards::escape_markdown(&clip(text, max))
}

/// The colour of a case: resolved is good, priority 1 or a service incident needs attention.
pub fn tone(event: &CaseEvent) -> &'static str {
    if event.resolved {
        return "good";
    }
    let priority = event
        .priority
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if priority.starts_with('1') || priority == "incident" || priority.contains("critical") {
        "attention"
    } else if priority.starts_with('2') || priority.contains("high") {
        "warning"
    } else {
        "default"
    }
}

fn source_label(source: EventSource) -> &'static str {
    match source {
        EventSource::ServiceNow => "ServiceNow incident",
        EventSource::ServiceHealth => "Microsoft 365 service health",
    }
}

/// A link is shown only when it is plain https.
fn safe_url(url: Option<&str>) -> String {
    url.filter(|u| u.starts_with("https://") && !u.contains(char::is_whitespace))
        .map(|u| clip(u, 2000))
        .unwrap_or_default()
}

fn updated(event: &CaseEvent) -> String {
    event.updated_at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn facts(event: &CaseEvent) -> Vec<Value> {
    let mut facts = Vec::new();
    let mut fact = |title: &str, value: Option<&str>| {
        if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
            facts.push(json!({"title": title, "value": untrusted(value, MAX_FIELD_CHARS)}));
        }
    };
    fact("State", Some(&event.state));
    let priority_title = match event.source {
        EventSource::ServiceNow => "Priority",
        EventSource::ServiceHealth => "Classification",
    };
    fact(priority_title, event.priority.as_deref());
    fact("Service", event.service.as_deref());
    fact("Assignment group", event.assignment_group.as_deref());
    fact("Microsoft case", event.microsoft_case.as_deref());
    facts
}

/// The view model of the case root card (`teams/notify_case`) and of the status card
/// (`teams/notify_status`; `live` when read from ServiceNow just now).
pub fn case_model(event: &CaseEvent, live: bool) -> Value {
    let url_label = match event.source {
        EventSource::ServiceNow => "Open in ServiceNow",
        EventSource::ServiceHealth => "Open in the Microsoft 365 admin center",
    };
    json!({
        "number": untrusted(&event.number, 60),
        "title": untrusted(&event.title, MAX_FIELD_CHARS),
        "source_label": source_label(event.source),
        "state": untrusted(&event.state, 100),
        "tone": tone(event),
        "facts": facts(event),
        "latest_note": event.latest_note.as_deref().map(|n| untrusted(n, MAX_NOTE_CHARS)).unwrap_or_default(),
        "updated": updated(event),
        "url": safe_url(event.url.as_deref()),
        "url_label": url_label,
        "live": live,
    })
}

fn is_closed_state(state: &str) -> bool {
    let state = state.to_ascii_lowercase();
    ["resolved", "closed", "cancel"]
        .iter()
        .any(|word| state.contains(word))
}

/// The colour of a thread reply: good when resolved, attention only for a reopen or an
/// escalation, accent for any other state change (progress), default for a plain update.
pub fn update_tone(event: &CaseEvent, previous_state: Option<&str>) -> &'static str {
    if event.resolved {
        return "good";
    }
    let reopened = previous_state.is_some_and(is_closed_state);
    let escalated = event.state.to_ascii_lowercase().contains("escalat");
    if reopened || escalated {
        return "attention";
    }
    match previous_state {
        Some(before) if !before.eq_ignore_ascii_case(&event.state) => "accent",
        _ => "default",
    }
}

/// The view model of an update posted in the thread (`teams/notify_update`); `merged` is how
/// many queued updates this one stands for besides itself.
pub fn update_model(event: &CaseEvent, previous_state: Option<&str>, merged: usize) -> Value {
    let headline = match previous_state {
        _ if event.resolved => format!("resolved ({})", untrusted(&event.state, 100)),
        Some(before) if !before.eq_ignore_ascii_case(&event.state) => {
            format!(
                "{} → {}",
                untrusted(before, 100),
                untrusted(&event.state, 100)
            )
        }
        _ => "updated".to_owned(),
    };
    let merged_note = match merged {
        0 => String::new(),
        1 => "includes 1 earlier update".to_owned(),
        n => format!("includes {n} earlier updates"),
    };
    json!({
        "number": untrusted(&event.number, 60),
        "headline": headline,
        "state": untrusted(&event.state, 100),
        "tone": update_tone(event, previous_state),
        "latest_note": event.latest_note.as_deref().map(|n| untrusted(n, MAX_NOTE_CHARS)).unwrap_or_default(),
        "updated": updated(event),
        "merged_note": merged_note,
    })
}

/// The notification preview text of a case message (`summary` of the activity).
pub fn summary(event: &CaseEvent) -> String {
    clip(&format!("{}: {}", event.number, event.state), 200)
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
            title: "Mail \"down\" {{x}}".to_owned(),
            state: "In Progress".to_owned(),
            previous_state: Some("New".to_owned()),
            priority: Some("1 - Critical".to_owned()),
            service: None,
            assignment_group: Some("Service Desk".to_owned()),
            microsoft_case: Some("2511270010000001".to_owned()),
            url: Some("javascript:alert(1)".to_owned()),
            latest_note: Some("line\nnext".to_owned()),
            resolved: false,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn every_template_renders_hostile_text() {
        let cards = crate::cards::CardRenderer::new().expect("templates compile");
        let e = event();
        let card = cards
            .render("teams/notify_case", &case_model(&e, false))
            .expect("case card");
        assert_eq!(card["version"], "1.5");
        assert_eq!(card["body"][0]["items"][2]["text"], "Mail \"down\" {{x}}");
        assert!(card.get("actions").is_none(), "unsafe link dropped");
        let facts = card["body"][1]["facts"].as_array().expect("facts");
        assert!(facts.iter().all(|f| f["title"] != "Service"), "absent fact");
        let update = cards
            .render("teams/notify_update", &update_model(&e, Some("New"), 2))
            .expect("update card");
        assert_eq!(update["body"][1]["text"], "New → In Progress");
        assert_eq!(update["body"][1]["color"], "Accent", "progress is no alarm");
        let status = cards
            .render("teams/notify_status", &case_model(&e, true))
            .expect("status card");
        assert_eq!(status["type"], "AdaptiveCard");
    }

    #[test]
    fn markdown_from_servicenow_shows_literally() {
        let cards = crate::cards::CardRenderer::new().expect("templates compile");
        let mut e = event();
        e.title = "[Your session expired](https://evil.example/login) **now**".to_owned();
        e.latest_note = Some("- step one\n1. click <https://evil.example>\n# Heading".to_owned());
        let card = cards
            .render("teams/notify_case", &case_model(&e, false))
            .expect("case card");
        let title = card["body"][0]["items"][2]["text"].as_str().expect("title");
        assert_eq!(
            title,
            "\\[Your session expired\\](https:\u{200B}//evil.example/login) \\*\\*now\\*\\*"
        );
        let note = card["body"][2]["text"].as_str().expect("note");
        assert_eq!(
            note,
            "\\- step one\n1\\. click \\<https:\u{200B}//evil.example\\>\n\\# Heading"
        );
    }

    #[test]
    fn thread_replies_colour_progress_accent_and_only_reopen_or_escalation_attention() {
        let mut e = event();
        // Priority 1 colours the root card, not every step of progress.
        assert_eq!(update_tone(&e, Some("New")), "accent");
        assert_eq!(update_tone(&e, Some("In Progress")), "default");
        assert_eq!(update_tone(&e, None), "default");
        assert_eq!(update_tone(&e, Some("Resolved")), "attention", "reopened");
        assert_eq!(update_tone(&e, Some("Closed")), "attention", "reopened");
        e.state = "Escalated".to_owned();
        assert_eq!(update_tone(&e, Some("In Progress")), "attention");
        e.state = "Resolved".to_owned();
        e.resolved = true;
        assert_eq!(update_tone(&e, Some("In Progress")), "good");
    }
}
