//! Web pages and their assets, embedded in the binary: plain JavaScript modules and CSS, no
//! bundler. Every page gets the strict CSP from `security::headers`.

use super::AppState;
use super::error::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

macro_rules! web_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/", $path))
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// (name under /static/, content type, body)
#[rustfmt::skip]
const ASSETS: &[(&str, &str, &str)] = &[
    ("parley.css", CSS, web_file!("shared/parley.css")),
    ("api.js", JS, web_file!("shared/api.js")),
    ("ui.js", JS, web_file!("shared/ui.js")),
    ("docs.js", JS, web_file!("shared/docs.js")),
    ("icon.svg", "image/svg+xml", web_file!("shared/icon.svg")),
    ("admin.js", JS, web_file!("admin/admin.js")),
    ("console.js", JS, web_file!("console/console.js")),
    ("console.css", CSS, web_file!("console/console.css")),
    ("widget-app.js", JS, web_file!("widget/app.js")),
    ("widget.css", CSS, web_file!("widget/widget.css")),
];

const OPENAPI: &str = include_str!("openapi.json");

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// The loader script websites embed. It is loaded cross-origin by design.
pub async fn widget_loader() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                "cross-origin",
            ),
        ],
        web_file!("widget/loader.js"),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct FrameQuery {
    site: String,
}

/// The widget's iframe page. Only the site's allowed origins may frame it (CSP frame-ancestors);
/// a request whose Referer names another origin is refused outright.
pub async fn widget_frame(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    q: Result<Query<FrameQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return not_found().await;
    };
    if q.site.len() > 128 {
        return not_found().await;
    }
    let origins = match s.app.widget_origins(&q.site).await {
        Ok(o) => o,
        Err(_) => return not_found().await,
    };
    let referrer_origin = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| {
            let (scheme, rest) = r.split_once("://")?;
            let host = rest.split(['/', '?', '#']).next()?;
            Some(format!("{scheme}://{host}").to_ascii_lowercase())
        });
    let own = s.settings.public_url.clone().or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("http://{h}"))
    });
    if let Some(r) = &referrer_origin
        && !origins.contains(r)
        && Some(r) != own.as_ref()
    {
        return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "This site may not embed the chat. Add its origin in the admin panel (Site, allowed website origins).")
            .into_response();
    }
    let ancestors = if origins.is_empty() {
        "'none'".to_owned()
    } else {
        origins.join(" ")
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'none'; base-uri 'none'; frame-ancestors {ancestors}"
    );
    let mut res = html(web_file!("widget/frame.html"));
    if let Ok(v) = header::HeaderValue::from_str(&csp) {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

pub async fn favicon() -> Redirect {
    Redirect::permanent("/static/icon.svg")
}

pub async fn index() -> Redirect {
    Redirect::to("/console")
}

pub async fn admin() -> Response {
    html(web_file!("admin/index.html"))
}

pub async fn console() -> Response {
    html(web_file!("console/index.html"))
}

pub async fn api_docs() -> Response {
    html(web_file!("shared/docs.html"))
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, body)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found().into_response(),
    }
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        web_file!("shared/404.html"),
    )
        .into_response()
}

/// The demo customer page: a shop on another origin with the one-line embed.
pub fn demo_page(parley_base: &str, site_key: &str) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    web_file!("widget/demo.html")
        .replace("{{PARLEY}}", &escape(parley_base))
        .replace("{{SITE_KEY}}", &escape(site_key))
}
