//! Microsoft Graph emulator (`/v1.0/…`): applications (create, list with `$filter`, get,
//! patch, delete, `addPassword`, `removePassword`), service principals, organization, domains
//! and service communications (`/admin/serviceAnnouncement/issues`, `healthOverviews`), in the
//! shapes of the graph-* samples. Every call needs a bearer token issued by the Entra
//! emulator for Graph (signature, lifetime, audience and tenant are checked).
//!
//! Service-health issues change over time through [`super::SandboxHandle::advance_issue`].

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::any;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Map, Value, json};

use super::entra::{AppRegistration, Directory, GRAPH_APP_ID, GRAPH_RESOURCE, PasswordCredential};
use super::faults::{Emulator, Fault, FaultLayer};
use super::{Shared, iso_datetime, new_guid, now, query_pairs};

const SIGN_IN_AUDIENCES: &[&str] = &[
    "AzureADMyOrg",
    "AzureADMultipleOrgs",
    "AzureADandPersonalMicrosoftAccount",
    "PersonalMicrosoftAccount",
];

/// One post of a service-health issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuePost {
    /// `createdDateTime`.
    pub created: DateTime<Utc>,
    /// `postType` (`Regular`, `Quick`, `Strategic`).
    pub post_type: String,
    /// `description.content` (HTML).
    pub content: String,
}

/// A Microsoft 365 service-health issue (Graph `serviceHealthIssue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealthIssue {
    /// `id`, e.g. `EX226792`.
    pub id: String,
    /// `title`.
    pub title: String,
    /// `service`, e.g. `Exchange Online`.
    pub service: String,
    /// `feature`.
    pub feature: String,
    /// `featureGroup`.
    pub feature_group: String,
    /// `classification`: `Incident` or `Advisory`.
    pub classification: String,
    /// `origin`, e.g. `Microsoft`.
    pub origin: String,
    /// `status`, e.g. `Investigating`, `ServiceDegradation`, `ServiceRestored`.
    pub status: String,
    /// `impactDescription`.
    pub impact_description: String,
    /// `startDateTime`.
    pub start: DateTime<Utc>,
    /// `endDateTime`.
    pub end: Option<DateTime<Utc>>,
    /// `lastModifiedDateTime`.
    pub last_modified: DateTime<Utc>,
    /// `isResolved`.
    pub is_resolved: bool,
    /// `posts`, oldest first.
    pub posts: Vec<IssuePost>,
}

impl ServiceHealthIssue {
    /// A new, unresolved incident with one post.
    pub fn new(id: &str, service: &str, title: &str, status: &str, first_post: &str) -> Self {
        let at = now();
        Self {
            id: id.to_owned(),
            title: title.to_owned(),
            service: service.to_owned(),
            feature: String::new(),
            feature_group: String::new(),
            classification: "Incident".to_owned(),
            origin: "Microsoft".to_owned(),
            status: status.to_owned(),
            impact_description: title.to_owned(),
            start: at,
            end: None,
            last_modified: at,
            is_resolved: false,
            posts: vec![IssuePost {
                created: at,
                post_type: "Regular".to_owned(),
                content: first_post.to_owned(),
            }],
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "startDateTime": iso_datetime(self.start),
            "endDateTime": self.end.map(iso_datetime),
            "lastModifiedDateTime": iso_datetime(self.last_modified),
            "title": self.title,
            "id": self.id,
            "impactDescription": self.impact_description,
            "classification": self.classification,
            "origin": self.origin,
            "status": self.status,
            "service": self.service,
            "feature": self.feature,
            "featureGroup": self.feature_group,
            "isResolved": self.is_resolved,
            "details": [{"name": "NotifyInApp", "value": "True"}],
            "posts": self.posts.iter().map(|p| json!({
                "createdDateTime": iso_datetime(p.created),
                "postType": p.post_type,
                "description": {"contentType": "Html", "content": p.content},
            })).collect::<Vec<_>>(),
        })
    }
}

/// A change to a service-health issue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueAdvance {
    /// A new post (HTML or text).
    pub post: Option<String>,
    /// A new status.
    pub status: Option<String>,
    /// Resolve the issue (status `ServiceRestored` unless `status` says otherwise).
    pub resolve: bool,
}

/// The services of `healthOverviews`: `(id, service)`.
const SERVICES: &[(&str, &str)] = &[
    ("Exchange", "Exchange Online"),
    ("microsoftteams", "Microsoft Teams"),
    ("SharePoint", "SharePoint Online"),
    ("OSDPPlatform", "Microsoft 365 suite"),
    ("OrgLiveID", "Identity Service"),
];

/// Service communications state.
pub(crate) struct HealthState {
    pub(crate) issues: Vec<ServiceHealthIssue>,
}

impl HealthState {
    pub(crate) fn seed() -> Self {
        let t = now();
        let mut exchange = ServiceHealthIssue::new(
            "EX512345",
            "Exchange Online",
            "Some users may experience delays when sending or receiving email",
            "ServiceDegradation",
            "Title: Email delivery delays<br><br>User impact: Users may experience delays when sending or receiving email.<br><br>Current status: We're reviewing mail-flow telemetry to isolate the cause.",
        );
        exchange.feature = "E-Mail and calendar access".to_owned();
        exchange.feature_group = "E-Mail timely delivery".to_owned();
        exchange.impact_description =
            "Users may experience delays when sending or receiving email.".to_owned();
        exchange.start = t - ChronoDuration::hours(3);
        exchange.posts[0].created = t - ChronoDuration::hours(3);
        exchange.last_modified = t - ChronoDuration::hours(2);
        let mut teams = ServiceHealthIssue::new(
            "TM498765",
            "Microsoft Teams",
            "Users may be unable to join Teams meetings from the desktop client",
            "Investigating",
            "Title: Unable to join meetings<br><br>User impact: Users may be unable to join Teams meetings.<br><br>Current status: We're investigating a potential issue.",
        );
        teams.feature = "Teams Components".to_owned();
        teams.feature_group = "Meetings".to_owned();
        teams.start = t - ChronoDuration::minutes(90);
        teams.posts[0].created = t - ChronoDuration::minutes(90);
        teams.last_modified = t - ChronoDuration::minutes(60);
        let mut sharepoint = ServiceHealthIssue::new(
            "SP487654",
            "SharePoint Online",
            "Users couldn't access some SharePoint Online sites",
            "ServiceRestored",
            "Title: Access problems with some sites<br><br>User impact: Users couldn't access some sites.<br><br>Current status: We're deploying a fix.",
        );
        sharepoint.classification = "Advisory".to_owned();
        sharepoint.feature = "SharePoint Features".to_owned();
        sharepoint.feature_group = "Portal".to_owned();
        sharepoint.start = t - ChronoDuration::days(2);
        sharepoint.posts[0].created = t - ChronoDuration::days(2);
        sharepoint.posts.push(IssuePost {
            created: t - ChronoDuration::days(1),
            post_type: "Regular".to_owned(),
            content: "Final status: We've confirmed that the fix resolved the impact.".to_owned(),
        });
        sharepoint.is_resolved = true;
        sharepoint.end = Some(t - ChronoDuration::days(1));
        sharepoint.last_modified = t - ChronoDuration::days(1);
        Self {
            issues: vec![sharepoint, exchange, teams],
        }
    }

