//! One error type for every handler, with an exhaustive status mapping and JSON bodies
//! `{"error": {"kind", "message"}}`. 5xx bodies are generic; the real error is logged.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::error;

use crate::service::ServiceError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest {
        kind: &'static str,
        message: String,
    },
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict {
        kind: &'static str,
        message: String,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    Invalid {
        kind: &'static str,
        message: String,
    },
    RateLimited,
    /// The box runtime failed: the step and cause are shown (they are the box's own
    /// last error, visible in its status to whoever may see the box).
    BoxFailed(String),
    Unavailable(String),
    /// An upload beyond `files.upload_limit` (the message says the limit).
    UploadTooLarge(String),
    /// The home's filesystem or quota is full.
    InsufficientStorage,
    /// A `Range` outside the file.
    RangeNotSatisfiable,
    Internal(anyhow::Error),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable, stable (see docs/api.md).
    pub kind: String,
    /// One line for humans.
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BoxFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UploadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind_and_message(&self) -> (&'static str, String) {
        match self {
            ApiError::BadRequest { kind, message }
            | ApiError::Conflict { kind, message }
            | ApiError::Invalid { kind, message } => (kind, message.clone()),
            ApiError::Unauthorized(m) => ("unauthorized", m.clone()),
            ApiError::Forbidden(m) => ("forbidden", m.clone()),
            ApiError::NotFound(m) => ("not_found", m.clone()),
            ApiError::PayloadTooLarge => ("payload_too_large", "request body is too large".into()),
            ApiError::UnsupportedMediaType => (
                "unsupported_media_type",
                "expected Content-Type: application/json".into(),
            ),
            ApiError::RateLimited => (
                "rate_limited",
                "too many failed authentications; try again later".into(),
            ),
            ApiError::BoxFailed(m) => ("box_failed", m.clone()),
            ApiError::Unavailable(m) => ("unavailable", m.clone()),
            ApiError::UploadTooLarge(m) => ("upload_too_large", m.clone()),
            ApiError::InsufficientStorage => (
                "insufficient_storage",
                "no space left in the home (disk or quota full)".into(),
            ),
            ApiError::RangeNotSatisfiable => (
                "range_not_satisfiable",
                "the requested range is outside the file".into(),
            ),
            ApiError::Internal(_) => ("internal", "internal error".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(err) = &self {
            error!(err = format!("{err:#}"), "request failed");
        }
        let status = self.status();
        let (kind, message) = self.kind_and_message();
        let body = ErrorBody {
            error: ErrorDetail {
                kind: kind.into(),
                message,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        }
        resp
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid { kind, message } => ApiError::Invalid { kind, message },
            ServiceError::NotFound { what } => ApiError::NotFound(format!("{what} not found")),
            ServiceError::Conflict { kind, message } => ApiError::Conflict { kind, message },
            ServiceError::Unauthorized(m) => ApiError::Unauthorized(m.into()),
            ServiceError::Forbidden(m) => ApiError::Forbidden(m.into()),
            ServiceError::BoxFailed(m) => ApiError::BoxFailed(m),
            ServiceError::Unavailable(m) => ApiError::Unavailable(m.into()),
            e @ ServiceError::TooLarge { .. } => ApiError::UploadTooLarge(e.to_string()),
            ServiceError::NoSpace => ApiError::InsufficientStorage,
            e @ (ServiceError::Store(_) | ServiceError::Random(_) | ServiceError::Internal(_)) => {
                ApiError::Internal(e.into())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::Invalid {
                kind: "invalid_body",
                message: e.body_text(),
            },
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest {
                kind: "malformed_json",
                message: e.body_text(),
            },
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::BadRequest {
                kind: "bad_request",
                message: other.body_text(),
            },
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest {
            kind: "invalid_query",
            message: r.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest {
            kind: "bad_request",
            message: r.body_text(),
        }
    }
}
