//! Route handlers: parse, authenticate, call `service`, shape the response.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Authed;
use super::error::{ApiError, ErrorBody};
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::service::auth::{NewToken, TokenInfo};
use crate::service::rfc3339;
use crate::service::{NewService, NewUserRequest, StateValue, UpdateUserRequest, UserView};
use crate::store::AuditFilter;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: &'static str,
}

/// Liveness. No auth, reveals no version.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

// ---- users ------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserListQuery {
    /// `admin`, `member` or `demo`.
    pub role: Option<String>,
    /// Profile name.
    pub profile: Option<String>,
    pub disabled: Option<bool>,
}

/// Create a user (admin).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUserRequest,
    responses((status = 201, body = UserView),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Json(req): Json<NewUserRequest>,
) -> ApiResult<Response> {
    let user = s.app.create_user(&actor, req)?;
    Ok((StatusCode::CREATED, axum::Json(s.app.user_view(&user))).into_response())
}

/// List users with optional filters (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserListQuery),
    responses((status = 200, body = UserList), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_users(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Query(q): Query<UserListQuery>,
) -> ApiResult<axum::Json<UserList>> {
    let users = s
        .app
        .list_users(&actor, q.role.as_deref(), q.profile.as_deref(), q.disabled)?;
    Ok(axum::Json(UserList {
        users: users.iter().map(|u| s.app.user_view(u)).collect(),
    }))
}

/// Show one user, by login or email.
#[utoipa::path(get, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn show_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<UserView>> {
    let u = s.app.show_user(&actor, &user)?;
    Ok(axum::Json(s.app.user_view(&u)))
}

/// Change a user's display name, role, profile, services or disabled flag (admin).
#[utoipa::path(patch, path = "/api/v1/users/{user}", tag = "users", request_body = UpdateUserRequest,
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
    Json(req): Json<UpdateUserRequest>,
) -> ApiResult<axum::Json<UserView>> {
    let u = s.app.update_user(&actor, &user, req)?;
    Ok(axum::Json(s.app.user_view(&u)))
}

/// Delete a user with their tokens and desktop state (admin).
#[utoipa::path(delete, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_user(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    s.app.delete_user_with_box(&actor, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- tokens -----------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateTokenRequest {
    /// `admin`, `user` or `service`.
    pub kind: String,
    /// Login or email; required for `user` tokens, refused otherwise.
    pub user: Option<String>,
    pub name: Option<String>,
    /// Lifetime like `90d` (default), from `1m` to `3650d`.
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The secret, shown this once.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TokenListQuery {
    /// Only this user's tokens (login or email).
    pub user: Option<String>,
}

/// Create a token; the secret is in the response only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Json(req): Json<CreateTokenRequest>,
) -> ApiResult<Response> {
    let (token, info) = s.app.create_token(
        &actor,
        NewToken {
            kind: req.kind,
            user: req.user,
            name: req.name,
            expires_in: req.expires_in,
        },
    )?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken { token, info }),
    )
        .into_response())
}

/// List tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(TokenListQuery),
    responses((status = 200, body = TokenList)), security(("bearer" = [])))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Query(q): Query<TokenListQuery>,
) -> ApiResult<axum::Json<TokenList>> {
    Ok(axum::Json(TokenList {
        tokens: s.app.list_tokens(&actor, q.user.as_deref())?,
    }))
}

/// Revoke a token. Revoking twice is not an error.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.app.revoke_token(&actor, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- services ---------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceList {
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<policy::Service>,
}

/// Register a service (admin).
#[utoipa::path(post, path = "/api/v1/services", tag = "services", request_body = NewService,
    responses((status = 201, description = "the registered service"), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_service(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Json(req): Json<NewService>,
) -> ApiResult<Response> {
    let svc = s.app.add_service(&actor, req)?;
    Ok((StatusCode::CREATED, axum::Json(svc)).into_response())
}

/// The registry (admins, service tokens) or the caller's usable services (users).
#[utoipa::path(get, path = "/api/v1/services", tag = "services",
    responses((status = 200, body = ServiceList)), security(("bearer" = [])))]
pub async fn list_services(
    State(s): State<AppState>,
    Authed(actor): Authed,
) -> ApiResult<axum::Json<ServiceList>> {
    Ok(axum::Json(ServiceList {
        services: s.app.list_services(&actor)?,
    }))
}