    pub(crate) fn add(&mut self, mut issue: ServiceHealthIssue) {
        issue.last_modified = self.next_modified(None);
        self.issues.retain(|i| i.id != issue.id);
        self.issues.push(issue);
    }

    /// A modification time after every earlier one, so watermark pollers see each change.
    fn next_modified(&self, previous: Option<DateTime<Utc>>) -> DateTime<Utc> {
        let latest = self
            .issues
            .iter()
            .map(|i| i.last_modified)
            .chain(previous)
            .max();
        let current = now();
        match latest {
            Some(latest) if latest >= current => latest + ChronoDuration::milliseconds(1),
            _ => current,
        }
    }

    pub(crate) fn advance(&mut self, id: &str, advance: IssueAdvance) -> bool {
        let Some(index) = self.issues.iter().position(|i| i.id == id) else {
            return false;
        };
        let modified = self.next_modified(None);
        let issue = &mut self.issues[index];
        if let Some(content) = advance.post {
            issue.posts.push(IssuePost {
                created: modified,
                post_type: "Regular".to_owned(),
                content,
            });
        }
        if let Some(status) = advance.status {
            issue.status = status;
        }
        if advance.resolve {
            issue.is_resolved = true;
            issue.end = Some(modified);
            if !issue.status.eq_ignore_ascii_case("serviceRestored")
                && !issue.status.eq_ignore_ascii_case("falsePositive")
                && !issue
                    .status
                    .eq_ignore_ascii_case("postIncidentReviewPublished")
            {
                issue.status = "ServiceRestored".to_owned();
            }
        }
        issue.last_modified = modified;
        true
    }
}

// ------------------------------------------------------------------------------------------
// errors and responses
// ------------------------------------------------------------------------------------------

fn request_ids(headers: &HeaderMap) -> (String, String) {
    let request_id = new_guid();
    let client = headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_owned)
        .unwrap_or_else(|| request_id.clone());
    (request_id, client)
}

fn graph_date() -> String {
    now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn with_ids(mut response: Response, request_id: &str, client_request_id: &str) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(client_request_id) {
        headers.insert("client-request-id", v);
    }
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
        ),
    );
    response
}

/// The Graph error envelope of `concepts/errors.md`.
fn error(status: StatusCode, code: &str, message: &str, headers: &HeaderMap) -> Response {
    let (request_id, client) = request_ids(headers);
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": graph_date(),
                "request-id": request_id,
                "client-request-id": client,
            }
        }
    });
    with_ids(json_response(status, &body), &request_id, &client)
}

fn denied(headers: &HeaderMap) -> Response {
    error(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
        headers,
    )
}

fn not_found(headers: &HeaderMap, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
        ),
        headers,
    )
}

fn bad_request(headers: &HeaderMap, code: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, message, headers)
}

/// The answer of an injected fault (429 in the shape of `graph-error-429.json`).
pub(crate) fn fault_response(fault: Fault, headers: &HeaderMap) -> Response {
    match fault {
        Fault::Throttle(seconds) => {
            let (request_id, client) = request_ids(headers);
            let body = json!({
                "error": {
                    "code": "TooManyRequests",
                    "innerError": {
                        "code": "429",
                        "date": graph_date(),
                        "message": "Please retry after",
                        "request-id": request_id,
                        "status": "429",
                    },
                    "message": "Please retry again later.",
                }
            });
            let mut response = with_ids(
                json_response(StatusCode::TOO_MANY_REQUESTS, &body),
                &request_id,
                &client,
            );
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Fault::ServerError(status) | Fault::HtmlError(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let code = if status == StatusCode::SERVICE_UNAVAILABLE {
                "serviceNotAvailable"
            } else {
                "generalException"
            };
            let mut response = error(
                status,
                code,
                "The service is temporarily unavailable. Please retry later.",
                headers,
            );
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            response
        }
    }
}

// ------------------------------------------------------------------------------------------
// routing
// ------------------------------------------------------------------------------------------

/// The Graph emulator's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let layer = FaultLayer {
        shared: shared.clone(),
        emulator: Emulator::Graph,
    };
    Router::new()
        .route("/v1.0/{*rest}", any(graph_api))
        .fallback(unknown_version)
        .layer(axum::middleware::from_fn_with_state(
            layer,
            super::faults::middleware,
        ))
        .with_state(shared)
}

async fn unknown_version(headers: HeaderMap) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "Invalid version: only v1.0 is emulated.",
        &headers,
    )
}

