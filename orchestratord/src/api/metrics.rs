//! Prometheus text metrics: request counters kept in atomics on the hot path, gauges read
//! from the store when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::Authed;
use super::error::ApiError;
use super::AppState;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: index 0 = 1xx ... 4 = 5xx.
    responses: [AtomicU64; 5],
    auth_failures: AtomicU64,
}

impl Metrics {
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.metrics.response(resp.status().as_u16());
    resp
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics` (admin).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
              (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn serve(
    State(state): State<AppState>,
    Authed(actor): Authed,
) -> Result<Response, ApiError> {
    let counts = state.app.counts(&actor)?;
    let m = &state.metrics;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP orchestratord_http_responses_total HTTP responses by status class."
    );
    let _ = writeln!(out, "# TYPE orchestratord_http_responses_total counter");
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let n = m.responses[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "orchestratord_http_responses_total{{class=\"{class}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP orchestratord_auth_failures_total Failed or refused authentications."
    );
    let _ = writeln!(out, "# TYPE orchestratord_auth_failures_total counter");
    let _ = writeln!(
        out,
        "orchestratord_auth_failures_total {}",
        m.auth_failures.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP orchestratord_users Users by role.");
    let _ = writeln!(out, "# TYPE orchestratord_users gauge");
    for (role, n) in &counts.users_by_role {
        let _ = writeln!(out, "orchestratord_users{{role=\"{}\"}} {n}", label(role));
    }
    let _ = writeln!(out, "# HELP orchestratord_boxes Boxes by observed state.");
    let _ = writeln!(out, "# TYPE orchestratord_boxes gauge");
    for (st, n) in &counts.boxes_by_state {
        let _ = writeln!(out, "orchestratord_boxes{{state=\"{}\"}} {n}", label(st));
    }
    for (name, help, v) in [
        (
            "orchestratord_tokens_active",
            "Tokens neither revoked nor expired.",
            counts.active_tokens,
        ),
        (
            "orchestratord_services",
            "Registered services.",
            counts.services,
        ),
        (
            "orchestratord_audit_entries",
            "Entries in the audit log.",
            counts.audit_entries,
        ),
        (
            "orchestratord_uptime_seconds",
            "Seconds since the daemon started.",
            state.started.elapsed().as_secs() as i64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
