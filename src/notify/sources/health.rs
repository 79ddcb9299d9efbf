//! The Microsoft 365 service-health poller: Graph `/admin/serviceAnnouncement/issues` changed
//! since the `lastModifiedDateTime` watermark (the issue id breaks ties) become events with
//! `case_key = service_health:<id>` and `revision = lastModifiedDateTime`. Optionally each
//! issue is mirrored into a ServiceNow incident, as the retired app did: one incident per
//! issue (found again by its correlation field), a work note per new post, resolved when the
//! issue is resolved.

use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::{PollReport, ServiceHealthSettings, SourceError, accept_event, store};
use crate::app::App;
use crate::notify::event::{CaseEvent, EventSource};
use crate::upstream::graph::{ServiceHealthIssue, ServiceHealthStatus};
use crate::upstream::servicenow::{CheckedQuery, EncodedQuery, ServiceNowClient, ServiceNowError};

/// The watermark key of the poller.
pub const SOURCE_ID: &str = "service_health";
/// Seconds before the watermark read again on each poll.
const OVERLAP_SECS: i64 = 60;
/// `correlation_display` of mirrored incidents.
pub const MIRROR_MARK: &str = "Microsoft 365 service health";

/// The case key of an issue.
pub fn case_key(issue_id: &str) -> String {
    format!("service_health:{issue_id}")
}

