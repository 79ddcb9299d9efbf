//! The ServiceNow poller: reads the case table with a `sys_updated_on` watermark (`sys_id`
//! breaks ties), turns each changed record into a [`CaseEvent`] with
//! `revision = sys_mod_count`, and backs up the push so that a missed push is still delivered.
//! It checks every configured column through `sys_dictionary` first, so a query part
//! ServiceNow would silently ignore becomes an error; short (ACL-filtered) pages do not stop
//! it because the client follows `Link rel="next"`.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use url::Url;

use super::{PollReport, ServiceNowSourceSettings, SourceError, accept_event, store};
use crate::app::App;
use crate::notify::event::{CaseEvent, EventSource};
use crate::upstream::servicenow::{
    DisplayValue, EncodedQuery, ListOptions, Operator, Record, ServiceNowClient, format_datetime,
    parse_datetime,
};

/// Most rows read by one request while many rows share one `sys_updated_on`.
const MAX_BATCH: usize = 10_000;

/// The watermark key of the poller of `table`.
pub fn source_id(table: &str) -> String {
    format!("servicenow:{table}")
}

/// The case key of a record.
pub fn case_key(table: &str, sys_id: &str) -> String {
    format!("servicenow:{table}:{sys_id}")
}

/// The link to a record's form.
pub fn record_url(instance: Option<&Url>, table: &str, sys_id: &str) -> Option<String> {
    let base = instance?.as_str().trim_end_matches('/');
    Some(format!(
        "{base}/nav_to.do?uri={table}.do%3Fsys_id%3D{sys_id}"
    ))
}

/// Why a record cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

/// Turns a record (database values, or `{display_value, value}` pairs) into an event and the
/// sort order of its revision (`sys_mod_count`).
pub fn event_from_record(
    settings: &ServiceNowSourceSettings,
    instance: Option<&Url>,
    record: &Record,
    note: Option<String>,
) -> Result<(CaseEvent, i64), MappingError> {
    let table = settings.table.as_str();
    let sys_id = record
        .sys_id()
        .filter(|id| is_sys_id(id))
        .ok_or_else(|| MappingError("sys_id is missing or not a sys_id".to_owned()))?;
    let mod_count = record
        .i64("sys_mod_count")
        .filter(|count| *count >= 0)
        .ok_or_else(|| MappingError("sys_mod_count is missing or not a number".to_owned()))?;
    let updated_at = record.datetime("sys_updated_on").ok_or_else(|| {
        MappingError("sys_updated_on is missing or not YYYY-MM-DD HH:MM:SS".to_owned())
    })?;
    let shown = |field: &str| -> Option<String> {
        if field.is_empty() {
            return None;
        }
        record
            .display_value(field)
            .or_else(|| record.str(field))
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| truncate(text, 400))
    };
    let state_value = record.str(&settings.state_field).unwrap_or_default();
    let resolved = settings.resolved_states.iter().any(|s| s == state_value)
        || record.bool("active") == Some(false);
    let event = CaseEvent {
        source: EventSource::ServiceNow,
        case_key: case_key(table, sys_id),
        revision: mod_count.to_string(),
        number: shown(&settings.number_field).unwrap_or_else(|| sys_id.to_owned()),
        title: shown(&settings.title_field).unwrap_or_default(),
        state: shown(&settings.state_field).unwrap_or_default(),
        previous_state: None,
        priority: shown(&settings.priority_field),
        service: shown(&settings.service_field),
        assignment_group: shown(&settings.assignment_group_field),
        microsoft_case: record
            .str(&settings.case_reference_field)
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| truncate(text, 200)),
        url: record_url(instance, table, sys_id),
        latest_note: note
            .map(|text| truncate(text.trim(), 2000))
            .filter(|t| !t.is_empty()),
        resolved,
        updated_at,
    };
    Ok((event, mod_count))
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

/// True for a 32-character hexadecimal sys_id.
pub fn is_sys_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The field names an encoded query names (column names are lowercase, operators uppercase),
/// for
/// [`ServiceNowClient::ensure_fields`]. `^NQ` is refused: the poller appends its own terms.
pub fn filter_fields(filter: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    for term in filter.split('^') {
        let term = term.trim();
        if term.is_empty() || term == "EQ" {
            continue;
        }
        if term.starts_with("NQ") {
            return Err("^NQ (a second query) is not allowed in the case filter".to_owned());
        }
        let body = term
            .strip_prefix("ORDERBYDESC")
            .or_else(|| term.strip_prefix("ORDERBY"))
            .or_else(|| term.strip_prefix("OR"))
            .unwrap_or(term);
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '.')
            .collect();
        if name.is_empty() {
            return Err(format!(
                "cannot read a field name in the filter term {term:?}"
            ));
        }
        if !fields.contains(&name) {
            fields.push(name);
        }
    }
    Ok(fields)
}

