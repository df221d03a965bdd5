//! REST endpoints of live chat: the widget's (visitor token in `Authorization: Bearer`) and the
//! console's (session cookie and CSRF). Messages normally travel over the socket; the POST
//! endpoints here give the same durable acknowledgement over plain HTTPS.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, ClientIp, bounded, path_id};
use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use parley_app::{ChatActor, Prechat, TicketSubject, TransferTarget, Visitor};
use parley_core::conversation::AgentStatus;
use serde::Deserialize;
use serde_json::{Value, json};

type ApiResult<T> = Result<T, ApiError>;

/// A visitor, from `Authorization: Bearer <visitor token>`.
pub struct VisitorCaller(pub Visitor);

impl FromRequestParts<AppState> for VisitorCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "open the widget session first",
                )
            })?;
        Ok(VisitorCaller(state.app.authenticate_visitor(token).await?))
    }
}

fn dept_id(raw: &str, field: &'static str) -> ApiResult<parley_core::DepartmentId> {
    raw.parse().map_err(|_| ApiError {
        field: Some(field),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_department",
            format!("{field}: no such department"),
        )
    })
}

// --- widget ---------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WidgetSessionBody {
    site_key: String,
    visitor_token: Option<String>,
}

pub async fn widget_session(
    State(s): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(b): ApiJson<WidgetSessionBody>,
) -> ApiResult<Json<Value>> {
    bounded("site_key", &b.site_key, 128)?;
    if let Some(t) = &b.visitor_token {
        bounded("visitor_token", t, 128)?;
    }
    Ok(Json(json!(
        s.app
            .widget_session(&b.site_key, b.visitor_token.as_deref(), ip.as_deref())
            .await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    department_id: String,
    name: Option<String>,
    email: Option<String>,
    question: Option<String>,
}

pub async fn start_chat(
    State(s): State<AppState>,
    VisitorCaller(v): VisitorCaller,
    ApiJson(b): ApiJson<StartBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let dept = dept_id(&b.department_id, "department_id")?;
    let answers = Prechat {
        name: b.name,
        email: b.email,
        question: b.question,
    };
    let c = s.app.start_chat(v, dept, answers).await?;
    Ok((StatusCode::CREATED, Json(json!(c))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinceQuery {
    since: Option<i64>,
}

pub async fn widget_events(
    State(s): State<AppState>,
    VisitorCaller(v): VisitorCaller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<SinceQuery>,
) -> ApiResult<Json<Value>> {
    let events = s
        .app
        .events_since(ChatActor::Visitor(v), path_id(&id)?, q.since.unwrap_or(0))
        .await?;
    Ok(Json(json!({ "events": events })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBodyIn {
    client_msg_id: String,
    body: String,
}

pub async fn widget_send(
    State(s): State<AppState>,
    VisitorCaller(v): VisitorCaller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<MessageBodyIn>,
) -> ApiResult<Json<Value>> {
    let a = s
        .app
        .send_message(
            ChatActor::Visitor(v),
            path_id(&id)?,
            &b.client_msg_id,
            &b.body,
        )
        .await?;
    Ok(Json(
        json!({ "client_msg_id": b.client_msg_id, "seq": a.seq, "duplicate": a.duplicate }),
    ))
}

pub async fn widget_end(
    State(s): State<AppState>,
    VisitorCaller(v): VisitorCaller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = s.app.end_chat(ChatActor::Visitor(v), path_id(&id)?).await?;
    Ok(Json(json!({ "seq": a.seq })))
}

pub async fn widget_ticket(
    State(s): State<AppState>,
    VisitorCaller(v): VisitorCaller,
) -> Json<Value> {
    Json(
        json!({ "ticket": s.app.issue_ticket(v.tenant, TicketSubject::Visitor { visitor: v.id }) }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineBody {
    department_id: String,
    name: String,
    email: String,
    message: String,
}

pub async fn widget_offline(
    State(s): State<AppState>,
    VisitorCaller(v): VisitorCaller,
    ApiJson(b): ApiJson<OfflineBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let dept = dept_id(&b.department_id, "department_id")?;
    let id = s
        .app
        .leave_offline_message(v, dept, &b.name, &b.email, &b.message)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

// --- console --------------------------------------------------------------------------------

pub async fn console_ticket(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    s.app
        .authorize(
            &c.session,
            parley_core::Permission::UseConsole,
            c.ip.as_deref(),
        )
        .await?;
    let t = s.app.issue_ticket(
        c.session.actor.tenant,
        TicketSubject::Agent {
            session_hash: c.session.token_hash.clone(),
        },
    );
    Ok(Json(json!({ "ticket": t })))
}

pub async fn console_overview(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.app.console_overview(&c.session).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    status: String,
}

pub async fn console_status(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<StatusBody>,
) -> ApiResult<Json<Value>> {
    let status = AgentStatus::parse(&b.status).ok_or_else(|| ApiError {
        field: Some("status"),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_status",
            "status: must be online, away or offline",
        )
    })?;
    s.app.set_agent_status(&c.session, status).await?;
    Ok(Json(json!({ "status": status })))
}

pub async fn console_accept(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        s.app.accept_chat(&c.session, path_id(&id)?).await?
    )))
}

pub async fn console_reject(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.app.reject_chat(&c.session, path_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn console_end(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = s
        .app
        .end_chat(ChatActor::Agent(&c.session), path_id(&id)?)
        .await?;
    Ok(Json(json!({ "seq": a.seq })))
}

pub async fn console_send(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<MessageBodyIn>,
) -> ApiResult<Json<Value>> {
    let a = s
        .app
        .send_message(
            ChatActor::Agent(&c.session),
            path_id(&id)?,
            &b.client_msg_id,
            &b.body,
        )
        .await?;
    Ok(Json(
        json!({ "client_msg_id": b.client_msg_id, "seq": a.seq, "duplicate": a.duplicate }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    agent_id: Option<String>,
    department_id: Option<String>,
    note: Option<String>,
}

pub async fn console_transfer(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<TransferBody>,
) -> ApiResult<Json<Value>> {
    let target = match (&b.agent_id, &b.department_id) {
        (Some(a), None) => TransferTarget::Agent(a.parse().map_err(|_| ApiError {
            field: Some("agent_id"),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_agent",
                "agent_id: no such agent",
            )
        })?),
        (None, Some(d)) => TransferTarget::Department(dept_id(d, "department_id")?),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "give exactly one of agent_id and department_id",
            ));
        }
    };
    Ok(Json(json!(
        s.app
            .transfer_chat(&c.session, path_id(&id)?, target, b.note.as_deref())
            .await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptQuery {
    q: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub async fn transcripts(
    State(s): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<TranscriptQuery>,
) -> ApiResult<Json<Value>> {
    if let Some(text) = &q.q {
        bounded("q", text, 200)?;
    }
    let list = s
        .app
        .transcripts(&c.session, q.q.as_deref(), q.before, q.limit.unwrap_or(50))
        .await?;
    Ok(Json(json!({ "conversations": list })))
}

pub async fn conversation(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = path_id(&id)?;
    let conv = s
        .app
        .conversation_detail(ChatActor::Agent(&c.session), id)
        .await?;
    let events = s
        .app
        .events_since(ChatActor::Agent(&c.session), id, 0)
        .await?;
    Ok(Json(json!({ "conversation": conv, "events": events })))
}

pub async fn offline_messages(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "offline_messages": s.app.offline_messages(&c.session).await? }),
    ))
}

pub async fn offline_handled(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.app
        .handle_offline_message(&c.session, path_id(&id)?, c.ip.as_deref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
