//! The HTTP server: REST API under `/api`, the admin panel and console pages, health endpoints.

mod api;
mod chat_api;
mod error;
mod extract;
mod security;
mod web;
pub mod ws;

pub use error::ApiError;
pub use web::demo_page;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post, put};
use parley_app::App;
use std::sync::Arc;

/// Largest request body accepted anywhere (the API takes small JSON documents).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared by every request of a node.
#[derive(Clone)]
pub struct AppState {
    pub app: App,
    pub settings: Arc<HttpSettings>,
    pub sockets: Arc<ws::SocketLimits>,
}

impl AppState {
    pub fn new(app: App, settings: HttpSettings) -> Self {
        AppState {
            app,
            settings: Arc::new(settings),
            sockets: Arc::new(ws::SocketLimits::default()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `https://host` or `http://host:port` when known; used for Origin checks and cookies.
    pub public_url: Option<String>,
    pub trust_proxy: bool,
}

impl HttpSettings {
    pub fn https(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
    pub fn cookie_name(&self) -> &'static str {
        if self.https() {
            "__Host-parley_session"
        } else {
            "parley_session"
        }
    }
}

/// Every route of the node. `/api/openapi.json` documents the API part; a test checks that each
/// API route here is documented there and vice versa.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/auth/sign-in", post(api::sign_in))
        .route("/auth/sign-out", post(api::sign_out))
        .route("/auth/session", get(api::session))
        .route("/auth/password", post(api::change_password))
        .route("/site", get(api::get_site).patch(api::patch_site))
        .route(
            "/departments",
            get(api::list_departments).post(api::create_department),
        )
        .route("/departments/{id}", patch(api::update_department))
        .route("/users", get(api::list_users).post(api::create_user))
        .route("/users/{id}", get(api::get_user).patch(api::patch_user))
        .route("/audit", get(api::audit_trail))
        .route("/widget/session", post(chat_api::widget_session))
        .route("/widget/conversations", post(chat_api::start_chat))
        .route(
            "/widget/conversations/{id}/events",
            get(chat_api::widget_events),
        )
        .route(
            "/widget/conversations/{id}/messages",
            post(chat_api::widget_send),
        )
        .route("/widget/conversations/{id}/end", post(chat_api::widget_end))
        .route("/widget/ticket", post(chat_api::widget_ticket))
        .route("/widget/offline-messages", post(chat_api::widget_offline))
        .route("/console/ticket", post(chat_api::console_ticket))
        .route("/console/overview", get(chat_api::console_overview))
        .route("/console/status", put(chat_api::console_status))
        .route(
            "/console/conversations/{id}/accept",
            post(chat_api::console_accept),
        )
        .route(
            "/console/conversations/{id}/reject",
            post(chat_api::console_reject),
        )
        .route(
            "/console/conversations/{id}/end",
            post(chat_api::console_end),
        )
        .route(
            "/console/conversations/{id}/messages",
            post(chat_api::console_send),
        )
        .route(
            "/console/conversations/{id}/transfer",
            post(chat_api::console_transfer),
        )
        .route("/conversations", get(chat_api::transcripts))
        .route("/conversations/{id}", get(chat_api::conversation))
        .route("/offline-messages", get(chat_api::offline_messages))
        .route(
            "/offline-messages/{id}/handled",
            post(chat_api::offline_handled),
        )
        .route("/openapi.json", get(web::openapi))
        .route("/docs", get(web::api_docs))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed);
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/ws", get(ws::upgrade))
        .route("/", get(web::index))
        .route("/favicon.ico", get(web::favicon))
        .route("/admin", get(web::admin))
        .route("/console", get(web::console))
        .route("/widget.js", get(web::widget_loader))
        .route("/widget/frame", get(web::widget_frame))
        .route("/static/{file}", get(web::asset))
        .fallback(web::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::headers,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serve until `shutdown` resolves, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Frames go out as soon as they are written: with Nagle's algorithm a small frame that
    // follows another waits for the peer's delayed ACK (up to 40 ms on Linux).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY could not be set");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
