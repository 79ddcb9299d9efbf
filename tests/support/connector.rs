//! Fake Bot Connector and outbound token endpoint, on one loopback port.
//!
//! [`FakeConnector::start`] serves:
//! - `POST /v3/conversations/{id}/activities` (send), `POST|PUT|DELETE
//!   /v3/conversations/{id}/activities/{activityId}` (reply, update, delete) and
//!   `POST /v3/conversations` (create conversation), answering `{"id": …}` with generated ids;
//! - `POST /token`, a client-credentials token endpoint that checks the form against
//!   [`TEST_APP_ID`](super::TEST_APP_ID) / [`TEST_APP_PASSWORD`] and issues a unique token each
//!   time (a wrong secret gets the real AADSTS7000215 answer from `tests/fixtures`).
//!
//! Every request is recorded (method, raw path, decoded ids, headers, JSON body). Responses can
//! be scripted: [`FakeConnector::push_response`] queues answers that the next connector requests
//! get instead of the default one, [`FakeConnector::push_token_response`] the same for `/token`.
//! A request carrying a bearer token the fake did not issue (or has revoked) gets a 401.
//!
//! Settings pointing the bot at the fake: [`connector_settings_toml`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The client secret the fake token endpoint accepts.
pub const TEST_APP_PASSWORD: &str = "test-secret";

/// The AADSTS7000215 (invalid client secret) answer body, as Entra ID sends it.
pub fn invalid_secret_body() -> Value {
    let sample: Value = serde_json::from_str(include_str!(
        "../fixtures/entra-token-error-7000215-invalid-secret.json"
    ))
    .expect("fixture is JSON");
    sample["response"]["body"].clone()
}

/// The `[bot]` settings (TOML) that point the bot's outbound calls at `fake`: the test identity,
/// the fake's token URL, and `127.0.0.1` as the only allowed serviceUrl host.
pub fn connector_settings_toml(fake: &FakeConnector) -> String {
    format!(
        "[bot]\napp_id = \"{}\"\napp_password = \"{TEST_APP_PASSWORD}\"\ntenant_id = \"{}\"\n\
         outbound_token_url = \"{}\"\nallowed_service_url_hosts = [\"127.0.0.1\"]\n",
        super::TEST_APP_ID,
        super::TEST_TENANT_ID,
        fake.token_url()
    )
}

/// One request the fake connector received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `POST`, `PUT` or `DELETE`.
    pub method: String,
    /// The path as sent, still percent-encoded.
    pub path: String,
    /// The conversation id, percent-decoded (`None` for create conversation).
    pub conversation_id: Option<String>,
    /// The activity id, percent-decoded (`None` for send and create conversation).
    pub activity_id: Option<String>,
    /// Every header, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The `Authorization` header, if any.
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    /// The token of a `Bearer` authorization, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.authorization()?.strip_prefix("Bearer ")
    }
}

/// One request the fake token endpoint received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The decoded form fields (includes the client secret: test data only).
    pub form: HashMap<String, String>,
}

impl TokenRequest {
    /// A form field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.get(name).map(String::as_str)
    }
}

/// An answer the fake gives instead of its default one.
#[derive(Debug, Clone)]
pub struct ScriptedResponse {
    /// HTTP status.
    pub status: u16,
    /// Extra headers, e.g. `("retry-after", "2")`.
    pub headers: Vec<(String, String)>,
    /// Body sent as is.
    pub body: String,
    /// Content type of `body`.
    pub content_type: String,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Append the request's `Authorization` header to the body (to prove it is never repeated
    /// in errors).
    pub echo_authorization: bool,
}

impl ScriptedResponse {
    /// A status with an empty JSON object body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: "{}".to_owned(),
            content_type: "application/json".to_owned(),
            delay: None,
            echo_authorization: false,
        }
    }

    /// A status with a JSON body.
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            body: body.to_string(),
            ..Self::status(status)
        }
    }

    /// A status with the Teams error shape `{"error":{"code","message"}}`.
    pub fn teams_error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, json!({"error": {"code": code, "message": message}}))
    }

    /// A status with a raw body of the given content type (e.g. an HTML error page).
    pub fn raw(status: u16, content_type: &str, body: &str) -> Self {
        Self {
            body: body.to_owned(),
            content_type: content_type.to_owned(),
            ..Self::status(status)
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers only after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Appends the request's `Authorization` header to the body.
    pub fn echoing_authorization(mut self) -> Self {
        self.echo_authorization = true;
        self
    }

    async fn into_response(self, authorization: Option<&str>) -> Response {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let mut body = self.body;
        if self.echo_authorization {
            body.push_str(authorization.unwrap_or_default());
        }
        let status = StatusCode::from_u16(self.status).expect("valid scripted status");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&self.content_type) {
            headers.insert(axum::http::header::CONTENT_TYPE, value);
        }
        for (name, value) in self.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
                HeaderValue::from_str(&value).expect("valid header value"),
            );
        }
        response
    }
}