/// The revision text of a modification time.
pub fn revision(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Plain text of a post's HTML: `<br>` and block ends become line breaks, tags go, the common
/// entities are decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[start + 1..start + end].trim().to_ascii_lowercase();
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or_default();
        if matches!(name, "br" | "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3") {
            out.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let lines: Vec<&str> = decoded.lines().map(str::trim).collect();
    let mut text = String::new();
    let mut blank = false;
    for line in lines {
        if line.is_empty() {
            blank = !text.is_empty();
            continue;
        }
        if !text.is_empty() {
            text.push_str(if blank { "\n\n" } else { "\n" });
        }
        blank = false;
        text.push_str(line);
    }
    text
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

/// Turns an issue into an event and the sort order of its revision (milliseconds).
pub fn event_from_issue(issue: &ServiceHealthIssue) -> (CaseEvent, i64) {
    let latest = issue.posts.iter().max_by_key(|post| post.created_date_time);
    let event = CaseEvent {
        source: EventSource::ServiceHealth,
        case_key: case_key(&issue.id),
        revision: revision(issue.last_modified_date_time),
        number: issue.id.clone(),
        title: issue.title.clone(),
        state: issue
            .status
            .as_ref()
            .map(|status| status.as_str().to_owned())
            .unwrap_or_default(),
        previous_state: None,
        priority: issue
            .classification
            .as_ref()
            .map(|class| class.as_str().to_owned()),
        service: Some(issue.service.clone()).filter(|s| !s.is_empty()),
        assignment_group: None,
        microsoft_case: None,
        url: Some(format!(
            "https://admin.microsoft.com/Adminportal/Home#/servicehealth/:/alerts/{}",
            issue.id
        )),
        latest_note: latest
            .map(|post| truncate(&html_to_text(&post.description.content), 2000))
            .filter(|text| !text.is_empty()),
        resolved: issue.is_resolved,
        updated_at: issue.last_modified_date_time,
    };
    (event, issue.last_modified_date_time.timestamp_millis())
}

/// Polls Graph once; mirrors into ServiceNow when configured.
pub async fn poll_once(app: &App) -> Result<PollReport, SourceError> {
    let settings = &app.settings.notifications.sources.service_health;
    let graph = app.upstreams.graph.as_ref().ok_or_else(|| {
        SourceError::NotConfigured(
            "the service-health poller needs Graph credentials ([entra] graph_client_id and graph_client_secret, or the bot's own)".to_owned(),
        )
    })?;
    let mirror_client = if settings.mirror {
        Some(app.runtime.client().map_err(|why| {
            SourceError::NotConfigured(format!(
                "mirroring service health into ServiceNow needs the integration user: {why}"
            ))
        })?)
    } else {
        None
    };
    let stored = store::watermark(&app.db, SOURCE_ID).await?;
    let (since, last_id) = match &stored {
        Some(mark) => match DateTime::parse_from_rfc3339(&mark.watermark) {
            Ok(at) => (at.with_timezone(&Utc), mark.last_key.clone()),
            Err(_) => (look_back(settings), String::new()),
        },
        None => (look_back(settings), String::new()),
    };
    // A short overlap: an issue modified in the same instant after the last poll is still
    // found; issues already handled at that revision are skipped.
    let mut issues = graph
        .service_health_issues(Some(since - ChronoDuration::seconds(OVERLAP_SECS)))
        .await?;
    issues.sort_by(|a, b| {
        a.last_modified_date_time
            .cmp(&b.last_modified_date_time)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut report = PollReport {
        fetched: issues.len(),
        ..PollReport::default()
    };
    let mut cursor = (since, last_id);
    for issue in &issues {
        let (event, order) = event_from_issue(issue);
        if (issue.last_modified_date_time, issue.id.as_str()) <= (cursor.0, cursor.1.as_str()) {
            let known = store::case_state(&app.db, &event.case_key).await?;
            if known.is_none_or(|state| state.revision_order < order) {
                report.count(accept_event(app, event, order).await?);
                if let Some(client) = &mirror_client {
                    mirror_issue(app, client, settings, issue, &mut report).await?;
                }
            } else {
                report.skipped += 1;
            }
            continue;
        }
        let accepted = accept_event(app, event, order).await?;
        report.count(accepted);
        if let Some(client) = &mirror_client {
            mirror_issue(app, client, settings, issue, &mut report).await?;
        }
        cursor = (issue.last_modified_date_time, issue.id.clone());
        store::set_watermark(
            &app.db,
            SOURCE_ID,
            &store::Watermark {
                watermark: revision(cursor.0),
                last_key: cursor.1.clone(),
            },
        )
        .await?;
    }
    report.watermark = Some(revision(cursor.0));
    Ok(report)
}

fn look_back(settings: &ServiceHealthSettings) -> DateTime<Utc> {
    let secs = i64::try_from(settings.look_back_secs.min(365 * 24 * 3600)).unwrap_or(0);
    Utc::now() - ChronoDuration::seconds(secs)
}

/// ServiceNow `impact` of an issue: incidents 2 (medium), advisories 3 (low).
fn impact(issue: &ServiceHealthIssue) -> &'static str {
    match issue
        .classification
        .as_ref()
        .map(|c| c.as_str().to_ascii_lowercase())
    {
        Some(class) if class == "incident" => "2",
        _ => "3",
    }
}

/// ServiceNow `urgency` of an issue's status: interruption 1, degradation 2, otherwise 3.
fn urgency(issue: &ServiceHealthIssue) -> &'static str {
    match &issue.status {
        Some(ServiceHealthStatus::ServiceInterruption) => "1",
        Some(ServiceHealthStatus::ServiceDegradation | ServiceHealthStatus::ExtendedRecovery) => {
            "2"
        }
        _ => "3",
    }
}

fn description(issue: &ServiceHealthIssue) -> String {
    let mut lines = vec![
        format!("Microsoft 365 service health issue {}", issue.id),
        format!("Service: {}", issue.service),
    ];
    if let Some(feature) = issue.feature.as_deref().filter(|f| !f.is_empty()) {
        lines.push(format!("Feature: {feature}"));
    }
    if let Some(status) = &issue.status {
        lines.push(format!("Status: {status}"));
    }
    if let Some(class) = &issue.classification {
        lines.push(format!("Issue type: {class}"));
    }
    if let Some(start) = issue.start_date_time {
        lines.push(format!("Start: {}", revision(start)));
    }
    if let Some(impact) = issue
        .impact_description
        .as_deref()
        .filter(|i| !i.is_empty())
    {
        lines.push(format!("Impact: {impact}"));
    }
    lines.join("\n")
}

fn note_text(issue_id: &str, post: &crate::upstream::graph::ServiceHealthIssuePost) -> String {
    format!(
        "[Microsoft 365 service health {issue_id}] update of {}:\n{}",
        revision(post.created_date_time),
        truncate(&html_to_text(&post.description.content), 4000)
    )
}

async fn mirror_issue(
    app: &App,
    client: &ServiceNowClient,
    settings: &ServiceHealthSettings,
    issue: &ServiceHealthIssue,
    report: &mut PollReport,
) -> Result<(), SourceError> {
    let table = settings.mirror_table.as_str();
    let mut known_notes: Option<Vec<String>> = None;
    let existing = store::mirror(&app.db, &issue.id)
        .await?
        .filter(|mirror| !mirror.incident_sys_id.is_empty());
    let mut mirror = match existing {
        Some(mirror) => mirror,
        None => {
            // A checked lookup: the incident adopted is one whose correlation value really is
            // this issue's, and two such incidents refuse the adoption.
            let correlation = client
                .resolve_column(table, &settings.mirror_correlation_field)
                .await?;
            let lookup = CheckedQuery::on(table).eq(&correlation, &issue.id)?;
            let found = client.find_one(&lookup, &["sys_id"]).await?;
            let sys_id = match found.as_ref().and_then(|row| row.sys_id()) {
                Some(sys_id) => {
                    // Adopted (the bot's database was reset): skip posts already noted.
                    known_notes = Some(existing_notes(client, table, sys_id).await?);
                    sys_id.to_owned()
                }
                None if issue.is_resolved => {
                    // Already over when first seen: no incident to open and close at once.
                    return Ok(());
                }
                None => {
                    // Claimed first, so the push and poll of the incident's own creation
                    // recognise it as a mirror by its correlation value.
                    store::save_mirror(
                        &app.db,
                        &store::Mirror {
                            issue_id: issue.id.clone(),
                            incident_sys_id: String::new(),
                            last_post_at: i64::MIN,
                            resolved: false,
                        },
                    )
                    .await?;
                    let created = client
                        .create(table, &incident_fields(settings, issue))
                        .await?;
                    report.mirrored_created += 1;
                    created.sys_id().map(str::to_owned).ok_or_else(|| {
                        SourceError::NotConfigured(
                            "ServiceNow created the mirror incident but returned no sys_id"
                                .to_owned(),
                        )
                    })?
                }
            };
            let mirror = store::Mirror {
                issue_id: issue.id.clone(),
                incident_sys_id: sys_id,
                last_post_at: i64::MIN,
                resolved: false,
            };
            store::save_mirror(&app.db, &mirror).await?;
            mirror
        }
    };
    let mut posts: Vec<_> = issue.posts.iter().collect();
    posts.sort_by_key(|post| post.created_date_time);
    for post in posts {
        let at = post.created_date_time.timestamp_millis();
        if at <= mirror.last_post_at {
            continue;
        }
        let text = note_text(&issue.id, post);
        let already = known_notes
            .as_ref()
            .is_some_and(|notes| notes.iter().any(|note| note.trim() == text.trim()));
        if !already {
            let mut fields = Map::new();
            fields.insert("work_notes".to_owned(), Value::String(text));
            client
                .update(table, &mirror.incident_sys_id, &fields)
                .await?;
            report.mirrored_notes += 1;
        }
        mirror.last_post_at = at;
        store::save_mirror(&app.db, &mirror).await?;
    }
    if issue.is_resolved && settings.mirror_resolve && !mirror.resolved {
        let end = issue.end_date_time.unwrap_or(issue.last_modified_date_time);
        let fields = json!({
            "state": settings.mirror_resolved_state,
            "close_code": settings.mirror_close_code,
            "close_notes": format!(
                "The Microsoft service health incident was resolved on {}.",
                end.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        });
        if let Value::Object(fields) = fields {
            client
                .update(table, &mirror.incident_sys_id, &fields)
                .await?;
        }
        report.mirrored_resolved += 1;
        mirror.resolved = true;
        store::save_mirror(&app.db, &mirror).await?;
    }
    Ok(())
}

fn incident_fields(
    settings: &ServiceHealthSettings,
    issue: &ServiceHealthIssue,
) -> Map<String, Value> {
    let mut fields = Map::new();
    let mut put = |key: &str, value: String| {
        fields.insert(key.to_owned(), Value::String(value));
    };
    put("short_description", truncate(&issue.title, 160));
    put("description", description(issue));
    put("impact", impact(issue).to_owned());
    put("urgency", urgency(issue).to_owned());
    put(&settings.mirror_correlation_field, issue.id.clone());
    if settings.mirror_correlation_field != "correlation_display" {
        put("correlation_display", MIRROR_MARK.to_owned());
    }
    if let Some(category) = &settings.mirror_category {
        put("category", category.clone());
    }
    if let Some(group) = &settings.mirror_assignment_group {
        put("assignment_group", group.clone());
    }
    fields
}

async fn existing_notes(
    client: &ServiceNowClient,
    table: &str,
    sys_id: &str,
) -> Result<Vec<String>, SourceError> {
    let query = EncodedQuery::new()
        .eq("name", table)
        .eq("element_id", sys_id)
        .eq("element", "work_notes");
    let rows = client
        .query(
            "sys_journal_field",
            query.text().map_err(ServiceNowError::from)?,
            &["value"],
            None,
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| row.str("value").map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_posts_become_plain_text() {
        assert_eq!(
            html_to_text("Title: X<br><br>User impact: a &amp; b.<br>Now"),
            "Title: X\n\nUser impact: a & b.\nNow"
        );
        assert_eq!(html_to_text("<p>one</p><p>two</p>"), "one\n\ntwo");
        assert_eq!(html_to_text("broken <b"), "broken");
    }

    #[test]
    fn issues_map_to_events() {
        let issue: ServiceHealthIssue = serde_json::from_value(json!({
            "id": "EX1",
            "title": "Mail delays",
            "service": "Exchange Online",
            "classification": "Incident",
            "status": "ServiceDegradation",
            "lastModifiedDateTime": "2026-01-02T10:00:00.123Z",
            "isResolved": false,
            "posts": [
                {"createdDateTime": "2026-01-02T09:00:00Z", "description": {"content": "first"}},
                {"createdDateTime": "2026-01-02T10:00:00Z", "description": {"content": "<b>second</b>"}}
            ]
        }))
        .expect("issue");
        let (event, order) = event_from_issue(&issue);
        assert_eq!(event.case_key, "service_health:EX1");
        assert_eq!(event.revision, "2026-01-02T10:00:00.123Z");
        assert_eq!(order, issue.last_modified_date_time.timestamp_millis());
        assert_eq!(event.state, "serviceDegradation");
        assert_eq!(event.latest_note.as_deref(), Some("second"));
        assert_eq!(urgency(&issue), "2");
        assert_eq!(impact(&issue), "2");
    }
}
