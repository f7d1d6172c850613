//! The OpenAPI document, generated from the handlers' annotations (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::boxes;
use super::files;
use super::handlers;
use super::metrics;
use super::terminal;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        // Browsers open the terminal WebSocket with a single-use ticket in the query.
        components.add_security_scheme(
            "ticket",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Query(
                utoipa::openapi::security::ApiKeyValue::new("ticket"),
            )),
        );
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    // "v1" rather than the crate version: the document must not reveal the build.
    info(title = "orchestratord", version = "v1",
         description = "Per-user isolated boxes for a homelab. See docs/api.md."),
    paths(
        handlers::healthz,
        metrics::serve,
        handlers::create_user, handlers::list_users, handlers::show_user,
        handlers::update_user, handlers::delete_user,
        handlers::create_token, handlers::list_tokens, handlers::revoke_token,
        handlers::add_service, handlers::list_services, handlers::remove_service,
        handlers::user_services, handlers::service_access,
        handlers::list_state, handlers::get_state, handlers::put_state, handlers::delete_state,
        handlers::query_audit,
        boxes::list_boxes, boxes::box_status, boxes::start_box, boxes::stop_box,
        boxes::restart_box, boxes::reset_box, boxes::remove_box, boxes::box_logs,
        boxes::exec, boxes::exec_stream, boxes::bulk, boxes::network_policy,
        files::list, files::stat, files::delete, files::chmod, files::mkdir, files::rename,
        files::copy, files::upload, files::download, files::watch, files::watch_ticket,
        terminal::websocket, terminal::create_ticket, terminal::list_sessions,
        terminal::close_session,
        serve,
    ),
    modifiers(&BearerAuth),
    tags((name = "health"), (name = "users"), (name = "tokens"), (name = "services"),
         (name = "state"), (name = "audit"), (name = "boxes"), (name = "files"),
         (name = "terminal"))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "the OpenAPI 3.1 document")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