#[derive(Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    script: VecDeque<ScriptedResponse>,
    token_requests: Vec<TokenRequest>,
    token_script: VecDeque<ScriptedResponse>,
    issued: Vec<String>,
    revoked: usize,
    token_expires_in: Option<Value>,
    token_delay: Option<Duration>,
    require_auth: bool,
    members: HashMap<String, Value>,
    member_requests: usize,
}

struct FakeState {
    inner: Mutex<Inner>,
    counter: AtomicU64,
}

impl FakeState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The fake Bot Connector + token endpoint; stopped when dropped.
pub struct FakeConnector {
    addr: SocketAddr,
    state: Arc<FakeState>,
    shutdown: CancellationToken,
}

impl FakeConnector {
    /// Starts the fake on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> Self {
        let state = Arc::new(FakeState {
            inner: Mutex::new(Inner::default()),
            counter: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/token", post(token))
            .route("/v3/conversations", post(create_conversation))
            .route(
                "/v3/conversations/{conversation_id}/members/{member_id}",
                axum::routing::get(get_member),
            )
            .route(
                "/v3/conversations/{conversation_id}/activities",
                post(send_activity),
            )
            .route(
                "/v3/conversations/{conversation_id}/activities/{activity_id}",
                post(activity_op).put(activity_op).delete(activity_op),
            )
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake connector");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self {
            addr,
            state,
            shutdown,
        }
    }

    /// The serviceUrl to put in activities: `http://127.0.0.1:PORT/`.
    pub fn service_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// The client-credentials token endpoint: `http://127.0.0.1:PORT/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every connector request so far (not token requests), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().requests.clone()
    }

    /// Waits (up to `timeout`) until at least `count` connector requests arrived, then returns
    /// them all; panics on timeout.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {count} connector requests within {timeout:?}, got {}",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every token request so far, accepted or not.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.lock().token_requests.clone()
    }

    /// The tokens issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().issued.clone()
    }

    /// How many tokens were issued.
    pub fn token_issue_count(&self) -> usize {
        self.state.lock().issued.len()
    }

    /// Queues an answer for the next connector request (FIFO; the default answer resumes when
    /// the queue is empty).
    pub fn push_response(&self, response: ScriptedResponse) {
        self.state.lock().script.push_back(response);
    }

    /// Queues a failure for the next connector request: `status`, with `Retry-After` when given,
    /// and a Teams error body.
    pub fn fail_next(&self, status: u16, retry_after_secs: Option<u64>) {
        let code = match status {
            429 => "Throttled",
            412 => "PreconditionFailed",
            401 => "Unauthorized",
            _ => "ServiceError",
        };
        let mut response = ScriptedResponse::teams_error(status, code, "scripted failure");
        if let Some(seconds) = retry_after_secs {
            response = response.with_header("retry-after", &seconds.to_string());
        }
        self.push_response(response);
    }

    /// Queues a 403 `BotNotInConversationRoster` (the bot was removed) for the next request.
    pub fn fail_next_bot_removed(&self) {
        self.push_response(ScriptedResponse::teams_error(
            403,
            "BotNotInConversationRoster",
            "The bot is not part of the conversation roster.",
        ));
    }

    /// Queues an answer for the next token request.
    pub fn push_token_response(&self, response: ScriptedResponse) {
        self.state.lock().token_script.push_back(response);
    }

    /// The `expires_in` of issued tokens (a number or a string; default `3600`).
    pub fn set_token_expires_in(&self, expires_in: Value) {
        self.state.lock().token_expires_in = Some(expires_in);
    }

    /// Makes the token endpoint wait this long before answering.
    pub fn set_token_delay(&self, delay: Duration) {
        self.state.lock().token_delay = Some(delay);
    }

    /// Makes every token issued so far invalid: requests carrying one get a 401.
    pub fn revoke_tokens(&self) {
        let mut inner = self.state.lock();
        inner.revoked = inner.issued.len();
    }

    /// When true, requests without an `Authorization` header get a 401 (default: accepted, as
    /// the Agents Playground does).
    pub fn set_require_auth(&self, require: bool) {
        self.state.lock().require_auth = require;
    }
}

impl FakeConnector {
    /// Makes `GET …/members/{id}` answer with a Teams member: `email` is both the e-mail and
    /// the UPN. Unknown members get 404 `MemberNotFoundInConversation`.
    pub fn add_member(&self, user_id: &str, name: &str, email: &str, aad_object_id: &str) {
        self.state.lock().members.insert(
            user_id.to_owned(),
            json!({
                "id": user_id,
                "name": name,
                "aadObjectId": aad_object_id,
                "email": email,
                "userPrincipalName": email,
                "givenName": name.split(' ').next().unwrap_or(name),
                "surname": name.split(' ').nth(1).unwrap_or(""),
                "tenantId": super::TEST_TENANT_ID,
                "userRole": "user"
            }),
        );
    }

    /// How many member look-ups arrived.
    pub fn member_request_count(&self) -> usize {
        self.state.lock().member_requests
    }
}

