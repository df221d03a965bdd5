//! REST API handlers: parse the request, call one use case, shape the answer. No rules live here.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Caller, ClientIp, bounded, path_id};
use super::{AppState, security};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_app::{NewUserInput, SiteChanges, UserChangesInput};
use parley_core::{DepartmentId, Role};
use serde::Deserialize;
use serde_json::{Value, json};

type ApiResult<T> = Result<T, ApiError>;

pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method",
    )
}

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    match s.app.store.ready().await {
        Ok(true) => {
            Json(json!({ "status": "ready", "database": s.app.store.backend() })).into_response()
        }
        Ok(false) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "migrations_pending",
            "database migrations are not applied",
        )
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unreachable",
                "the database cannot be reached",
            )
            .into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInBody {
    workspace: String,
    email: String,
    password: String,
}

pub async fn sign_in(
    State(s): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    ApiJson(b): ApiJson<SignInBody>,
) -> ApiResult<Response> {
    security::check_origin(&headers, &s.settings)?;
    bounded("workspace", &b.workspace, 100)?;
    bounded("email", &b.email, 320)?;
    bounded("password", &b.password, 1024)?;
    let signed = s
        .app
        .sign_in(&b.workspace, &b.email, &b.password, ip.as_deref())
        .await?;
    let me = s.app.me(&signed.session).await?;
    let body = json!({
        "user": me,
        "csrf_token": security::csrf_token(&signed.token),
        "must_change_password": signed.session.must_change_password,
        "expires_at": signed.session.expires_at,
    });
    let cookie = security::session_cookie(&s.settings, Some(&signed.token));
    Ok(([(header::SET_COOKIE, cookie)], Json(body)).into_response())
}

pub async fn sign_out(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    s.app
        .sign_out(&caller.session, caller.ip.as_deref())
        .await?;
    let cookie = security::session_cookie(&s.settings, None);
    Ok(([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response())
}

pub async fn session(State(s): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let me = s.app.me(&caller.session).await?;
    let a = &caller.session.actor;
    let departments: Vec<_> = if caller.session.must_change_password {
        vec![]
    } else {
        s.app
            .departments(&caller.session, caller.ip.as_deref())
            .await?
            .into_iter()
            .filter(|d| a.departments.contains(&d.id))
            .collect()
    };
    let site = if caller.session.must_change_password {
        None
    } else {
        Some(s.app.site(&caller.session, caller.ip.as_deref()).await?)
    };
    Ok(Json(json!({
        "user": me,
        "permissions": a.role.permissions(),
        "departments": departments,
        "site": site.map(|s| json!({ "name": s.name, "slug": s.slug })),
        "csrf_token": security::csrf_token(&caller.token),
        "must_change_password": caller.session.must_change_password,
        "expires_at": caller.session.expires_at,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    current_password: String,
    new_password: String,
}

pub async fn change_password(
    State(s): State<AppState>,
    caller: Caller,
    ApiJson(b): ApiJson<PasswordBody>,
) -> ApiResult<StatusCode> {
    bounded("current_password", &b.current_password, 1024)?;
    bounded("new_password", &b.new_password, 1024)?;
    s.app
        .change_password(
            &caller.session,
            &b.current_password,
            &b.new_password,
            caller.ip.as_deref(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_site(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!(s.app.site(&c.session, c.ip.as_deref()).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    name: Option<String>,
    allowed_origins: Option<Vec<String>>,
    connection_periods: Option<parley_app::PeriodsView>,
}

pub async fn patch_site(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<SiteBody>,
) -> ApiResult<Json<Value>> {
    let changes = SiteChanges {
        name: b.name,
        allowed_origins: b.allowed_origins,
        connection_periods: b.connection_periods,
    };
    Ok(Json(json!(
        s.app
            .update_site(&c.session, changes, c.ip.as_deref())
            .await?
    )))
}

pub async fn list_departments(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "departments": s.app.departments(&c.session, c.ip.as_deref()).await? }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepartmentBody {
    name: String,
}

pub async fn create_department(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<DepartmentBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let d = s
        .app
        .create_department(&c.session, &b.name, c.ip.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(json!(d))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepartmentPatch {
    name: Option<String>,
    routing_mode: Option<String>,
    offer_timeout_secs: Option<i64>,
    prechat_fields: Option<parley_app::PrechatFields>,
}

pub async fn update_department(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<DepartmentPatch>,
) -> ApiResult<Json<Value>> {
    let id: DepartmentId = path_id(&id)?;
    let changes = parley_app::DepartmentChanges {
        name: b.name,
        routing_mode: b.routing_mode,
        offer_timeout_secs: b.offer_timeout_secs,
        prechat_fields: b.prechat_fields,
    };
    Ok(Json(json!(
        s.app
            .update_department(&c.session, id, changes, c.ip.as_deref())
            .await?
    )))
}

pub async fn list_users(State(s): State<AppState>, c: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(
        json!({ "users": s.app.users(&c.session, c.ip.as_deref()).await? }),
    ))
}

pub async fn get_user(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        s.app
            .user(&c.session, path_id(&id)?, c.ip.as_deref())
            .await?
    )))
}

fn role(raw: &str) -> ApiResult<Role> {
    Role::parse(raw).ok_or_else(|| ApiError {
        field: Some("role"),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_role",
            "role: must be one of site_admin, site_manager, department_manager, agent",
        )
    })
}

fn department_ids(raw: &[String]) -> ApiResult<Vec<DepartmentId>> {
    raw.iter()
        .map(|d| {
            d.parse().map_err(|_| ApiError {
                field: Some("department_ids"),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_department",
                    format!("department_ids: no department {d:?}"),
                )
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    email: String,
    display_name: String,
    role: String,
    #[serde(default)]
    department_ids: Vec<String>,
    capacity: Option<i64>,
}

pub async fn create_user(
    State(s): State<AppState>,
    c: Caller,
    ApiJson(b): ApiJson<NewUserBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let input = NewUserInput {
        email: b.email,
        display_name: b.display_name,
        role: role(&b.role)?,
        department_ids: department_ids(&b.department_ids)?,
        capacity: b.capacity,
    };
    let created = s
        .app
        .create_user(&c.session, input, c.ip.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatchBody {
    display_name: Option<String>,
    role: Option<String>,
    department_ids: Option<Vec<String>>,
    capacity: Option<i64>,
    disabled: Option<bool>,
}

pub async fn patch_user(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<UserPatchBody>,
) -> ApiResult<Json<Value>> {
    let id = path_id(&id)?;
    let input = UserChangesInput {
        display_name: b.display_name,
        role: b.role.as_deref().map(role).transpose()?,
        department_ids: b
            .department_ids
            .as_deref()
            .map(department_ids)
            .transpose()?,
        capacity: b.capacity,
        disabled: b.disabled,
    };
    Ok(Json(json!(
        s.app
            .update_user(&c.session, id, input, c.ip.as_deref())
            .await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<i64>,
}

pub async fn audit_trail(
    State(s): State<AppState>,
    c: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let events = s
        .app
        .audit_trail(&c.session, q.limit.unwrap_or(100), c.ip.as_deref())
        .await?;
    Ok(Json(json!({ "events": events })))
}