/// Remove a service and all its assignments (admin).
#[utoipa::path(delete, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_service(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.app.remove_service(&actor, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The services a user may use.
#[utoipa::path(get, path = "/api/v1/users/{user}/services", tag = "services",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = ServiceList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn user_services(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<ServiceList>> {
    Ok(axum::Json(ServiceList {
        services: s.app.user_services(&actor, &user)?,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Access {
    pub user: String,
    pub service: String,
    pub allowed: bool,
}

/// May this user use this service? 200 when allowed, 403 when not (forward-auth friendly).
#[utoipa::path(get, path = "/api/v1/users/{user}/services/{service}/access", tag = "services",
    params(("user" = String, Path, description = "login or email"), ("service" = String, Path)),
    responses((status = 200, body = Access), (status = 403, body = Access), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn service_access(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path((user, service)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (u, allowed) = s.app.may_use(&actor, &user, &service)?;
    let status = if allowed {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    let body = Access {
        user: u.login.to_string(),
        service,
        allowed,
    };
    Ok((status, axum::Json(body)).into_response())
}

// ---- desktop state ----------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct StateMap {
    #[schema(value_type = Object)]
    pub state: serde_json::Map<String, serde_json::Value>,
}

/// All desktop state entries of a user.
#[utoipa::path(get, path = "/api/v1/users/{user}/state", tag = "state",
    params(("user" = String, Path, description = "login or email")),
    responses((status = 200, body = StateMap), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_state(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path(user): Path<String>,
) -> ApiResult<axum::Json<StateMap>> {
    let state = s
        .app
        .list_state(&actor, &user)?
        .into_iter()
        .map(|v| (v.key, v.value))
        .collect();
    Ok(axum::Json(StateMap { state }))
}

/// One desktop state entry.
#[utoipa::path(get, path = "/api/v1/users/{user}/state/{key}", tag = "state",
    params(("user" = String, Path, description = "login or email"), ("key" = String, Path)),
    responses((status = 200, body = StateValue), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_state(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path((user, key)): Path<(String, String)>,
) -> ApiResult<axum::Json<StateValue>> {
    Ok(axum::Json(s.app.get_state(&actor, &user, &key)?))
}

/// Set a desktop state entry to any JSON value (at most 64 KiB).
#[utoipa::path(put, path = "/api/v1/users/{user}/state/{key}", tag = "state",
    params(("user" = String, Path, description = "login or email"), ("key" = String, Path)),
    request_body(content = Object, description = "any JSON value"),
    responses((status = 200, body = StateValue), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_state(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path((user, key)): Path<(String, String)>,
    Json(value): Json<serde_json::Value>,
) -> ApiResult<axum::Json<StateValue>> {
    Ok(axum::Json(s.app.put_state(&actor, &user, &key, value)?))
}

/// Delete a desktop state entry.
#[utoipa::path(delete, path = "/api/v1/users/{user}/state/{key}", tag = "state",
    params(("user" = String, Path, description = "login or email"), ("key" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_state(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Path((user, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.app.delete_state(&actor, &user, &key)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- audit ------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries by or about this user (login or email) or actor name.
    pub user: Option<String>,
    /// An action (`user.create`) or a resource prefix (`user`).
    pub action: Option<String>,
    /// `ok`, `denied`, `invalid` or `error`.
    pub outcome: Option<String>,
    /// RFC 3339 time or Unix seconds.
    pub since: Option<String>,
    /// RFC 3339 time or Unix seconds.
    pub until: Option<String>,
    /// Page size, default 100, at most 1000.
    pub limit: Option<u32>,
    /// Only entries with an id below this (the previous page's `next`).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    pub time: String,
    pub actor: String,
    pub token_id: Option<String>,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next page; null on the last page.
    pub next: Option<i64>,
}

fn parse_time(field: &str, s: &str) -> ApiResult<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .ok_or_else(|| ApiError::BadRequest {
            kind: "invalid_query",
            message: format!("{field} must be an RFC 3339 time or Unix seconds"),
        })
}

/// Query the audit log, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn query_audit(
    State(s): State<AppState>,
    Authed(actor): Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<axum::Json<AuditPage>> {
    if let Some(o) = &q.outcome {
        if !["ok", "denied", "invalid", "error"].contains(&o.as_str()) {
            return Err(ApiError::BadRequest {
                kind: "invalid_query",
                message: "outcome must be ok, denied, invalid or error".into(),
            });
        }
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let filter = AuditFilter {
        actor: q.user,
        action: q.action,
        outcome: q.outcome,
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
        before: q.before,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
    };
    let mut rows = s.app.query_audit(&actor, &filter)?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let entries = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            time: rfc3339(r.time),
            actor: r.actor,
            token_id: r.token_id,
            peer: r.peer,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            detail: r.detail,
        })
        .collect();
    Ok(axum::Json(AuditPage { entries, next }))
}
