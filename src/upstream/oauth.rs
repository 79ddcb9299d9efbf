//! OAuth 2.0 token requests on the `oauth2` crate, sent through the bot's own `reqwest` client
//! (its timeouts, extra CA and no-redirect policy), and the token answer that Entra ID (v1 and
//! v2), ServiceNow `/oauth_token.do` and the Bot Framework token endpoint share.
//!
//! The `oauth2` error types keep the OAuth error body but drop the HTTP status and headers;
//! [`TokenHttp`] keeps the answer it handed over, so that [`TokenHttp::finish`] can pair a
//! refusal with its status and `Retry-After` for the typed errors of each upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use oauth2::basic::{
    BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ErrorResponse,
    HttpRequest, HttpResponse, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    SyncHttpClient, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::retry::RetryPolicy;
use super::{DecodeError, NetworkError, RawResponse, decode_raw};

/// An `oauth2` client of one token endpoint (client credentials), with error body `TE`.
pub type TokenEndpointClient<TE> = oauth2::Client<
    TE,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// An `oauth2` client with an authorization and a token endpoint (authorization code + PKCE).
pub type AuthorizationCodeClient<TE> = oauth2::Client<
    TE,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A client for `token_url` that sends its credentials in the form body (`client_id`,
/// `client_secret`), as Entra ID, ServiceNow and the Bot Framework token endpoint accept them.
pub fn token_client<TE>(
    client_id: &str,
    client_secret: &SecretString,
    token_url: Url,
) -> TokenEndpointClient<TE>
where
    TE: ErrorResponse + 'static,
{
    oauth2::Client::new(ClientId::new(client_id.to_owned()))
        .set_client_secret(ClientSecret::new(client_secret.expose_secret().to_owned()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::from_url(token_url))
}

/// A token answer: the standard fields, plus what Entra ID adds (`expires_on`, `resource`,
/// `id_token`). Lifetimes are read from numbers or from strings (Entra v1 sends
/// `"expires_in": "3599"`).
#[derive(Debug, Deserialize, Serialize)]
pub struct TokenAnswer {
    access_token: oauth2::AccessToken,
    #[serde(default = "bearer")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "super::lenient_seconds_opt")]
    expires_in: Option<u64>,
    /// When the token expires, in seconds since the epoch (Entra v1).
    #[serde(default, deserialize_with = "super::lenient_seconds_opt")]
    pub expires_on: Option<u64>,
    /// The resource the token is for (Entra v1).
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(
        rename = "scope",
        default,
        deserialize_with = "oauth2::helpers::deserialize_space_delimited_vec",
        serialize_with = "oauth2::helpers::serialize_space_delimited_vec"
    )]
    scopes: Option<Vec<Scope>>,
    /// The ID token (a JWT still to validate), when `openid` was requested.
    #[serde(default, skip_serializing)]
    pub id_token: Option<SecretString>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl TokenAnswer {
    /// The bearer token as a secret.
    pub fn secret(&self) -> SecretString {
        SecretString::from(self.access_token.secret().as_str())
    }

    /// The granted scopes, space-separated as sent.
    pub fn scope(&self) -> Option<String> {
        self.scopes.as_ref().map(|scopes| {
            scopes
                .iter()
                .map(|scope| scope.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    /// `expires_in` in seconds, when given.
    pub fn expires_in_seconds(&self) -> Option<u64> {
        self.expires_in
    }

    /// The refresh token, when `offline_access` was granted.
    pub fn refresh_secret(&self) -> Option<SecretString> {
        self.refresh_token
            .as_ref()
            .map(|token| SecretString::from(token.secret().as_str()))
    }

    /// The token type as sent (`Bearer`).
    pub fn token_type_name(&self) -> String {
        match &self.token_type {
            BasicTokenType::Bearer => "Bearer".to_owned(),
            BasicTokenType::Mac => "MAC".to_owned(),
            BasicTokenType::Extension(other) => other.clone(),
        }
    }
}

impl TokenResponse for TokenAnswer {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &oauth2::AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.map(Duration::from_secs)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

/// Why a token request gave no token.
#[derive(Debug)]
pub enum TokenFailure<TE> {
    /// No complete answer (refused, timed out, cut).
    Network(NetworkError),
    /// The endpoint refused with its OAuth error body.
    Refused {
        /// The error body.
        error: TE,
        /// The answer as read.
        answer: Box<RawResponse>,
    },
    /// An answer that is neither a token nor an OAuth error body (an HTML page, truncated or
    /// wrongly shaped JSON, another content type).
    Unreadable {
        /// The answer as read.
        answer: Box<RawResponse>,
        /// What was wrong, without values of the body.
        detail: String,
    },
    /// The request could not be built.
    Invalid(String),
}

/// Why a success answer is not a token: the decoder's reading (an HTML page, a cut or
/// oversized body, a wrong shape; values of the body never quoted), else `detail`.
pub fn unreadable_token(answer: &RawResponse, detail: String) -> DecodeError {
    decode_raw::<TokenAnswer>(answer, true)
        .err()
        .unwrap_or(DecodeError::Shape { detail })
}

enum Transport {
    Network(reqwest::Client, Option<RetryPolicy>),
    Replay(RawResponse),
}

/// The `oauth2` HTTP client: sends over the bot's `reqwest` client (or replays one recorded
/// answer, for samples), reading bodies with the limits of [`super::send`], and keeps the answer.
pub struct TokenHttp {
    transport: Transport,
    answer: Mutex<Option<RawResponse>>,
}

impl TokenHttp {
    /// Sends through `http` (a clone shares its connection pool).
    pub fn new(http: &reqwest::Client) -> Self {
        Self {
            transport: Transport::Network(http.clone(), None),
            answer: Mutex::new(None),
        }
    }

    /// Sends through `http`; a throttled answer (429, 503) is retried under `policy`.
    pub fn with_retry(http: &reqwest::Client, policy: RetryPolicy) -> Self {
        Self {
            transport: Transport::Network(http.clone(), Some(policy)),
            answer: Mutex::new(None),
        }
    }

    /// Answers every request with `answer` (a recorded wire sample); nothing is sent.
    pub fn replay(answer: RawResponse) -> Self {
        Self {
            transport: Transport::Replay(answer),
            answer: Mutex::new(None),
        }
    }

    fn keep(&self, raw: RawResponse) -> Result<HttpResponse, NetworkError> {
        let status = StatusCode::from_u16(raw.status)
            .map_err(|_| NetworkError(format!("invalid HTTP status {}", raw.status)))?;
        let mut response = HttpResponse::new(raw.body.clone());
        *response.status_mut() = status;
        *response.headers_mut() = raw.headers.clone();
        *self.answer.lock().unwrap_or_else(PoisonError::into_inner) = Some(raw);
        Ok(response)
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, NetworkError> {
        let raw = match &self.transport {
            Transport::Network(http, policy) => {
                let request = reqwest::Request::try_from(request)
                    .map_err(|err| NetworkError::from_reqwest(&err))?;
                match policy {
                    None => {
                        super::send(reqwest::RequestBuilder::from_parts(http.clone(), request))
                            .await?
                    }
                    Some(policy) => {
                        super::retry::with_retry(*policy, || async {
                            let attempt = request.try_clone().ok_or_else(|| {
                                NetworkError("the token request cannot be sent again".to_owned())
                            })?;
                            super::send(reqwest::RequestBuilder::from_parts(http.clone(), attempt))
                                .await
                        })
                        .await?
                    }
                }
            }
            Transport::Replay(raw) => raw.clone(),
        };
        self.keep(raw)
    }

    /// Pairs the outcome of a token request made with this client with the answer it read.
    pub fn finish<T, TE>(
        self,
        result: Result<T, RequestTokenError<NetworkError, TE>>,
    ) -> Result<T, TokenFailure<TE>>
    where
        TE: ErrorResponse,
    {
        let err = match result {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let answer = self
            .answer
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        Err(match (err, answer) {
            (RequestTokenError::Request(err), _) => TokenFailure::Network(err),
            (RequestTokenError::ServerResponse(error), Some(answer)) => TokenFailure::Refused {
                error,
                answer: Box::new(answer),
            },
            (RequestTokenError::Parse(err, _), Some(answer)) => TokenFailure::Unreadable {
                answer: Box::new(answer),
                detail: format!(
                    "the JSON does not have the expected shape at `{}`",
                    err.path()
                ),
            },
            (RequestTokenError::Other(detail), Some(answer)) => TokenFailure::Unreadable {
                answer: Box::new(answer),
                detail,
            },
            (RequestTokenError::ServerResponse(_) | RequestTokenError::Parse(..), None) => {
                TokenFailure::Invalid("no answer was read".to_owned())
            }
            (RequestTokenError::Other(detail), None) => TokenFailure::Invalid(detail),
        })
    }
}

impl<'c> AsyncHttpClient<'c> for TokenHttp {
    type Error = NetworkError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, NetworkError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

impl SyncHttpClient for TokenHttp {
    type Error = NetworkError;

    fn call(&self, _request: HttpRequest) -> Result<HttpResponse, NetworkError> {
        match &self.transport {
            Transport::Replay(raw) => self.keep(raw.clone()),
            Transport::Network(..) => Err(NetworkError(
                "a blocking token request is not supported".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Result<TokenAnswer, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn lifetimes_come_as_numbers_or_strings() {
        let v2 = answer(r#"{"access_token":"a","token_type":"Bearer","expires_in":3599}"#).unwrap();
        assert_eq!(v2.expires_in(), Some(Duration::from_secs(3599)));
        let v1 = answer(
            r#"{"access_token":"a","token_type":"Bearer","expires_in":"3599","expires_on":"1388452167"}"#,
        )
        .unwrap();
        assert_eq!(v1.expires_in(), Some(Duration::from_secs(3599)));
        assert_eq!(v1.expires_on, Some(1_388_452_167));
        let none = answer(r#"{"access_token":"a","expires_in":null}"#).unwrap();
        assert_eq!(none.expires_in(), None);
        assert_eq!(none.token_type_name(), "Bearer");
        assert!(answer(r#"{"access_token":"a","expires_in":"soon"}"#).is_err());
        assert!(answer(r#"{"access_token":"a","expires_in":-1}"#).is_err());
        assert!(answer(r#"{"token_type":"Bearer"}"#).is_err());
    }

    #[test]
    fn scopes_are_split_and_joined_and_secrets_stay_out_of_debug() {
        let token = answer(
            r#"{"access_token":"tok-secret","scope":"openid profile","refresh_token":"ref-secret","id_token":"id-secret"}"#,
        )
        .unwrap();
        assert_eq!(token.scopes().map(Vec::len), Some(2));
        assert_eq!(token.scope().as_deref(), Some("openid profile"));
        let debug = format!("{token:?}");
        for secret in ["tok-secret", "ref-secret", "id-secret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