/// The latest journal entry (of `elements`) written at or after `since`, if the bot may read
/// `sys_journal_field`; failures are logged and yield `None`.
pub async fn latest_note(
    client: &ServiceNowClient,
    table: &str,
    sys_id: &str,
    elements: &[String],
    since: DateTime<Utc>,
) -> Option<String> {
    if elements.is_empty() {
        return None;
    }
    let names: Vec<&str> = elements.iter().map(String::as_str).collect();
    let query = EncodedQuery::new()
        .eq("name", table)
        .eq("element_id", sys_id)
        .is_in("element", &names)
        .and("sys_created_on", Operator::Ge, &format_datetime(since))
        .order_by_desc("sys_created_on");
    let Ok(text) = query.text() else {
        tracing::debug!("a case's journal cannot be looked up by its identifiers; no note relayed");
        return None;
    };
    match client
        .query("sys_journal_field", text, &["value"], Some(1))
        .await
    {
        Ok(rows) => rows
            .first()
            .and_then(|row| row.non_empty("value"))
            .map(str::to_owned),
        Err(err) => {
            tracing::debug!(error = %err, "cannot read the journal of a case; no note relayed");
            None
        }
    }
}

/// Polls the case table once: every record changed after the watermark becomes an event.
pub async fn poll_once(app: &App) -> Result<PollReport, SourceError> {
    let settings = &app.settings.notifications.sources.servicenow;
    let client = app.runtime.client().map_err(|why| {
        SourceError::NotConfigured(format!(
            "the ServiceNow poller reads cases as the integration user: {why}"
        ))
    })?;
    let client = &client;
    let table = settings.table.as_str();
    let filter = settings.filter();
    let mut named = filter_fields(&filter).map_err(SourceError::NotConfigured)?;
    let fields = settings.fields();
    named.extend(fields.iter().cloned());
    let named_refs: Vec<&str> = named.iter().map(String::as_str).collect();
    client.ensure_fields(table, &named_refs).await?;

    let source = source_id(table);
    let mut cursor = match store::watermark(&app.db, &source).await? {
        Some(mark) => mark,
        None => store::Watermark {
            watermark: format_datetime(
                Utc::now() - ChronoDuration::seconds(clamp_secs(settings.look_back_secs)),
            ),
            last_key: String::new(),
        },
    };
    let instance = app.settings.servicenow.instance_url.as_ref();
    let mut report = PollReport::default();
    let mut batch = settings.batch_size.clamp(1, MAX_BATCH);
    let overlap = ChronoDuration::seconds(clamp_secs(settings.overlap_secs));
    loop {
        // Re-read a short overlap: a record committed late, or in the watermark's second
        // after the last poll, is still found; rows already known are skipped below.
        let lower = parse_datetime(&cursor.watermark)
            .map(|at| format_datetime(at - overlap))
            .unwrap_or_else(|| cursor.watermark.clone());
        let query = format!(
            "{filter}^sys_updated_on>={}^ORDERBYsys_updated_on^ORDERBYsys_id",
            lower.replace('^', "^^")
        );
        let options = ListOptions {
            query,
            fields: fields.clone(),
            limit: Some(batch),
            page_size: Some(batch),
            display_value: DisplayValue::All,
            include_reference_links: false,
        };
        let rows = client.list(table, &options).await?;
        let full = rows.len() >= batch;
        report.fetched += rows.len();
        let mut progressed = false;
        for row in &rows {
            let updated = row.str("sys_updated_on").unwrap_or_default().to_owned();
            let sys_id = row.str("sys_id").unwrap_or_default().to_owned();
            if (updated.as_str(), sys_id.as_str())
                <= (cursor.watermark.as_str(), cursor.last_key.as_str())
            {
                if !is_known(app, settings, row).await? {
                    handle_row(app, client, settings, instance, row, &mut report).await?;
                } else {
                    report.skipped += 1;
                }
                continue;
            }
            handle_row(app, client, settings, instance, row, &mut report).await?;
            cursor = store::Watermark {
                watermark: updated,
                last_key: sys_id,
            };
            store::set_watermark(&app.db, &source, &cursor).await?;
            progressed = true;
        }
        if !full {
            break;
        }
        if !progressed {
            // A full batch of rows all at or before the cursor: many rows share one
            // sys_updated_on. Read a bigger batch to get past them.
            if batch >= MAX_BATCH {
                return Err(SourceError::NotConfigured(format!(
                    "more than {MAX_BATCH} records of {table} share sys_updated_on {}; the poller cannot get past them",
                    cursor.watermark
                )));
            }
            batch = (batch * 2).min(MAX_BATCH);
        }
    }
    report.watermark = Some(cursor.watermark);
    Ok(report)
}

