//! Security headers on every response, the Origin check and the CSRF token.

use super::error::ApiError;
use super::{AppState, HttpSettings};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Strict by default: only our own scripts, styles and connections; no framing, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let is_api = req.uri().path().starts_with("/api/");
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        set(h, "content-security-policy", CSP);
    }
    set(h, "x-content-type-options", "nosniff");
    // The widget's frame sets its own frame-ancestors; every other answer may not be framed.
    let framable = h
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|csp| {
            csp.contains("frame-ancestors") && !csp.contains("frame-ancestors 'none'")
        });
    if !framable {
        set(h, "x-frame-options", "DENY");
    }
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key("cross-origin-resource-policy") {
        set(h, "cross-origin-resource-policy", "same-origin");
    }
    set(
        h,
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    );
    if is_api || !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    if state.settings.https() {
        set(
            h,
            "strict-transport-security",
            "max-age=31536000; includeSubDomains",
        );
    }
    // Paths hold ids only; bodies, cookies and query strings are never logged.
    tracing::info!(%method, %path, status = res.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
    res
}

/// For state-changing requests: a browser's `Origin` (or, without it, `Sec-Fetch-Site`) must say
/// the request comes from our own pages.
pub fn check_origin(headers: &HeaderMap, settings: &HttpSettings) -> Result<(), ApiError> {
    let deny = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_origin",
            "cross-site requests are not allowed",
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| deny())?;
        let expected = match &settings.public_url {
            Some(u) => u.clone(),
            None => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .ok_or_else(deny)?;
                format!("http://{host}")
            }
        };
        return if origin.eq_ignore_ascii_case(&expected) {
            Ok(())
        } else {
            Err(deny())
        };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some("cross-site") | Some("same-site") => Err(deny()),
        // No Origin and no fetch metadata: not a modern browser's cross-site request (API clients).
        _ => Ok(()),
    }
}

/// The CSRF token of a session: derived from the session token, so nothing more is stored.
pub fn csrf_token(session_token: &str) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_token.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"parley-csrf-v1");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

pub fn csrf_matches(session_token: &str, sent: &str) -> bool {
    let expected = csrf_token(session_token);
    expected.len() == sent.len() && bool::from(expected.as_bytes().ct_eq(sent.as_bytes()))
}

/// The `Set-Cookie` value for a new session, or for clearing it (`token` = None).
pub fn session_cookie(settings: &HttpSettings, token: Option<&str>) -> String {
    let secure = if settings.https() { "; Secure" } else { "" };
    match token {
        Some(t) => format!(
            "{}={t}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            settings.cookie_name(),
            parley_app::SESSION_ABSOLUTE_MS / 1000
        ),
        None => format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            settings.cookie_name()
        ),
    }
}