async fn get_member(
    State(state): State<Arc<FakeState>>,
    Path((_conversation_id, member_id)): Path<(String, String)>,
) -> Response {
    let mut inner = state.lock();
    inner.member_requests += 1;
    match inner.members.get(&member_id) {
        Some(member) => axum::Json(member.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"code": "MemberNotFoundInConversation",
                "message": "The member is not part of the conversation."}})),
        )
            .into_response(),
    }
}

impl Drop for FakeConnector {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn token(State(state): State<Arc<FakeState>>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (scripted, delay, expires_in) = {
        let mut inner = state.lock();
        inner
            .token_requests
            .push(TokenRequest { form: form.clone() });
        (
            inner.token_script.pop_front(),
            inner.token_delay,
            inner.token_expires_in.clone(),
        )
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(scripted) = scripted {
        return scripted.into_response(None).await;
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return entra_error(
            400,
            "unsupported_grant_type",
            70003,
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != super::TEST_APP_ID {
        return entra_error(
            400,
            "unauthorized_client",
            700016,
            "AADSTS700016: Application with identifier was not found in the directory.",
        );
    }
    if field("client_secret") != TEST_APP_PASSWORD {
        return (StatusCode::UNAUTHORIZED, axum::Json(invalid_secret_body())).into_response();
    }
    if field("scope").is_empty() {
        return entra_error(
            400,
            "invalid_scope",
            70011,
            "AADSTS70011: The provided value for the input parameter 'scope' isn't valid.",
        );
    }
    let token = format!("fake-bot-token-{}", state.next());
    state.lock().issued.push(token.clone());
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": expires_in.unwrap_or_else(|| json!(3600)),
        "ext_expires_in": 3600,
        "access_token": token,
    }))
    .into_response()
}

fn entra_error(status: u16, error: &str, code: i64, description: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("valid status");
    let body = json!({
        "error": error,
        "error_description": format!("{description}\r\nTrace ID: 00000000-0000-0000-0000-000000000000"),
        "error_codes": [code],
    });
    (status, axum::Json(body)).into_response()
}

struct Incoming {
    method: Method,
    path: String,
    conversation_id: Option<String>,
    activity_id: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

/// Records the request, checks its token, and returns the scripted answer if one is queued.
async fn receive(state: &FakeState, incoming: Incoming) -> Result<RecordedRequest, Response> {
    let recorded = RecordedRequest {
        method: incoming.method.to_string(),
        path: incoming.path,
        conversation_id: incoming.conversation_id,
        activity_id: incoming.activity_id,
        headers: incoming
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&incoming.body).unwrap_or(Value::Null),
    };
    let authorization = recorded.authorization().map(str::to_owned);
    let scripted = {
        let mut inner = state.lock();
        inner.requests.push(recorded.clone());
        let token_ok = match recorded.bearer() {
            Some(token) => inner
                .issued
                .iter()
                .skip(inner.revoked)
                .any(|issued| issued == token),
            None => authorization.is_none() && !inner.require_auth,
        };
        if token_ok {
            inner.script.pop_front()
        } else {
            Some(ScriptedResponse::teams_error(
                401,
                "Unauthorized",
                "Authorization has been denied for this request.",
            ))
        }
    };
    match scripted {
        Some(scripted) => Err(scripted.into_response(authorization.as_deref()).await),
        None => Ok(recorded),
    }
}

fn activity_id(state: &FakeState) -> String {
    (1_700_000_000_000u64 + state.next()).to_string()
}

async fn send_activity(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        path: uri.path().to_owned(),
        conversation_id: Some(conversation_id),
        activity_id: None,
        headers,
        body,
    };
    match receive(&state, incoming).await {
        Ok(_) => axum::Json(json!({"id": activity_id(&state)})).into_response(),
        Err(response) => response,
    }
}

async fn activity_op(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    Path((conversation_id, activity)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method: method.clone(),
        path: uri.path().to_owned(),
        conversation_id: Some(conversation_id),
        activity_id: Some(activity.clone()),
        headers,
        body,
    };
    match receive(&state, incoming).await {
        Ok(_) if method == Method::PUT => axum::Json(json!({"id": activity})).into_response(),
        Ok(_) if method == Method::DELETE => StatusCode::OK.into_response(),
        Ok(_) => axum::Json(json!({"id": activity_id(&state)})).into_response(),
        Err(response) => response,
    }
}

async fn create_conversation(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        path: uri.path().to_owned(),
        conversation_id: None,
        activity_id: None,
        headers,
        body,
    };
    let request = match receive(&state, incoming).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let n = state.next();
    let channel = request.body["channelData"]["channel"]["id"].as_str();
    let mut answer = match channel {
        Some(channel) if request.body["isGroup"] == json!(true) => {
            json!({"id": format!("{channel};messageid={}", 1_700_000_000_000u64 + n)})
        }
        _ => json!({"id": format!("a:fake-conversation-{n}")}),
    };
    if request.body.get("activity").is_some() {
        answer["activityId"] = json!(activity_id(&state));
    }
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}