/// Audiences Graph accepts: its URI (with or without `/`), its app id, the sandbox's URL.
fn graph_audiences(shared: &Shared) -> Vec<String> {
    let sandbox = shared.urls.graph.trim_end_matches('/').to_owned();
    vec![
        GRAPH_RESOURCE.to_owned(),
        format!("{GRAPH_RESOURCE}/"),
        GRAPH_APP_ID.to_owned(),
        format!("{sandbox}/"),
        sandbox,
    ]
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
            headers,
        ));
    };
    let claims = match shared.keys.verify(token, &graph_audiences(shared)) {
        Ok(claims) => claims,
        Err(reason) => {
            return Some(error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                &format!("Access token validation failure. {reason}"),
                headers,
            ));
        }
    };
    let tenant = shared.world().dir.tenant_id.clone();
    if claims.get("tid").and_then(Value::as_str) != Some(tenant.as_str()) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid tenant.",
            headers,
        ));
    }
    // An app-only token without application permissions is refused by every endpoint.
    let app_only = claims.get("idtyp").and_then(Value::as_str) == Some("app");
    let has_roles = claims
        .get("roles")
        .and_then(Value::as_array)
        .is_some_and(|roles| !roles.is_empty());
    if app_only && !has_roles {
        return Some(denied(headers));
    }
    None
}

/// `applications/{id}` or `applications(appId='…')` → the key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppKey {
    ObjectId(String),
    AppId(String),
}

fn parse_app_segment(segments: &[String]) -> Option<(AppKey, &[String])> {
    let first = segments.first()?;
    if first == "applications" {
        let id = segments.get(1)?;
        return Some((AppKey::ObjectId(id.clone()), &segments[2..]));
    }
    let inner = first
        .strip_prefix("applications(appId=")
        .or_else(|| first.strip_prefix("applications(appid="))?
        .strip_suffix(')')?;
    let app_id = inner.trim_matches('\'').to_owned();
    Some((AppKey::AppId(app_id), &segments[1..]))
}

/// The app a key names, once replication made it visible (a new app 404s for a while).
fn find_app<'a>(dir: &'a mut Directory, key: &AppKey) -> Option<&'a mut AppRegistration> {
    let lag = dir.replication_lag;
    dir.apps.iter_mut().find(|a| {
        let matches = match key {
            AppKey::ObjectId(id) => a.object_id.eq_ignore_ascii_case(id),
            AppKey::AppId(id) => a.app_id.eq_ignore_ascii_case(id),
        };
        matches && crate::sandbox::now() - a.created >= lag
    })
}

struct Ctx<'a> {
    shared: &'a Shared,
    method: Method,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
}

impl Ctx<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        super::query_param(&self.params, name)
    }
    fn v1(&self) -> String {
        self.shared.urls.graph_v1()
    }
    fn context(&self, what: &str) -> String {
        format!("{}/$metadata#{what}", self.v1())
    }
    fn json_body(&self) -> Result<Map<String, Value>, Box<Response>> {
        if self.body.is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(Box::new(bad_request(
                &self.headers,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
            ))),
        }
    }
    fn ok(&self, status: StatusCode, body: &Value) -> Response {
        let (request_id, client) = request_ids(&self.headers);
        with_ids(json_response(status, body), &request_id, &client)
    }
    fn no_content(&self) -> Response {
        let (request_id, client) = request_ids(&self.headers);
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        with_ids(response, &request_id, &client)
    }
}

async fn graph_api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = authenticate(&shared, &headers) {
        return refusal;
    }
    let path = uri.path().strip_prefix("/v1.0/").unwrap_or("");
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    let ctx = Ctx {
        shared: &shared,
        method,
        params: query_pairs(&uri),
        headers,
        body,
    };
    dispatch(&ctx, &segments)
}

fn dispatch(ctx: &Ctx<'_>, segments: &[String]) -> Response {
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = ctx.method == Method::GET;
    let post = ctx.method == Method::POST;
    match seg.as_slice() {
        ["applications"] if get => list_applications(ctx),
        ["applications"] if post => create_application(ctx),
        ["servicePrincipals"] if get => list_service_principals(ctx),
        ["servicePrincipals"] if post => create_service_principal(ctx),
        ["servicePrincipals", id] if get => get_service_principal(ctx, id),
        ["organization"] if get => organization(ctx, None),
        ["organization", id] if get => organization(ctx, Some(id)),
        ["domains"] if get => domains(ctx, None),
        ["domains", id] if get => domains(ctx, Some(id)),
        ["roleManagement", "directory", "roleAssignments"] if get => list_role_assignments(ctx),
        ["admin", "serviceAnnouncement", "issues"] if get => list_issues(ctx),
        ["admin", "serviceAnnouncement", "issues", id] if get => get_issue(ctx, id),
        ["admin", "serviceAnnouncement", "healthOverviews"] if get => health_overviews(ctx, None),
        ["admin", "serviceAnnouncement", "healthOverviews", id] if get => {
            health_overviews(ctx, Some(id))
        }
        _ => match parse_app_segment(segments) {
            Some((key, rest)) => application_item(ctx, &key, rest),
            None => method_or_segment_error(ctx, segments),
        },
    }
}

fn method_or_segment_error(ctx: &Ctx<'_>, segments: &[String]) -> Response {
    let known = matches!(
        segments.first().map(String::as_str),
        Some("applications" | "servicePrincipals" | "organization" | "domains" | "admin")
    );
    if known {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
            &ctx.headers,
        );
    }
    let segment = segments.first().cloned().unwrap_or_default();
    bad_request(
        &ctx.headers,
        "BadRequest",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

// ------------------------------------------------------------------------------------------
// query helpers
// ------------------------------------------------------------------------------------------

/// Keeps the `$select`ed properties (and OData annotations).
fn select(ctx: &Ctx<'_>, mut item: Value) -> Value {
    let Some(fields) = ctx.param("$select") else {
        return item;
    };
    let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
    if let Value::Object(map) = &mut item {
        map.retain(|k, _| k.starts_with('@') || wanted.contains(&k.as_str()));
    }
    item
}

/// Parses `a eq 'x' and b ge 2024-01-01T00:00:00Z` into `(property, op, literal)`.
fn parse_filter(filter: &str) -> Option<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for clause in split_and(filter) {
        let clause = clause.trim();
        if let Some(inner) = clause
            .strip_prefix("startswith(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (prop, literal) = inner.split_once(',')?;
            out.push((
                prop.trim().to_owned(),
                "startswith".to_owned(),
                unquote(literal.trim())?,
            ));
            continue;
        }
        let mut parts = clause.splitn(3, ' ');
        let prop = parts.next()?.trim().to_owned();
        let op = parts.next()?.trim().to_ascii_lowercase();
        let literal = parts.next()?.trim();
        if !matches!(op.as_str(), "eq" | "ne" | "ge" | "gt" | "le" | "lt") {
            return None;
        }
        let value = if literal.starts_with('\'') {
            unquote(literal)?
        } else {
            literal.to_owned()
        };
        out.push((prop, op, value));
    }
    Some(out)
}

