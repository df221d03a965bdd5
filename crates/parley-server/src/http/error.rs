//! The one mapping from errors to HTTP answers. Bodies carry a stable `code` and a human
//! `message`, never internal detail; the cause goes to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_app::AppError;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<&'static str>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }
    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "there is nothing here")
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        use StatusCode as S;
        match e {
            AppError::Invalid(d) => ApiError {
                status: S::UNPROCESSABLE_ENTITY,
                code: d.code,
                message: format!("{}: {}", d.field, d.message),
                field: Some(d.field),
                retry_after: None,
            },
            AppError::Unauthenticated => {
                ApiError::new(S::UNAUTHORIZED, "unauthenticated", "sign in first")
            }
            AppError::InvalidCredentials => ApiError::new(
                S::UNAUTHORIZED,
                "invalid_credentials",
                "the workspace, email or password is not right",
            ),
            AppError::TooManyAttempts { retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs),
                ..ApiError::new(
                    S::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    format!(
                        "too many failed sign-ins; try again in {} minutes",
                        retry_after_secs.div_ceil(60)
                    ),
                )
            },
            AppError::TooManyVisitors { retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs),
                ..ApiError::new(
                    S::TOO_MANY_REQUESTS,
                    "too_many_visitors",
                    format!(
                        "too many new chat visitors from this address; a visitor who already has a token is still served; try again in {} minutes",
                        retry_after_secs.div_ceil(60)
                    ),
                )
            },
            AppError::PasswordChangeRequired => ApiError::new(
                S::FORBIDDEN,
                "password_change_required",
                "set a new password first",
            ),
            AppError::Forbidden(p) => ApiError::new(
                S::FORBIDDEN,
                "forbidden",
                format!("this needs the permission {}", p.as_str()),
            ),
            AppError::NotFound => ApiError::not_found(),
            AppError::Conflict(what) => {
                let (code, message) = match what {
                    "email" => ("email_taken", "a user with this email already exists"),
                    "slug" => ("slug_taken", "this workspace name is taken"),
                    "department_name" => (
                        "department_name_taken",
                        "a department with this name already exists",
                    ),
                    "no_agent_online" => (
                        "no_agent_online",
                        "nobody is online in this department right now; leave a message instead",
                    ),
                    _ => ("conflict", "this conflicts with existing data"),
                };
                ApiError::new(S::CONFLICT, code, message)
            }
            AppError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "something went wrong on our side; it has been logged",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
            field: self.field,
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}
