//! Request extractors: JSON bodies with our error mapping, the client IP, and the signed-in caller
//! (session cookie, plus Origin and CSRF checks on every state-changing request).

use super::error::ApiError;
use super::{AppState, security};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use parley_app::Session;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;

/// A JSON body. Malformed JSON is 400 `malformed_json`; a well-formed body of the wrong shape
/// (missing or unknown field, wrong type) is 422 `invalid_body`; no JSON content type is 415; a
/// body over the limit is 413 `payload_too_large`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => {
            // serde's message names the field and the expectation, never server internals.
            let text = e.body_text();
            let detail = text
                .split_once(": ")
                .map(|(_, d)| d)
                .unwrap_or(&text)
                .to_owned();
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is not valid JSON (UTF-8)",
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", super::MAX_BODY_BYTES),
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the body could not be read",
        ),
    }
}

/// The client's IP: the peer address, or the last `X-Forwarded-For` hop when the node is
/// configured to trust its proxy.
#[derive(Debug, Clone)]
pub struct ClientIp(pub Option<String>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.settings.trust_proxy
            && let Some(hop) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(str::trim)
                .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        {
            return Ok(ClientIp(Some(hop.to_owned())));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(ClientIp(peer))
    }
}

impl ClientIp {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// The session token from the cookie, if any.
pub fn session_token(parts: &Parts, cookie_name: &str) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == cookie_name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// A signed-in caller. State-changing methods must also pass the Origin check and carry the
/// session's CSRF token in `X-CSRF-Token`.
pub struct Caller {
    pub session: Session,
    pub token: String,
    pub ip: ClientIp,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = ClientIp::from_request_parts(parts, state).await?;
        let token = session_token(parts, state.settings.cookie_name()).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "sign in first")
        })?;
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            security::check_origin(&parts.headers, &state.settings)?;
            let sent = parts
                .headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !security::csrf_matches(&token, sent) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf_failed",
                    "missing or wrong X-CSRF-Token header; reload the page",
                ));
            }
        }
        let session = state
            .app
            .authenticate(&token)
            .await
            .map_err(ApiError::from)?;
        Ok(Caller { session, token, ip })
    }
}

/// Parse an id from the path; anything malformed is simply not found.
pub fn path_id<T: std::str::FromStr>(raw: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found())
}

/// Reject an over-long input field before any work is spent on it (Argon2 over a megabyte is a
/// denial of service): 422 `too_long`.
pub fn bounded(field: &'static str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError {
            field: Some(field),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_long",
                format!("{field}: at most {max} bytes"),
            )
        });
    }
    Ok(())
}

/// Query parameters; malformed ones are 400 `invalid_query` with serde's explanation.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => {
                let text = e.body_text();
                let detail = text
                    .split_once(": ")
                    .map(|(_, d)| d)
                    .unwrap_or(&text)
                    .to_owned();
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    detail,
                ))
            }
        }
    }
}
