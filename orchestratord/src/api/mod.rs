//! HTTP API (axum). Handlers parse and authenticate, then call `service`; they never call
//! `runtime`. See docs/api.md for the contract and `GET /api/v1/openapi.json` for the
//! machine-readable description.

pub mod auth;
mod boxes;
pub mod error;
mod extract;
mod files;
mod handlers;
mod metrics;
mod openapi;
pub mod server;
pub mod terminal;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use axum::Router;

use crate::service::App;

pub use metrics::Metrics;
pub use openapi::ApiDoc;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub app: Arc<App>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<auth::FailureLimiter>,
    pub started: Instant,
}

impl AppState {
    pub fn new(app: App) -> AppState {
        AppState {
            app: Arc::new(app),
            metrics: Arc::default(),
            limiter: Arc::default(),
            started: Instant::now(),
        }
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    use handlers::*;
    let body_limit = state.app.config.http.body_limit.bytes() as usize;
    let api = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{user}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/users/{user}/services", get(user_services))
        .route("/users/{user}/network", get(boxes::network_policy))
        .route(
            "/users/{user}/services/{service}/access",
            get(service_access),
        )
        .route("/users/{user}/files", get(files::list))
        .route(
            "/users/{user}/files/entry",
            get(files::stat).delete(files::delete).patch(files::chmod),
        )
        .route(
            "/users/{user}/files/content",
            get(files::download).put(files::upload),
        )
        .route(
            "/users/{user}/files/mkdir",
            axum::routing::post(files::mkdir),
        )
        .route(
            "/users/{user}/files/move",
            axum::routing::post(files::rename),
        )
        .route("/users/{user}/files/copy", axum::routing::post(files::copy))
        .route("/users/{user}/files/watch", get(files::watch))
        .route(
            "/users/{user}/files/watch/tickets",
            axum::routing::post(files::watch_ticket),
        )
        .route("/users/{user}/state", get(list_state))
        .route(
            "/users/{user}/state/{key}",
            put(put_state).get(get_state).delete(delete_state),
        )
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/services", get(list_services).post(add_service))
        .route("/services/{name}", axum::routing::delete(remove_service))
        .route("/audit", get(query_audit))
        .route("/boxes", get(boxes::list_boxes))
        .route("/boxes/bulk", axum::routing::post(boxes::bulk))
        .route(
            "/boxes/{user}",
            get(boxes::box_status).delete(boxes::remove_box),
        )
        .route("/boxes/{user}/start", axum::routing::post(boxes::start_box))
        .route("/boxes/{user}/stop", axum::routing::post(boxes::stop_box))
        .route(
            "/boxes/{user}/restart",
            axum::routing::post(boxes::restart_box),
        )
        .route("/boxes/{user}/reset", axum::routing::post(boxes::reset_box))
        .route("/boxes/{user}/logs", get(boxes::box_logs))
        .route("/boxes/{user}/exec", axum::routing::post(boxes::exec))
        .route(
            "/boxes/{user}/exec/stream",
            axum::routing::post(boxes::exec_stream),
        )
        .route("/boxes/{user}/terminal", get(terminal::websocket))
        .route(
            "/boxes/{user}/terminal/tickets",
            axum::routing::post(terminal::create_ticket),
        )
        .route(
            "/boxes/{user}/terminal/sessions",
            get(terminal::list_sessions),
        )
        .route(
            "/boxes/{user}/terminal/sessions/{id}",
            axum::routing::delete(terminal::close_session),
        )
        .route("/openapi.json", get(openapi::serve));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::serve))
        .route("/terminal", get(terminal::web_index))
        .route("/terminal/{file}", get(terminal::web_asset))
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_files;
