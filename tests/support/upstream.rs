//! A scriptable upstream fake on 127.0.0.1: canned responses by method, path and query
//! substrings, served in order (the last one repeats), and every request recorded.
//! Canned responses can come straight from the wire samples in
//! `tests/fixtures/samples/servicenow-entra-graph/`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The HTTP client the tests hand to the upstream clients: plain, with a 10 s timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The samples folder.
pub fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples/servicenow-entra-graph")
}

/// A sample file as JSON.
pub fn sample(name: &str) -> Value {
    let path = samples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{name}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// One canned answer.
#[derive(Debug, Clone)]
pub struct Canned {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Canned {
    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: serde_json::to_vec(body).expect("json"),
        }
    }

    /// A raw answer with a content type.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.into(),
        }
    }

    /// The `response` of a sample file (status, headers, body), or `response_at` a JSON
    /// pointer for samples with several examples.
    pub fn sample(name: &str) -> Self {
        Self::sample_at(name, "/response")
    }

    /// The response object at `pointer` inside a sample file.
    pub fn sample_at(name: &str, pointer: &str) -> Self {
        let file = sample(name);
        let response = file
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{name}: no {pointer}"));
        let status = response
            .get("status")
            .and_then(Value::as_u64)
            .map_or(200, |status| u16::try_from(status).expect("status"));
        let mut canned = Self::json(status, &response["body"]);
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            canned.headers.clear();
            for (name, value) in headers {
                canned.headers.push((
                    name.to_ascii_lowercase(),
                    value.as_str().expect("header text").to_owned(),
                ));
            }
            if !canned
                .headers
                .iter()
                .any(|(name, _)| name == "content-type")
            {
                canned
                    .headers
                    .push(("content-type".to_owned(), "application/json".to_owned()));
            }
        }
        canned
    }

    /// Adds or replaces a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(known, _)| *known != name);
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body text.
    pub body: String,
}

impl Recorded {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Decoded query pairs.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// One decoded query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Decoded form pairs of the body.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    /// One decoded form field.
    pub fn form_param(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

struct Route {
    method: String,
    path: String,
    query_contains: Vec<String>,
    responses: VecDeque<Canned>,
}

#[derive(Default)]
struct Inner {
    routes: Vec<Route>,
    requests: Vec<Recorded>,
}

/// The fake server; stopped when dropped.
pub struct Fake {
    /// `http://127.0.0.1:port/`.
    pub base: url::Url,
    inner: Arc<Mutex<Inner>>,
    shutdown: CancellationToken,
}

impl Fake {
    /// Starts an empty fake on an ephemeral loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().fallback(handle).with_state(inner.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Self {
            base: url::Url::parse(&format!("http://{addr}/")).expect("url"),
            inner,
            shutdown,
        }
    }

    /// `base` joined with `path` (no leading slash needed).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.base.as_str().trim_end_matches('/'),
            if path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            }
        )
    }

    /// Serves `responses` in order (the last repeats) for `method path` when the decoded
    /// query contains every string of `query_contains`. Earlier routes win.
    pub fn on(&self, method: &str, path: &str, query_contains: &[&str], responses: Vec<Canned>) {
        let mut inner = self.inner.lock().expect("lock");
        inner.routes.push(Route {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query_contains: query_contains.iter().map(|s| (*s).to_owned()).collect(),
            responses: responses.into(),
        });
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().expect("lock").requests.clone()
    }

    /// Requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1024 * 1024)
        .await
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let decoded_query: String = url::form_urlencoded::parse(recorded.query.as_bytes())
        .map(|(key, value)| format!("{key}={value}&"))
        .collect();
    let mut inner = inner.lock().expect("lock");
    let canned = inner
        .routes
        .iter_mut()
        .find(|route| {
            route.method == recorded.method
                && route.path == recorded.path
                && route
                    .query_contains
                    .iter()
                    .all(|needle| decoded_query.contains(needle.as_str()))
        })
        .and_then(|route| {
            if route.responses.len() > 1 {
                route.responses.pop_front()
            } else {
                route.responses.front().cloned()
            }
        });
    inner.requests.push(recorded);
    drop(inner);
    let Some(canned) = canned else {
        return Response::builder()
            .status(StatusCode::NOT_IMPLEMENTED)
            .body(Body::from("no fake route"))
            .expect("response");
    };
    let mut response = Response::builder()
        .status(StatusCode::from_u16(canned.status).expect("status"))
        .body(Body::from(canned.body))
        .expect("response");
    for (name, value) in canned.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