/// True when the record's revision (or a later one) was handled before.
async fn is_known(
    app: &App,
    settings: &ServiceNowSourceSettings,
    row: &Record,
) -> Result<bool, SourceError> {
    let (Some(sys_id), Some(mod_count)) = (row.str("sys_id"), row.i64("sys_mod_count")) else {
        return Ok(true);
    };
    let known = store::case_state(&app.db, &case_key(&settings.table, sys_id)).await?;
    Ok(known.is_some_and(|state| state.revision_order >= mod_count)
        || super::is_mirror_record(app, row).await?)
}

async fn handle_row(
    app: &App,
    client: &ServiceNowClient,
    settings: &ServiceNowSourceSettings,
    instance: Option<&Url>,
    row: &Record,
    report: &mut PollReport,
) -> Result<(), SourceError> {
    let sys_id = row.str("sys_id").unwrap_or_default();
    if super::is_mirror_record(app, row).await? {
        // The bot's own service-health mirror: the service-health event covers it.
        report.skipped += 1;
        return Ok(());
    }
    let note = match row.datetime("sys_updated_on") {
        Some(at) if is_sys_id(sys_id) => {
            latest_note(client, &settings.table, sys_id, &settings.note_elements, at).await
        }
        _ => None,
    };
    match event_from_record(settings, instance, row, note) {
        Ok((event, order)) => {
            let accepted = accept_event(app, event, order).await?;
            report.count(accepted);
        }
        Err(err) => {
            tracing::warn!(table = %settings.table, sys_id, error = %err, "case record skipped");
            report.skipped += 1;
        }
    }
    Ok(())
}

fn clamp_secs(secs: u64) -> i64 {
    i64::try_from(secs.min(10 * 365 * 24 * 3600)).unwrap_or(0)
}

/// Parses a ServiceNow date/time (re-exported for the push parser).
pub fn parse_sn_datetime(text: &str) -> Option<DateTime<Utc>> {
    parse_datetime(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: serde_json::Value) -> Record {
        serde_json::from_value(value).expect("record")
    }

    #[test]
    fn a_record_in_display_all_shape_maps_to_an_event() {
        let settings = ServiceNowSourceSettings::default();
        let instance = Url::parse("https://dev1.service-now.com/").ok();
        let r = record(json!({
            "sys_id": {"value": "a9e30c7dc61122760116894de7bcc7bd", "display_value": "a9e30c7dc61122760116894de7bcc7bd"},
            "sys_mod_count": {"value": "4", "display_value": "4"},
            "sys_updated_on": {"value": "2026-01-02 10:00:00", "display_value": "02/01/2026 11:00:00"},
            "number": {"value": "INC0010001", "display_value": "INC0010001"},
            "short_description": {"value": "Mail down", "display_value": "Mail down"},
            "state": {"value": "6", "display_value": "Resolved"},
            "priority": {"value": "1", "display_value": "1 - Critical"},
            "assignment_group": {"value": "x", "display_value": "Service Desk"},
            "correlation_id": {"value": "2502170040001234", "display_value": "2502170040001234"},
            "active": {"value": "false", "display_value": "false"}
        }));
        let (event, order) =
            event_from_record(&settings, instance.as_ref(), &r, Some("note".to_owned()))
                .expect("maps");
        assert_eq!(order, 4);
        assert_eq!(event.revision, "4");
        assert_eq!(
            event.case_key,
            "servicenow:incident:a9e30c7dc61122760116894de7bcc7bd"
        );
        assert_eq!(event.state, "Resolved");
        assert!(event.resolved);
        assert_eq!(event.priority.as_deref(), Some("1 - Critical"));
        assert_eq!(event.assignment_group.as_deref(), Some("Service Desk"));
        assert_eq!(event.microsoft_case.as_deref(), Some("2502170040001234"));
        assert_eq!(event.latest_note.as_deref(), Some("note"));
        assert_eq!(
            event.updated_at,
            parse_datetime("2026-01-02 10:00:00").expect("time")
        );
        assert!(
            event
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://dev1.service-now.com/nav_to.do"))
        );
    }

    #[test]
    fn records_without_the_dedupe_fields_are_refused() {
        let settings = ServiceNowSourceSettings::default();
        let missing = record(
            json!({"sys_id": "a9e30c7dc61122760116894de7bcc7bd", "sys_updated_on": "2026-01-02 10:00:00"}),
        );
        assert!(event_from_record(&settings, None, &missing, None).is_err());
        let bad_id = record(
            json!({"sys_id": "../x", "sys_mod_count": "1", "sys_updated_on": "2026-01-02 10:00:00"}),
        );
        assert!(event_from_record(&settings, None, &bad_id, None).is_err());
    }

    #[test]
    fn filter_fields_are_extracted_and_nq_refused() {
        assert_eq!(
            filter_fields("correlation_idISNOTEMPTY^ORcaller_id.name=x^active=true").expect("ok"),
            vec!["correlation_id", "caller_id.name", "active"]
        );
        assert!(filter_fields("a=1^NQb=2").is_err());
        assert!(filter_fields("=1").is_err());
    }
}
