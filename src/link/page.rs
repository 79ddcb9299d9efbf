//! The browser side of the sign-in: `/auth/link/start` and `/auth/link/callback`, and the small
//! HTML page that says what happened and to return to the chat. The pages are never cached and
//! send no referrer (the callback URL carries the code).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::deliver::deliver;
use super::flow::{self, CallbackParams, Outcome};
use crate::app::App;

/// How the page looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageTone {
    /// It worked.
    Success,
    /// It did not.
    Error,
}

/// A result page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// HTTP status.
    pub status: u16,
    /// Look.
    pub tone: PageTone,
    /// Heading.
    pub title: String,
    /// What happened.
    pub message: String,
    /// What to do now.
    pub next_step: String,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

impl Page {
    /// The page as HTML.
    pub fn html(&self) -> String {
        let (color, mark) = match self.tone {
            PageTone::Success => ("#107c10", "&#10003;"),
            PageTone::Error => ("#a4262c", "&#9888;"),
        };
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} - m365bot</title></head>\
             <body style=\"font-family:Segoe UI,system-ui,sans-serif;max-width:36em;margin:4em auto;padding:0 1em;color:#242424\">\
             <h1 style=\"color:{color};font-size:1.5em\">{mark} {title}</h1>\
             <p id=\"message\">{message}</p>\
             <p id=\"next\"><strong>{next}</strong></p>\
             <p style=\"color:#616161;font-size:.85em\">m365bot account linking</p>\
             </body></html>",
            title = escape_html(&self.title),
            message = escape_html(&self.message),
            next = escape_html(&self.next_step),
        )
    }

    /// The page as a `no-store` response.
    pub fn response(&self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, axum::response::Html(self.html())).into_response();
        no_store(&mut response);
        response
    }
}

/// Marks a response as never cached, sending no referrer, loading nothing else.
pub fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
}

/// The first value of each query parameter (malformed input yields no value, never an error).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

async fn answer(app: &App, outcome: Outcome) -> Response {
    if let Some((address, reply)) = &outcome.chat
        && let Err(err) = deliver(app, address, reply).await
    {
        tracing::warn!(error = %err, "account linking result not delivered to the chat");
    }
    outcome.page.response()
}

/// `GET /auth/link/start?state=…`: redirects to the Entra ID sign-in.
pub async fn start(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let state = query_value(query.as_deref(), "state");
    match flow::start(&app, state.as_deref()).await {
        Ok(url) => {
            let mut response = StatusCode::FOUND.into_response();
            match HeaderValue::from_str(url.as_str()) {
                Ok(location) => {
                    response.headers_mut().insert(header::LOCATION, location);
                    no_store(&mut response);
                    response
                }
                Err(_) => Page {
                    status: 500,
                    tone: PageTone::Error,
                    title: "The sign-in could not start".to_owned(),
                    message: "The sign-in address is not valid.".to_owned(),
                    next_step: "Return to the chat and tell the bot's operator.".to_owned(),
                }
                .response(),
            }
        }
        Err(outcome) => answer(&app, outcome).await,
    }
}

/// `GET /auth/link/callback?code=…&state=…` (or `error=…`): completes the sign-in.
pub async fn callback(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let query = query.as_deref();
    let params = CallbackParams {
        state: query_value(query, "state"),
        code: query_value(query, "code"),
        error: query_value(query, "error"),
        error_description: query_value(query, "error_description"),
    };
    // A Reveal sign-in of a completed setup comes back here too (same sign-in app).
    if let Some(state) = params.state.as_deref()
        && crate::setup::reveal::owns_state(&app, state).await
    {
        return crate::setup::reveal::callback(&app, state, &params).await;
    }
    let outcome = flow::callback(&app, &params).await;
    answer(&app, outcome).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        let page = Page {
            status: 400,
            tone: PageTone::Error,
            title: "<script>".to_owned(),
            message: "a & \"b\"".to_owned(),
            next_step: "go".to_owned(),
        };
        let html = page.html();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("a &amp; &quot;b&quot;"), "{html}");
        assert!(!html.contains("<script>"));
    }
}
