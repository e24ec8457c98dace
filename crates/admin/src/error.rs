//! Errors as RabbitMQ's management API returns them: a status and a JSON body
//! `{"error": ..., "reason": ...}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use junction_core::{CoreError, ErrorKind};
use serde_json::json;

/// A refusal of the API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
    /// Ask for credentials (`WWW-Authenticate`): only when the request brought none, so a
    /// browser page that sent wrong ones gets no login dialog of the browser's own.
    challenge: bool,
}

/// What a handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// 401: the caller could not be authenticated, or may not use this.
    pub fn not_authorised(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized",
            reason: reason.into(),
            challenge: false,
        }
    }

    /// 401 asking for credentials: the request brought none.
    pub fn credentials_needed() -> Self {
        Self {
            challenge: true,
            ..Self::not_authorised("Login failed")
        }
    }

    /// 404: no such object.
    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
            challenge: false,
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
            challenge: false,
        }
    }

    /// 405: the method does not apply.
    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "method_not_allowed",
            reason: "Method Not Allowed".into(),
            challenge: false,
        }
    }

    /// 415: a body that is not JSON.
    pub fn unsupported_media_type() -> Self {
        Self {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error: "unsupported_media_type",
            reason: "the body must be application/json".into(),
            challenge: false,
        }
    }

    /// 500: the broker failed.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
            challenge: false,
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        match error.kind {
            ErrorKind::NotFound => Self::not_found(),
            ErrorKind::AccessRefused => Self::not_authorised(error.message),
            ErrorKind::Internal => Self::internal(error.message),
            // Inequivalent redeclarations, locked resources, refusals of the plugin:
            // RabbitMQ answers 400 with the reason.
            _ => Self::bad_request(error.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "reason": self.reason});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Junction Management\""),
            );
        }
        response
    }
}
