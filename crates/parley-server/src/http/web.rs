//! Web pages and their assets, embedded in the binary: plain JavaScript modules and CSS, no
//! bundler. Every page gets the strict CSP from `security::headers`.

use super::error::ApiError;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

macro_rules! web_file {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/", $path))
    };
}

/// (name under /static/, content type, body)
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "parley.css",
        "text/css; charset=utf-8",
        web_file!("shared/parley.css"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        web_file!("shared/api.js"),
    ),
    (
        "ui.js",
        "text/javascript; charset=utf-8",
        web_file!("shared/ui.js"),
    ),
    (
        "admin.js",
        "text/javascript; charset=utf-8",
        web_file!("admin/admin.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        web_file!("console/console.js"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        web_file!("shared/docs.js"),
    ),
];

const OPENAPI: &str = include_str!("openapi.json");

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
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
