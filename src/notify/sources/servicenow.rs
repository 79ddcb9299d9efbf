//! The ServiceNow poller: reads the case table with a `sys_updated_on` watermark (`sys_id`
//! breaks ties), turns each changed record into a [`CaseEvent`] with
//! `revision = sys_mod_count`, and backs up the push so that a missed push is still delivered.
//! It checks every configured column through `sys_dictionary` first, so a query part
//! ServiceNow would silently ignore becomes an error; short (ACL-filtered) pages do not stop
//! it because the client follows `Link rel="next"`.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use url::Url;

use std::collections::{HashMap, HashSet};

use super::{PollReport, ServiceNowSourceSettings, SourceError, accept_page, store};
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
        let before = cursor.clone();
        handle_page(
            app,
            client,
            settings,
            instance,
            &rows,
            &mut cursor,
            &mut report,
        )
        .await?;
        let progressed = cursor != before;
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

/// Handles one page of changed records: the rows after `cursor` (which moves past them), and
/// the rows of the re-read overlap whose revision is not known yet. The known revisions, the
/// service-health mirrors and the journal notes are looked up for the whole page at once, and
/// the page's events are recorded with the new `cursor` in one transaction.
async fn handle_page(
    app: &App,
    client: &ServiceNowClient,
    settings: &ServiceNowSourceSettings,
    instance: Option<&Url>,
    rows: &[Record],
    cursor: &mut store::Watermark,
    report: &mut PollReport,
) -> Result<(), SourceError> {
    let table = settings.table.as_str();
    let start = cursor.clone();
    // Rows after the cursor, and the overlap rows (at or before it) to check.
    let mut wanted: Vec<(&Record, bool)> = Vec::with_capacity(rows.len());
    for row in rows {
        let updated = row.str("sys_updated_on").unwrap_or_default();
        let sys_id = row.str("sys_id").unwrap_or_default();
        let after = (updated, sys_id) > (cursor.watermark.as_str(), cursor.last_key.as_str());
        if after {
            *cursor = store::Watermark {
                watermark: updated.to_owned(),
                last_key: sys_id.to_owned(),
            };
        }
        wanted.push((row, after));
    }
    let overlap_keys: Vec<String> = wanted
        .iter()
        .filter(|(_, after)| !after)
        .filter_map(|(row, _)| row.str("sys_id").map(|id| case_key(table, id)))
        .collect();
    let overlap_refs: Vec<&str> = overlap_keys.iter().map(String::as_str).collect();
    let known = store::case_states(&app.db, &overlap_refs).await?;
    let mirrors = PageMirrors::load(app, rows).await?;
    // A row of the overlap is skipped when its revision (or a later one) was handled before,
    // or it cannot be checked (no sys_id or sys_mod_count).
    let mut handled: Vec<&Record> = Vec::with_capacity(wanted.len());
    for (row, after) in wanted {
        if !after {
            let seen = match (row.str("sys_id"), row.i64("sys_mod_count")) {
                (Some(sys_id), Some(mod_count)) => known
                    .get(&case_key(table, sys_id))
                    .is_some_and(|state| state.revision_order >= mod_count),
                _ => true,
            };
            if seen || mirrors.contains(app, row) {
                report.skipped += 1;
                continue;
            }
        } else if mirrors.contains(app, row) {
            // The bot's own service-health mirror: the service-health event covers it.
            report.skipped += 1;
            continue;
        }
        handled.push(row);
    }
    let changed: Vec<(&str, DateTime<Utc>)> = handled
        .iter()
        .filter_map(|row| {
            let sys_id = row.str("sys_id").filter(|id| is_sys_id(id))?;
            Some((sys_id, row.datetime("sys_updated_on")?))
        })
        .collect();
    let mut notes = latest_notes(client, table, &changed, &settings.note_elements).await;
    let mut events = Vec::with_capacity(handled.len());
    for row in handled {
        let sys_id = row.str("sys_id").unwrap_or_default();
        let note = notes.remove(sys_id);
        match event_from_record(settings, instance, row, note) {
            Ok(event) => events.push(event),
            Err(err) => {
                tracing::warn!(table = %settings.table, sys_id, error = %err, "case record skipped");
                report.skipped += 1;
            }
        }
    }
    if events.is_empty() && *cursor == start {
        return Ok(());
    }
    for accepted in accept_page(app, &events, &source_id(table), cursor).await? {
        report.count(accepted);
    }
    Ok(())
}