/// Splits on ` and ` outside quotes.
fn split_and(filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let chars: Vec<char> = filter.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            quoted = !quoted;
        }
        if !quoted {
            let rest: String = chars[i..].iter().take(5).collect();
            if rest.eq_ignore_ascii_case(" and ") {
                out.push(std::mem::take(&mut current));
                i += 5;
                continue;
            }
        }
        current.push(c);
        i += 1;
    }
    out.push(current);
    out
}

fn unquote(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// Page of a collection: `$top`/`$skip` or `Prefer: odata.maxpagesize`, with `@odata.nextLink`.
fn page(ctx: &Ctx<'_>, path: &str, context: &str, items: Vec<Value>) -> Response {
    let skip = ctx
        .param("$skip")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let preferred = ctx
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("odata.maxpagesize=")
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .map(|n| n.clamp(1, 1000));
    let top = ctx
        .param("$top")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    let size = top
        .or(preferred)
        .unwrap_or(ctx.shared.graph_page_size)
        .max(1);
    let total = items.len();
    let value: Vec<Value> = items
        .into_iter()
        .skip(skip)
        .take(size)
        .map(|item| select(ctx, item))
        .collect();
    let mut body = json!({"@odata.context": ctx.context(context)});
    if skip.saturating_add(size) < total {
        let mut query = Vec::new();
        for (k, v) in &ctx.params {
            if k != "$skip" {
                query.push(format!("{k}={}", encode_component(v)));
            }
        }
        query.push(format!("$skip={}", skip.saturating_add(size)));
        body["@odata.nextLink"] = json!(format!("{}/{path}?{}", ctx.v1(), query.join("&")));
    }
    body["value"] = Value::Array(value);
    let mut response = ctx.ok(StatusCode::OK, &body);
    if let Some(n) = preferred
        && let Ok(v) = HeaderValue::from_str(&format!("odata.maxpagesize={n}"))
    {
        response.headers_mut().insert("preference-applied", v);
    }
    response
}

fn encode_component(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

// ------------------------------------------------------------------------------------------
// applications
// ------------------------------------------------------------------------------------------

fn application_json(app: &AppRegistration, publisher_domain: &str) -> Value {
    json!({
        "id": app.object_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "createdDateTime": iso_datetime(app.created),
        "deletedDateTime": null,
        "identifierUris": app.identifier_uris,
        "publisherDomain": publisher_domain,
        "signInAudience": app.sign_in_audience,
        "api": {
            "requestedAccessTokenVersion": app.requested_access_token_version,
            "acceptMappedClaims": null,
            "knownClientApplications": [],
            "oauth2PermissionScopes": [],
            "preAuthorizedApplications": [],
        },
        "appRoles": [],
        "keyCredentials": [],
        "passwordCredentials": app.password_credentials.iter().map(|c| {
            let mut v = password_json(c);
            v["secretText"] = Value::Null;
            v
        }).collect::<Vec<_>>(),
        "requiredResourceAccess": app.required_resource_access,
        "publicClient": {"redirectUris": app.public_client_redirect_uris},
        "web": {
            "redirectUris": app.web_redirect_uris,
            "homePageUrl": null,
            "logoutUrl": null,
            "implicitGrantSettings": {
                "enableIdTokenIssuance": false,
                "enableAccessTokenIssuance": false,
            },
        },
    })
}

fn password_json(credential: &PasswordCredential) -> Value {
    json!({
        "customKeyIdentifier": null,
        "displayName": credential.display_name,
        "endDateTime": iso_datetime(credential.end),
        "hint": credential.hint,
        "keyId": credential.key_id,
        "secretText": credential.secret_text(),
        "startDateTime": iso_datetime(credential.start),
    })
}

fn app_matches(app: &AppRegistration, filters: &[(String, String, String)]) -> Option<bool> {
    for (prop, op, value) in filters {
        let actual = match prop.as_str() {
            "appId" => app.app_id.clone(),
            "id" => app.object_id.clone(),
            "displayName" => app.display_name.clone(),
            "signInAudience" => app.sign_in_audience.clone(),
            _ => return None,
        };
        let ok = match op.as_str() {
            "eq" => actual.eq_ignore_ascii_case(value),
            "ne" => !actual.eq_ignore_ascii_case(value),
            "startswith" => actual.to_lowercase().starts_with(&value.to_lowercase()),
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

fn list_applications(ctx: &Ctx<'_>) -> Response {
    let filters = match ctx.param("$filter") {
        Some(f) => match parse_filter(f) {
            Some(parsed) => parsed,
            None => {
                return bad_request(
                    &ctx.headers,
                    "Request_UnsupportedQuery",
                    "Unsupported or invalid query filter clause specified for resource 'Application'.",
                );
            }
        },
        None => Vec::new(),
    };
    let world = ctx.shared.world();
    let domain = world.dir.initial_domain();
    let mut items = Vec::new();
    for app in &world.dir.apps {
        if !world.dir.replicated(app.created) {
            continue;
        }
        match app_matches(app, &filters) {
            Some(true) => items.push(application_json(app, &domain)),
            Some(false) => {}
            None => {
                return bad_request(
                    &ctx.headers,
                    "Request_UnsupportedQuery",
                    "Unsupported or invalid query filter clause specified for property of resource 'Application'.",
                );
            }
        }
    }
    drop(world);
    page(ctx, "applications", "applications", items)
}

fn string_list(value: Option<&Value>) -> Result<Option<Vec<String>>, ()> {
    match value {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(()))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(()),
    }
}

/// Applies the writable properties of a POST or PATCH body.
fn apply_app_body(app: &mut AppRegistration, body: &Map<String, Value>) -> Result<(), String> {
    if let Some(name) = body.get("displayName") {
        match name.as_str().map(str::trim) {
            Some(n) if !n.is_empty() => app.display_name = n.to_owned(),
            _ => {
                return Err(
                    "Invalid value specified for property 'displayName' of resource 'Application'."
                        .to_owned(),
                );
            }
        }
    }
    if let Some(audience) = body.get("signInAudience") {
        match audience.as_str() {
            Some(a) if SIGN_IN_AUDIENCES.contains(&a) => app.sign_in_audience = a.to_owned(),
            _ => {
                return Err(
                    "Invalid value specified for property 'signInAudience' of resource 'Application'."
                        .to_owned(),
                );
            }
        }
    }
    if let Some(api) = body.get("api") {
        let Some(api) = api.as_object() else {
            return Err("Invalid value specified for property 'api'.".to_owned());
        };
        if let Some(version) = api.get("requestedAccessTokenVersion") {
            app.requested_access_token_version = match version {
                Value::Null => None,
                Value::Number(n) if matches!(n.as_i64(), Some(1 | 2)) => n.as_i64(),
                _ => {
                    return Err(
                        "Invalid value specified for property 'requestedAccessTokenVersion'."
                            .to_owned(),
                    );
                }
            };
        }
    }
    for (property, target) in [
        ("web", &mut app.web_redirect_uris),
        ("publicClient", &mut app.public_client_redirect_uris),
    ] {
        if let Some(section) = body.get(property) {
            let uris = section
                .as_object()
                .map(|s| string_list(s.get("redirectUris")))
                .ok_or_else(|| format!("Invalid value specified for property '{property}'."))?
                .map_err(|()| {
                    format!("Invalid value specified for property '{property}.redirectUris'.")
                })?;
            if let Some(uris) = uris {
                *target = uris;
            }
        }
    }
    if let Some(uris) = string_list(body.get("identifierUris"))
        .map_err(|()| "Invalid value specified for property 'identifierUris'.".to_owned())?
    {
        app.identifier_uris = uris;
    }
    if let Some(access) = body.get("requiredResourceAccess") {
        if !access.is_array() {
            return Err(
                "Invalid value specified for property 'requiredResourceAccess'.".to_owned(),
            );
        }
        app.required_resource_access = access.clone();
    }
    Ok(())
}

fn create_application(ctx: &Ctx<'_>) -> Response {
    let body = match ctx.json_body() {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let mut world = ctx.shared.world();
    if world.dir.graph_writes_denied {
        return denied(&ctx.headers);
    }
    if body
        .get("displayName")
        .and_then(Value::as_str)
        .is_none_or(|n| n.trim().is_empty())
    {
        return bad_request(
            &ctx.headers,
            "Request_BadRequest",
            "Invalid value specified for property 'displayName' of resource 'Application'.",
        );
    }
    let mut app = AppRegistration::new("");
    // Graph's default when no audience is given (see graph-application-create-201.json).
    app.sign_in_audience = "AzureADandPersonalMicrosoftAccount".to_owned();
    if let Err(message) = apply_app_body(&mut app, &body) {
        return bad_request(&ctx.headers, "Request_BadRequest", &message);
    }
    let explicit_version = body
        .get("api")
        .and_then(|a| a.get("requestedAccessTokenVersion"))
        .is_some();
    if !explicit_version && app.sign_in_audience.contains("Personal") {
        // Personal accounts require v2 tokens, so Entra sets 2 on such apps.
        app.requested_access_token_version = Some(2);
    }
    let domain = world.dir.initial_domain();
    let mut json = application_json(&app, &domain);
    world.dir.apps.push(app);
    drop(world);
    if let Value::Object(map) = &mut json {
        map.insert(
            "@odata.context".to_owned(),
            json!(ctx.context("applications/$entity")),
        );
    }
    let location = format!(
        "{}/applications/{}",
        ctx.v1(),
        json["id"].as_str().unwrap_or_default()
    );
    let mut response = ctx.ok(StatusCode::CREATED, &json);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn application_item(ctx: &Ctx<'_>, key: &AppKey, rest: &[String]) -> Response {
    let key_text = match key {
        AppKey::ObjectId(id) | AppKey::AppId(id) => id.clone(),
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let mut world = ctx.shared.world();
    let domain = world.dir.initial_domain();
    let writes_denied = world.dir.graph_writes_denied;
    let dir = &mut world.dir;
    match (ctx.method.clone(), rest.as_slice()) {
        (Method::GET, []) => {
            let Some(app) = find_app(dir, key) else {
                return not_found(&ctx.headers, &key_text);
            };
            let mut json = select(ctx, application_json(app, &domain));
            json["@odata.context"] = json!(ctx.context("applications/$entity"));
            ctx.ok(StatusCode::OK, &json)
        }
        (Method::PATCH, []) => {
            if writes_denied {
                return denied(&ctx.headers);
            }
            let body = match ctx.json_body() {
                Ok(body) => body,
                Err(response) => return *response,
            };
            let Some(app) = find_app(dir, key) else {
                return not_found(&ctx.headers, &key_text);
            };
            let mut updated = app.clone();
            if let Err(message) = apply_app_body(&mut updated, &body) {
                return bad_request(&ctx.headers, "Request_BadRequest", &message);
            }
            *app = updated;
            ctx.no_content()
        }
        (Method::DELETE, []) => {
            if writes_denied {
                return denied(&ctx.headers);
            }
            let Some(app) = find_app(dir, key) else {
                return not_found(&ctx.headers, &key_text);
            };
            let app_id = app.app_id.clone();
            dir.apps.retain(|a| a.app_id != app_id);
            dir.service_principals.retain(|sp| sp.app_id != app_id);
            ctx.no_content()
        }
        (Method::POST, ["addPassword"]) => {
            if writes_denied {
                return denied(&ctx.headers);
            }
            let body = match ctx.json_body() {
                Ok(body) => body,
                Err(response) => return *response,
            };
            let Some(app) = find_app(dir, key) else {
                return not_found(&ctx.headers, &key_text);
            };
            let requested = body.get("passwordCredential").and_then(Value::as_object);
            let parse_time = |name: &str| -> Result<Option<DateTime<Utc>>, ()> {
                match requested.and_then(|r| r.get(name)) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                        .map(|t| Some(t.with_timezone(&Utc)))
                        .map_err(|_| ()),
                    Some(_) => Err(()),
                }
            };
            let (Ok(start), Ok(end)) = (parse_time("startDateTime"), parse_time("endDateTime"))
            else {
                return bad_request(
                    &ctx.headers,
                    "Request_BadRequest",
                    "Invalid value specified for property 'endDateTime' of resource 'PasswordCredential'.",
                );
            };
            let start = start.unwrap_or_else(now);
            let end = end.unwrap_or(start + ChronoDuration::days(730));
            if end <= start {
                return bad_request(
                    &ctx.headers,
                    "Request_BadRequest",
                    "The endDateTime must be later than the startDateTime.",
                );
            }
            let display = requested
                .and_then(|r| r.get("displayName"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let credential = super::entra::new_password(display, start, end);
            let mut json = password_json(&credential);
            json["@odata.context"] = json!(ctx.context("microsoft.graph.passwordCredential"));
            app.password_credentials.push(credential);
            ctx.ok(StatusCode::OK, &json)
        }
        (Method::POST, ["removePassword"]) => {
            if writes_denied {
                return denied(&ctx.headers);
            }
            let body = match ctx.json_body() {
                Ok(body) => body,
                Err(response) => return *response,
            };
            let Some(app) = find_app(dir, key) else {
                return not_found(&ctx.headers, &key_text);
            };
            let Some(key_id) = body.get("keyId").and_then(Value::as_str) else {
                return bad_request(&ctx.headers, "Request_BadRequest", "keyId is required.");
            };
            let before = app.password_credentials.len();
            app.password_credentials
                .retain(|c| !c.key_id.eq_ignore_ascii_case(key_id));
            if app.password_credentials.len() == before {
                return bad_request(
                    &ctx.headers,
                    "Request_BadRequest",
                    &format!("No password credential found with keyId '{key_id}'."),
                );
            }
            ctx.no_content()
        }
        _ => {
            drop(world);
            method_or_segment_error(ctx, &["applications".to_owned()])
        }
    }
}

// ------------------------------------------------------------------------------------------
// service principals
// ------------------------------------------------------------------------------------------

fn service_principal_json(dir: &Directory, id: &str, app_id: &str) -> Value {
    let app = dir.app_by_client_id(app_id);
    let name = app.map(|a| a.display_name.clone()).unwrap_or_default();
    let mut names = vec![app_id.to_owned()];
    if let Some(app) = app {
        names.extend(app.identifier_uris.iter().cloned());
    }
    json!({
        "id": id,
        "accountEnabled": true,
        "appDisplayName": name,
        "appId": app_id,
        "appOwnerOrganizationId": dir.tenant_id,
        "appRoleAssignmentRequired": false,
        "displayName": name,
        "servicePrincipalNames": names,
        "replyUrls": app.map(|a| a.web_redirect_uris.clone()).unwrap_or_default(),
        "tags": [],
        "appRoles": [],
        "keyCredentials": [],
        "oauth2PermissionScopes": [],
        "passwordCredentials": [],
    })
}

fn list_service_principals(ctx: &Ctx<'_>) -> Response {
    let filters = match ctx.param("$filter").map(parse_filter) {
        Some(Some(f)) => f,
        Some(None) => {
            return bad_request(
                &ctx.headers,
                "Request_UnsupportedQuery",
                "Unsupported or invalid query filter clause specified for resource 'ServicePrincipal'.",
            );
        }
        None => Vec::new(),
    };
    let world = ctx.shared.world();
    let mut items = Vec::new();
    for sp in &world.dir.service_principals {
        let mut keep = true;
        for (prop, op, value) in &filters {
            let actual = match prop.as_str() {
                "appId" => sp.app_id.clone(),
                "id" => sp.id.clone(),
                _ => {
                    return bad_request(
                        &ctx.headers,
                        "Request_UnsupportedQuery",
                        "Unsupported or invalid query filter clause specified for property of resource 'ServicePrincipal'.",
                    );
                }
            };
            keep &= op == "eq" && actual.eq_ignore_ascii_case(value);
        }
        if keep {
            items.push(service_principal_json(&world.dir, &sp.id, &sp.app_id));
        }
    }
    drop(world);
    page(ctx, "servicePrincipals", "servicePrincipals", items)
}

/// Display names of the built-in Entra roles the bot cares about, by template id.
const BUILT_IN_ROLES: &[(&str, &str)] = &[
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
    (
        "f023fd81-a637-4b56-95fd-791ac0226033",
        "Service Support Administrator",
    ),
    (
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        "Helpdesk Administrator",
    ),
    ("f2ef992c-3afb-46b9-b7cf-a126ee74c451", "Global Reader"),
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator"),
];

/// `GET /roleManagement/directory/roleAssignments` (`rbacapplication-list-roleassignments.md`):
/// `$filter` on `principalId`, `roleDefinitionId`, `directoryScopeId` (eq), `$expand=roleDefinition`.
fn list_role_assignments(ctx: &Ctx<'_>) -> Response {
    let unsupported = |detail: &str| {
        bad_request(
            &ctx.headers,
            "Request_UnsupportedQuery",
            &format!(
                "Unsupported or invalid query filter clause specified for {detail} of resource 'RoleAssignment'."
            ),
        )
    };
    let filters = match ctx.param("$filter").map(parse_filter) {
        Some(Some(f)) => f,
        Some(None) => return unsupported("the filter"),
        None => Vec::new(),
    };
    let expand_definition = match ctx.param("$expand") {
        None => false,
        Some(expand) if expand.trim() == "roleDefinition" => true,
        Some(_) => {
            return bad_request(
                &ctx.headers,
                "BadRequest",
                "Only roleDefinition can be expanded in this emulator.",
            );
        }
    };
    let world = ctx.shared.world();
    if world.dir.role_reads_denied {
        return denied(&ctx.headers);
    }
    let mut items = Vec::new();
    for assignment in &world.dir.role_assignments {
        let mut keep = true;
        for (prop, op, value) in &filters {
            let actual = match prop.as_str() {
                "principalId" => &assignment.principal_id,
                "roleDefinitionId" => &assignment.role_definition_id,
                "directoryScopeId" => &assignment.directory_scope_id,
                other => return unsupported(&format!("property '{other}'")),
            };
            if op != "eq" {
                return unsupported(&format!("operator '{op}'"));
            }
            keep &= actual.eq_ignore_ascii_case(value);
        }
        if !keep {
            continue;
        }
        let mut item = json!({
            "id": assignment.id,
            "principalId": assignment.principal_id,
            "resourceScope": assignment.directory_scope_id,
            "directoryScopeId": assignment.directory_scope_id,
            "roleDefinitionId": assignment.role_definition_id,
        });
        if expand_definition {
            let name = BUILT_IN_ROLES
                .iter()
                .find(|(id, _)| id.eq_ignore_ascii_case(&assignment.role_definition_id))
                .map_or("Custom role", |(_, name)| *name);
            item["roleDefinition"] = json!({
                "id": assignment.role_definition_id,
                "templateId": assignment.role_definition_id,
                "displayName": name,
                "isBuiltIn": true,
                "isEnabled": true,
            });
        }
        items.push(item);
    }
    drop(world);
    let context = if expand_definition {
        "roleManagement/directory/roleAssignments(roleDefinition())"
    } else {
        "roleManagement/directory/roleAssignments"
    };
    page(
        ctx,
        "roleManagement/directory/roleAssignments",
        context,
        items,
    )
}

fn get_service_principal(ctx: &Ctx<'_>, id: &str) -> Response {
    let world = ctx.shared.world();
    let Some(sp) = world
        .dir
        .service_principals
        .iter()
        .find(|sp| sp.id.eq_ignore_ascii_case(id))
    else {
        return not_found(&ctx.headers, id);
    };
    let mut json = select(ctx, service_principal_json(&world.dir, &sp.id, &sp.app_id));
    json["@odata.context"] = json!(ctx.context("servicePrincipals/$entity"));
    ctx.ok(StatusCode::OK, &json)
}

fn create_service_principal(ctx: &Ctx<'_>) -> Response {
    let body = match ctx.json_body() {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let mut world = ctx.shared.world();
    let dir = &mut world.dir;
    if dir.graph_writes_denied {
        return denied(&ctx.headers);
    }
    let Some(app_id) = body.get("appId").and_then(Value::as_str) else {
        return bad_request(
            &ctx.headers,
            "Request_BadRequest",
            "The appId property is required on a service principal.",
        );
    };
    let Some(app) = dir.app_by_client_id(app_id).cloned() else {
        return bad_request(
            &ctx.headers,
            "Request_BadRequest",
            &format!(
                "The appId '{app_id}' of the service principal does not reference a valid application object."
            ),
        );
    };
    if dir
        .service_principals
        .iter()
        .any(|sp| sp.app_id.eq_ignore_ascii_case(&app.app_id))
    {
        return error(
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            "The service principal cannot be created, updated, or restored because the service principal name is already in use.",
            &ctx.headers,
        );
    }
    dir.service_principals.push(super::entra::ServicePrincipal {
        id: app.principal_id.clone(),
        app_id: app.app_id.clone(),
    });
    let mut json = service_principal_json(dir, &app.principal_id, &app.app_id);
    json["@odata.context"] = json!(ctx.context("servicePrincipals/$entity"));
    ctx.ok(StatusCode::CREATED, &json)
}

// ------------------------------------------------------------------------------------------
// organization and domains
// ------------------------------------------------------------------------------------------

fn organization(ctx: &Ctx<'_>, id: Option<&str>) -> Response {
    let world = ctx.shared.world();
    let dir = &world.dir;
    let org = json!({
        "id": dir.tenant_id,
        "displayName": dir.organization_name,
        "tenantType": "AAD",
        "verifiedDomains": dir.domains.iter().map(|(name, default, initial)| json!({
            "capabilities": "Email, OfficeCommunicationsOnline",
            "isDefault": default,
            "isInitial": initial,
            "name": name,
            "type": "Managed",
        })).collect::<Vec<_>>(),
    });
    match id {
        None => {
            let body = json!({
                "@odata.context": ctx.context("organization"),
                "value": [select(ctx, org)],
            });
            ctx.ok(StatusCode::OK, &body)
        }
        Some(id) if id.eq_ignore_ascii_case(&dir.tenant_id) => {
            let mut json = select(ctx, org);
            json["@odata.context"] = json!(ctx.context("organization/$entity"));
            ctx.ok(StatusCode::OK, &json)
        }
        Some(id) => not_found(&ctx.headers, id),
    }
}

fn domain_json(name: &str, default: bool, initial: bool) -> Value {
    json!({
        "authenticationType": "Managed",
        "availabilityStatus": null,
        "id": name,
        "isAdminManaged": true,
        "isDefault": default,
        "isInitial": initial,
        "isRoot": true,
        "isVerified": true,
        "passwordNotificationWindowInDays": 14,
        "passwordValidityPeriodInDays": 2147483647,
        "supportedServices": ["Email", "OfficeCommunicationsOnline"],
        "state": null,
    })
}

fn domains(ctx: &Ctx<'_>, id: Option<&str>) -> Response {
    let world = ctx.shared.world();
    let all: Vec<Value> = world
        .dir
        .domains
        .iter()
        .map(|(name, default, initial)| domain_json(name, *default, *initial))
        .collect();
    drop(world);
    match id {
        None => page(ctx, "domains", "domains", all),
        Some(id) => match all
            .into_iter()
            .find(|d| d["id"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(id)))
        {
            Some(mut json) => {
                json["@odata.context"] = json!(ctx.context("domains/$entity"));
                ctx.ok(StatusCode::OK, &json)
            }
            None => not_found(&ctx.headers, id),
        },
    }
}

// ------------------------------------------------------------------------------------------
// service communications
// ------------------------------------------------------------------------------------------

fn issue_matches(issue: &ServiceHealthIssue, filters: &[(String, String, String)]) -> Option<bool> {
    for (prop, op, value) in filters {
        let ok = match prop.as_str() {
            "lastModifiedDateTime" | "startDateTime" => {
                let literal = DateTime::parse_from_rfc3339(value.trim_matches('\''))
                    .ok()?
                    .with_timezone(&Utc);
                let actual = if prop == "startDateTime" {
                    issue.start
                } else {
                    issue.last_modified
                };
                match op.as_str() {
                    "ge" => actual >= literal,
                    "gt" => actual > literal,
                    "le" => actual <= literal,
                    "lt" => actual < literal,
                    "eq" => actual == literal,
                    "ne" => actual != literal,
                    _ => return None,
                }
            }
            "isResolved" => {
                let wanted = value.parse::<bool>().ok()?;
                match op.as_str() {
                    "eq" => issue.is_resolved == wanted,
                    "ne" => issue.is_resolved != wanted,
                    _ => return None,
                }
            }
            "service" | "status" | "classification" | "id" => {
                let actual = match prop.as_str() {
                    "service" => &issue.service,
                    "status" => &issue.status,
                    "classification" => &issue.classification,
                    _ => &issue.id,
                };
                match op.as_str() {
                    "eq" => actual.eq_ignore_ascii_case(value),
                    "ne" => !actual.eq_ignore_ascii_case(value),
                    _ => return None,
                }
            }
            _ => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

fn list_issues(ctx: &Ctx<'_>) -> Response {
    let filters = match ctx.param("$filter").map(parse_filter) {
        Some(Some(f)) => f,
        Some(None) => {
            return bad_request(&ctx.headers, "BadRequest", "Invalid filter clause.");
        }
        None => Vec::new(),
    };
    let world = ctx.shared.world();
    let mut issues = Vec::new();
    for issue in &world.health.issues {
        match issue_matches(issue, &filters) {
            Some(true) => issues.push(issue.clone()),
            Some(false) => {}
            None => {
                return bad_request(&ctx.headers, "BadRequest", "Invalid filter clause.");
            }
        }
    }
    drop(world);
    match ctx.param("$orderby").map(str::trim) {
        Some(o) if o.starts_with("lastModifiedDateTime") => {
            issues.sort_by_key(|i| i.last_modified);
            if o.ends_with(" desc") {
                issues.reverse();
            }
        }
        _ => {}
    }
    let items = issues.iter().map(ServiceHealthIssue::to_json).collect();
    page(
        ctx,
        "admin/serviceAnnouncement/issues",
        "admin/serviceAnnouncement/issues",
        items,
    )
}

fn get_issue(ctx: &Ctx<'_>, id: &str) -> Response {
    let world = ctx.shared.world();
    let Some(issue) = world.health.issues.iter().find(|i| i.id == id) else {
        return not_found(&ctx.headers, id);
    };
    let mut json = select(ctx, issue.to_json());
    json["@odata.context"] = json!(ctx.context("admin/serviceAnnouncement/issues/$entity"));
    ctx.ok(StatusCode::OK, &json)
}

fn health_overviews(ctx: &Ctx<'_>, id: Option<&str>) -> Response {
    let world = ctx.shared.world();
    let expand = ctx
        .param("$expand")
        .is_some_and(|e| e.split(',').any(|p| p.trim() == "issues"));
    let items: Vec<Value> = SERVICES
        .iter()
        .filter(|(sid, name)| {
            id.is_none_or(|wanted| {
                wanted.eq_ignore_ascii_case(sid) || wanted.eq_ignore_ascii_case(name)
            })
        })
        .map(|(sid, name)| {
            let open: Vec<&ServiceHealthIssue> = world
                .health
                .issues
                .iter()
                .filter(|i| i.service == *name)
                .collect();
            let status = open
                .iter()
                .filter(|i| !i.is_resolved)
                .max_by_key(|i| i.last_modified)
                .map(|i| i.status.clone())
                .or_else(|| {
                    open.iter()
                        .filter(|i| i.end.is_some_and(|e| e > now() - ChronoDuration::days(1)))
                        .max_by_key(|i| i.last_modified)
                        .map(|_| "ServiceRestored".to_owned())
                })
                .unwrap_or_else(|| "ServiceOperational".to_owned());
            let mut item = json!({"service": name, "status": status, "id": sid});
            if expand {
                item["issues"] = Value::Array(open.iter().map(|i| i.to_json()).collect());
            }
            item
        })
        .collect();
    drop(world);
    match id {
        None => page(
            ctx,
            "admin/serviceAnnouncement/healthOverviews",
            "admin/serviceAnnouncement/healthOverviews",
            items,
        ),
        Some(id) => match items.into_iter().next() {
            Some(mut item) => {
                item["@odata.context"] =
                    json!(ctx.context("admin/serviceAnnouncement/healthOverviews/$entity"));
                ctx.ok(StatusCode::OK, &item)
            }
            None => not_found(&ctx.headers, id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_with_quotes_and_and() {
        let parsed =
            parse_filter("displayName eq 'Tom''s and Jerry' and appId eq 'x'").expect("parses");
        assert_eq!(
            parsed,
            vec![
                (
                    "displayName".to_owned(),
                    "eq".to_owned(),
                    "Tom's and Jerry".to_owned()
                ),
                ("appId".to_owned(), "eq".to_owned(), "x".to_owned()),
            ]
        );
        assert!(parse_filter("appId in ('x')").is_none());
    }

    #[test]
    fn advancing_moves_last_modified_forward() {
        let mut health = HealthState::seed();
        let before = health.issues[1].last_modified;
        assert!(health.advance(
            "EX512345",
            IssueAdvance {
                post: Some("update".to_owned()),
                status: None,
                resolve: true
            }
        ));
        let issue = &health.issues[1];
        assert!(issue.last_modified > before);
        assert!(issue.is_resolved);
        assert_eq!(issue.status, "ServiceRestored");
        assert_eq!(issue.posts.len(), 2);
        assert!(!health.advance("nope", IssueAdvance::default()));
    }
}