/// Which rows of a page are the bot's own service-health mirrors (see
/// [`super::is_mirror_record`]), looked up for the whole page at once.
#[derive(Default)]
struct PageMirrors {
    sys_ids: HashSet<String>,
    references: HashSet<String>,
}

impl PageMirrors {
    async fn load(app: &App, rows: &[Record]) -> Result<Self, sqlx::Error> {
        let health = &app.settings.notifications.sources.service_health;
        if health.mirror_table != app.settings.notifications.sources.servicenow.table {
            return Ok(Self::default());
        }
        let sys_ids: Vec<&str> = rows.iter().filter_map(|row| row.sys_id()).collect();
        let references: Vec<&str> = rows
            .iter()
            .filter_map(|row| row.non_empty(&health.mirror_correlation_field))
            .map(str::trim)
            .collect();
        let (sys_ids, references) = store::mirror_matches(&app.db, &sys_ids, &references).await?;
        Ok(Self {
            sys_ids: sys_ids.into_iter().collect(),
            references: references.into_iter().collect(),
        })
    }

    fn contains(&self, app: &App, row: &Record) -> bool {
        let health = &app.settings.notifications.sources.service_health;
        row.sys_id().is_some_and(|id| self.sys_ids.contains(id))
            || row
                .non_empty(&health.mirror_correlation_field)
                .is_some_and(|value| self.references.contains(value.trim()))
    }
}

/// Records whose journal is read by one request.
const NOTE_CHUNK: usize = 50;
/// Journal entries read per record of a chunk before falling back to one request per record.
const NOTES_PER_RECORD: usize = 10;

/// The latest journal entry (of `elements`) of each of `changed` (sys_id, changed at) written
/// at or after its change, as [`latest_note`] gives it, read with one request per
/// [`NOTE_CHUNK`] records; a record whose entries the request could not all return is looked
/// up on its own. Failures are logged and yield no note.
pub async fn latest_notes(
    client: &ServiceNowClient,
    table: &str,
    changed: &[(&str, DateTime<Utc>)],
    elements: &[String],
) -> HashMap<String, String> {
    let mut notes = HashMap::new();
    if elements.is_empty() {
        return notes;
    }
    let names: Vec<&str> = elements.iter().map(String::as_str).collect();
    for chunk in changed.chunks(NOTE_CHUNK) {
        let Some(since) = chunk.iter().map(|(_, at)| *at).min() else {
            continue;
        };
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| *id).collect();
        let query = EncodedQuery::new()
            .eq("name", table)
            .is_in("element_id", &ids)
            .is_in("element", &names)
            .and("sys_created_on", Operator::Ge, &format_datetime(since))
            .order_by_desc("sys_created_on");
        let Ok(text) = query.text() else {
            tracing::debug!(
                "cases' journals cannot be looked up by their identifiers; no notes relayed"
            );
            continue;
        };
        let limit = chunk.len() * NOTES_PER_RECORD;
        let entries = match client
            .query(
                "sys_journal_field",
                text,
                &["element_id", "sys_created_on", "value"],
                Some(limit),
            )
            .await
        {
            Ok(entries) => entries,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the journal of cases; no notes relayed");
                continue;
            }
        };
        let complete = entries.len() < limit;
        let changed_at: HashMap<&str, DateTime<Utc>> = chunk.iter().copied().collect();
        // Newest first: the first entry of a record at or after its change is its latest.
        let mut decided: HashSet<&str> = HashSet::new();
        for entry in &entries {
            let Some((sys_id, at)) = entry
                .str("element_id")
                .and_then(|id| changed_at.get_key_value(id))
            else {
                continue;
            };
            if decided.contains(sys_id) || entry.datetime("sys_created_on").is_none_or(|c| c < *at)
            {
                continue;
            }
            decided.insert(sys_id);
            if let Some(value) = entry.non_empty("value") {
                notes.insert((*sys_id).to_owned(), value.to_owned());
            }
        }
        if !complete {
            for (sys_id, at) in chunk.iter().filter(|(id, _)| !decided.contains(id)) {
                if let Some(note) = latest_note(client, table, sys_id, elements, *at).await {
                    notes.insert((*sys_id).to_owned(), note);
                }
            }
        }
    }
    notes
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
