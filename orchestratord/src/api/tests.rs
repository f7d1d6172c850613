//! API tests: the real router over an in-memory store, driven with `oneshot`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body_util::BodyExt;
use policy::{Config, ProfileSet};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use super::auth::Peer;
use super::error::ApiError;
use super::{router, AppState};
use crate::service::App;
use crate::store::{Store, TokenKind, TokenRecord};

#[derive(Clone)]
enum Auth {
    /// Root on the Unix socket.
    Root,
    /// Another uid on the Unix socket.
    UnixUid(u32),
    Bearer(String),
    /// TCP without a token.
    Anonymous,
}

struct Api {
    state: AppState,
    router: Router,
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("<none>")
    }
}

const PEER: &str = "192.0.2.10:40000";

impl Api {
    fn new() -> Api {
        let app = App::new(
            Config::default(),
            ProfileSet::builtin(),
            Store::open_in_memory().unwrap(),
        );
        let state = AppState::new(app);
        Api {
            router: router(state.clone()),
            state,
        }
    }

    async fn raw(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    fn request(method: Method, uri: &str, auth: &Auth, peer: &str) -> axum::http::request::Builder {
        let mut b = Request::builder().method(method).uri(uri);
        match auth {
            Auth::Root => b = b.extension(Peer::Unix { uid: Some(0) }),
            Auth::UnixUid(u) => b = b.extension(Peer::Unix { uid: Some(*u) }),
            Auth::Bearer(t) => {
                b = b
                    .extension(Peer::Tcp(peer.parse::<SocketAddr>().unwrap()))
                    .header(header::AUTHORIZATION, format!("Bearer {t}"))
            }
            Auth::Anonymous => b = b.extension(Peer::Tcp(peer.parse::<SocketAddr>().unwrap())),
        }
        b
    }

    async fn call(&self, method: Method, uri: &str, auth: &Auth, body: Option<Value>) -> Resp {
        let b = Self::request(method, uri, auth, PEER);
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.raw(req.unwrap()).await
    }

    async fn get(&self, uri: &str, auth: &Auth) -> Resp {
        self.call(Method::GET, uri, auth, None).await
    }

    async fn add_user(&self, email: &str, role: &str, profile: &str) -> Resp {
        let body =
            json!({"email": email, "displayName": email, "role": role, "osProfile": profile});
        self.call(Method::POST, "/api/v1/users", &Auth::Root, Some(body))
            .await
    }

    async fn token(&self, kind: &str, user: Option<&str>) -> Auth {
        let mut body = json!({"kind": kind});
        if let Some(u) = user {
            body["user"] = json!(u);
        }
        let r = self
            .call(Method::POST, "/api/v1/tokens", &Auth::Root, Some(body))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        Auth::Bearer(r.body["token"].as_str().unwrap().to_string())
    }

    async fn user_count(&self) -> usize {
        self.get("/api/v1/users", &Auth::Root).await.body["users"]
            .as_array()
            .unwrap()
            .len()
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/api/v1/audit?{query}"), &Auth::Root)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["entries"].as_array().unwrap().clone()
    }

    /// Stores a token with a known secret and the given expiry (for expiry tests).
    fn insert_raw_token(&self, kind: TokenKind, user_id: Option<i64>, expires_at: i64) -> Auth {
        let id = "00112233aabb";
        let secret = "ab".repeat(32);
        self.state
            .app
            .store
            .insert_token(&TokenRecord {
                id: id.into(),
                hash: Sha256::digest(secret.as_bytes()).into(),
                kind,
                user_id,
                user_login: None,
                name: "raw".into(),
                created_at: 0,
                expires_at,
                revoked_at: None,
            })
            .unwrap();
        Auth::Bearer(format!("orch_{id}_{secret}"))
    }
}

// ---- health, metrics, openapi, fallback --------------------------------------------------

#[tokio::test]
async fn healthz_needs_no_auth_and_reveals_no_version() {
    let api = Api::new();
    let r = api.get("/healthz", &Auth::Anonymous).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"status": "ok"}));
    assert!(!r.text.contains(env!("CARGO_PKG_VERSION")));
    assert!(r.headers.get(header::SERVER).is_none());
}

#[tokio::test]
async fn metrics_are_prometheus_text_for_admins_only() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    let member = api.token("user", Some("alice")).await;
    let r = api.get("/metrics", &Auth::Root).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        r.text.contains("orchestratord_users{role=\"member\"} 1"),
        "{}",
        r.text
    );
    assert!(r.text.contains("orchestratord_boxes{state=\"absent\"} 1"));
    assert!(r
        .text
        .contains("orchestratord_http_responses_total{class=\"2xx\"}"));
    assert_eq!(
        api.get("/metrics", &member).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.get("/metrics", &Auth::Anonymous).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = api.get("/metrics", &Auth::Root).await;
    assert!(
        r.text.contains("orchestratord_auth_failures_total 1"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let api = Api::new();
    let r = api.get("/api/v1/openapi.json", &Auth::Anonymous).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["info"]["version"], "v1");
    let paths = r.body["paths"].as_object().unwrap();
    let expected: &[(&str, &[&str])] = &[
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/api/v1/users", &["get", "post"]),
        ("/api/v1/users/{user}", &["get", "patch", "delete"]),
        ("/api/v1/users/{user}/services", &["get"]),
        ("/api/v1/users/{user}/network", &["get"]),
        ("/api/v1/users/{user}/services/{service}/access", &["get"]),
        ("/api/v1/users/{user}/state", &["get"]),
        (
            "/api/v1/users/{user}/state/{key}",
            &["get", "put", "delete"],
        ),
        ("/api/v1/tokens", &["get", "post"]),
        ("/api/v1/tokens/{id}", &["delete"]),
        ("/api/v1/services", &["get", "post"]),
        ("/api/v1/services/{name}", &["delete"]),
        ("/api/v1/audit", &["get"]),
        ("/api/v1/boxes", &["get"]),
        ("/api/v1/boxes/bulk", &["post"]),
        ("/api/v1/boxes/{user}", &["get", "delete"]),
        ("/api/v1/boxes/{user}/start", &["post"]),
        ("/api/v1/boxes/{user}/stop", &["post"]),
        ("/api/v1/boxes/{user}/restart", &["post"]),
        ("/api/v1/boxes/{user}/reset", &["post"]),
        ("/api/v1/boxes/{user}/logs", &["get"]),
        ("/api/v1/boxes/{user}/exec", &["post"]),
        ("/api/v1/boxes/{user}/exec/stream", &["post"]),
        ("/api/v1/users/{user}/files", &["get"]),
        (
            "/api/v1/users/{user}/files/entry",
            &["get", "delete", "patch"],
        ),
        ("/api/v1/users/{user}/files/content", &["get", "put"]),
        ("/api/v1/users/{user}/files/mkdir", &["post"]),
        ("/api/v1/users/{user}/files/move", &["post"]),
        ("/api/v1/users/{user}/files/copy", &["post"]),
        ("/api/v1/users/{user}/files/watch", &["get"]),
        ("/api/v1/users/{user}/files/watch/tickets", &["post"]),
        ("/api/v1/boxes/{user}/terminal", &["get"]),
        ("/api/v1/boxes/{user}/terminal/tickets", &["post"]),
        ("/api/v1/boxes/{user}/terminal/sessions", &["get"]),
        ("/api/v1/boxes/{user}/terminal/sessions/{id}", &["delete"]),
    ];
    assert_eq!(
        paths.len(),
        expected.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in expected {
        let item = paths.get(*path).unwrap_or_else(|| panic!("{path} missing"));
        for m in *methods {
            assert!(item.get(*m).is_some(), "{m} {path} missing");
        }
    }
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let api = Api::new();
    let r = api.get("/api/v1/nope", &Auth::Root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.kind(), "not_found");
}

#[tokio::test]
async fn internal_errors_have_a_generic_body() {
    let err = ApiError::Internal(anyhow::anyhow!(
        "secret path /var/lib/orchestratord/x.db is locked"
    ));
    let resp = err.into_response();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        body,
        json!({"error": {"kind": "internal", "message": "internal error"}})
    );
}

// ---- authentication -----------------------------------------------------------------------

#[tokio::test]
async fn unix_socket_root_is_admin_and_other_uids_are_refused_and_audited() {
    let api = Api::new();
    assert_eq!(
        api.get("/api/v1/users", &Auth::Root).await.status,
        StatusCode::OK
    );
    let r = api.get("/api/v1/users", &Auth::UnixUid(1000)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.kind(), "forbidden");
    let failures = api.audit("action=auth.failure").await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["peer"], "unix:uid=1000");
    assert_eq!(failures[0]["target"], "/api/v1/users");
}

#[tokio::test]
async fn missing_malformed_unknown_and_wrong_tokens_get_401_and_are_audited() {
    let api = Api::new();
    let good = match api.token("admin", None).await {
        Auth::Bearer(t) => t,
        _ => unreachable!(),
    };
    let wrong_secret = format!(
        "{}{}",
        &good[..good.len() - 1],
        if good.ends_with('0') { '1' } else { '0' }
    );
    let unknown_id = format!("orch_ffffffffffff_{}", "0".repeat(64));
    let cases = [
        (Auth::Anonymous, "missing bearer token"),
        (Auth::Bearer("nonsense".into()), "malformed token"),
        (Auth::Bearer(unknown_id), "invalid token"),
        (Auth::Bearer(wrong_secret), "invalid token"),
    ];
    for (auth, message) in &cases {
        let r = api.get("/api/v1/users", auth).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{message}");
        assert_eq!(r.kind(), "unauthorized");
        assert_eq!(r.body["error"]["message"], *message);
        assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    assert_eq!(
        api.get("/api/v1/users", &Auth::Bearer(good.clone()))
            .await
            .status,
        StatusCode::OK
    );
    let failures = api.audit("action=auth.failure").await;
    assert_eq!(failures.len(), cases.len());
    for f in &failures {
        assert_eq!(f["peer"], "192.0.2.10");
        assert_eq!(f["outcome"], "denied");
        assert!(
            !f.to_string().contains(&good[18..]),
            "a secret reached the audit log"
        );
    }
}

#[tokio::test]
async fn expired_revoked_and_disabled_tokens_are_refused() {
    let api = Api::new();
    let expired = api.insert_raw_token(TokenKind::Admin, None, 1);
    let r = api.get("/api/v1/users", &expired).await;
    assert_eq!(
        (r.status, r.body["error"]["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token expired"))
    );

    let admin = api.token("admin", None).await;
    let list = api.get("/api/v1/tokens", &Auth::Root).await;
    let id = list.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["revokedAt"].is_null() && t["id"] != "00112233aabb")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &Auth::Root,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let r = api.get("/api/v1/users", &admin).await;
    assert_eq!(
        (r.status, r.body["error"]["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token revoked"))
    );

    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    let alice = api.token("user", Some("alice")).await;
    assert_eq!(
        api.get("/api/v1/users/alice", &alice).await.status,
        StatusCode::OK
    );
    api.call(
        Method::PATCH,
        "/api/v1/users/alice",
        &Auth::Root,
        Some(json!({"disabled": true})),
    )
    .await;
    let r = api.get("/api/v1/users/alice", &alice).await;
    assert_eq!(
        (r.status, r.body["error"]["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("user is disabled"))
    );
}

#[tokio::test]
async fn repeated_auth_failures_from_one_address_are_rate_limited() {
    let api = Api::new();
    let bad = Auth::Bearer("nonsense".into());
    for _ in 0..20 {
        assert_eq!(
            api.get("/api/v1/users", &bad).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let r = api.get("/api/v1/users", &bad).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.kind(), "rate_limited");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // Even a valid token from the blocked address waits out the window...
    let good = api.token("admin", None).await;
    assert_eq!(
        api.get("/api/v1/users", &good).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...while another address is unaffected.
    let req = Api::request(Method::GET, "/api/v1/users", &good, "192.0.2.99:1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.raw(req).await.status, StatusCode::OK);
}

// ---- users --------------------------------------------------------------------------------

#[tokio::test]
async fn creating_a_user_returns_201_with_the_record() {
    let api = Api::new();
    let r = api
        .call(
            Method::POST,
            "/api/v1/users",
            &Auth::Root,
            Some(
                json!({"email": "Alice.Smith+lab@Example.com", "displayName": "Alice Smith",
                        "role": "member", "osProfile": "homelabber"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let u = &r.body;
    assert_eq!(u["login"], "alice-smith");
    assert_eq!(u["email"], "alice.smith+lab@example.com");
    assert_eq!(u["displayName"], "Alice Smith");
    assert_eq!(u["role"], "member");
    assert_eq!(u["osProfile"], "homelabber");
    assert_eq!(u["uid"], 1000);
    assert_eq!(u["gid"], 1000);
    assert_eq!(u["subnet"], "10.87.0.0/24");
    assert_eq!(u["boxState"], "absent");
    assert_eq!(u["disabled"], false);
    let r2 = api.add_user("bob@example.com", "member", "media").await;
    assert_eq!(r2.body["uid"], 1001);
    assert_eq!(r2.body["subnet"], "10.87.1.0/24");
    let a = api.audit("action=user.create").await;
    assert_eq!(a[1]["target"], "alice-smith");
    assert_eq!(a[1]["actor"], "root");
    assert_eq!(a[1]["outcome"], "ok");
}

#[tokio::test]
async fn bad_user_input_gets_a_named_4xx_and_changes_nothing() {
    let api = Api::new();
    api.add_user("taken@example.com", "member", "homelabber")
        .await;
    api.call(
        Method::POST,
        "/api/v1/services",
        &Auth::Root,
        Some(json!({"name": "grafana", "url": "https://g.lab", "upstream": "10.0.0.2:3000", "requiredRole": "admin"})),
    )
    .await;
    let base = json!({"email": "new@example.com", "displayName": "New", "role": "member", "osProfile": "homelabber"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            with("login", json!("a/b")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("login", json!("..")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("login", json!("Alice")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("login", json!("\u{0430}lice")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("login", json!("a".repeat(13))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("login", json!("root")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("login", json!("taken")),
            StatusCode::CONFLICT,
            "login_taken",
        ),
        (
            with("email", json!("TAKEN@example.com")).clone(),
            StatusCode::CONFLICT,
            "login_taken",
        ),
        (
            {
                let mut b = with("email", json!("TAKEN@example.com"));
                b["login"] = json!("other");
                b
            },
            StatusCode::CONFLICT,
            "email_taken",
        ),
        (
            with("email", json!("not-an-email")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
        ),
        (
            with("email", json!("123@example.com")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_login",
        ),
        (
            with("role", json!("root")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_role",
        ),
        (
            with("osProfile", json!("gamer")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_profile",
        ),
        (
            with("osProfile", json!("../admin")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_profile",
        ),
        (
            {
                let mut b = with("role", json!("demo"));
                b["osProfile"] = json!("homelabber");
                b
            },
            StatusCode::UNPROCESSABLE_ENTITY,
            "profile_unsuitable",
        ),
        (
            with("services", json!(["nope"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_service",
        ),
        (
            with("services", json!(["grafana"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "service_requires_role",
        ),
        (
            with("services", json!(["Bad Name"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_service_name",
        ),
        (
            with("displayName", json!("a\nb")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_display_name",
        ),
        (
            with("isAdmin", json!(true)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"email": "x@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            with("role", json!(5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, kind) in cases {
        let r = api
            .call(
                Method::POST,
                "/api/v1/users",
                &Auth::Root,
                Some(body.clone()),
            )
            .await;
        assert_eq!((r.status, r.kind()), (status, kind), "{body}: {}", r.text);
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    // Malformed JSON, wrong content type, oversized body.
    let req = |ct: &str, body: Vec<u8>| {
        Api::request(Method::POST, "/api/v1/users", &Auth::Root, PEER)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body))
            .unwrap()
    };
    let r = api
        .raw(req("application/json", b"{\"email\": ".to_vec()))
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let r = api
        .raw(req("text/plain", base.to_string().into_bytes()))
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let big = format!("{{\"email\": \"{}\"}}", "a".repeat(2 << 20));
    let r = api.raw(req("application/json", big.into_bytes())).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );

    assert_eq!(
        api.user_count().await,
        1,
        "a failed create changed something"
    );
    // Every refused create that reached the use case is audited; bodies that do not parse
    // (invalid_body, malformed JSON, wrong type, too large) never named a target.
    let invalid = api
        .audit("action=user.create&outcome=invalid&limit=1000")
        .await;
    assert_eq!(invalid.len(), 19, "failed creates are audited");
}

#[tokio::test]
async fn users_are_addressed_by_login_or_email_and_filtered() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    api.add_user("viz@example.com", "demo", "demo").await;
    api.add_user("boss@example.com", "admin", "admin").await;
    for key in [
        "alice",
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "alice%40example.com",
    ] {
        let r = api.get(&format!("/api/v1/users/{key}"), &Auth::Root).await;
        assert_eq!(r.status, StatusCode::OK, "{key}");
        assert_eq!(r.body["login"], "alice");
    }
    let r = api.get("/api/v1/users?role=demo", &Auth::Root).await;
    let logins: Vec<_> = r.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["login"].clone())
        .collect();
    assert_eq!(logins, [json!("viz")]);
    let r = api.get("/api/v1/users?profile=admin", &Auth::Root).await;
    assert_eq!(r.body["users"].as_array().unwrap().len(), 1);
    let r = api.get("/api/v1/users?disabled=false", &Auth::Root).await;
    assert_eq!(r.body["users"].as_array().unwrap().len(), 3);
    let r = api.get("/api/v1/users?role=root", &Auth::Root).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_role")
    );
    let r = api.get("/api/v1/users?colour=blue", &Auth::Root).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
}

#[tokio::test]
async fn a_member_sees_only_themself_and_others_look_absent() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    api.add_user("bob@example.com", "member", "homelabber")
        .await;
    let alice = api.token("user", Some("alice")).await;
    assert_eq!(
        api.get("/api/v1/users/alice", &alice).await.status,
        StatusCode::OK
    );
    let other = api.get("/api/v1/users/bob", &alice).await;
    let absent = api.get("/api/v1/users/nobody-here", &alice).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(
        other.body, absent.body,
        "another user's record must look absent"
    );
    for (method, uri) in [
        (Method::GET, "/api/v1/users/bob/services"),
        (Method::GET, "/api/v1/users/bob/state"),
        (Method::GET, "/api/v1/users/bob/state/wallpaper"),
    ] {
        assert_eq!(
            api.call(method, uri, &alice, None).await.status,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
    let r = api
        .call(
            Method::PUT,
            "/api/v1/users/bob/state/wallpaper",
            &alice,
            Some(json!("x")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Admin routes are forbidden, not hidden.
    for (method, uri, body) in [
        (Method::GET, "/api/v1/users", None),
        (
            Method::POST,
            "/api/v1/users",
            Some(
                json!({"email": "c@example.com", "displayName": "C", "role": "admin", "osProfile": "admin"}),
            ),
        ),
        (
            Method::PATCH,
            "/api/v1/users/alice",
            Some(json!({"role": "admin"})),
        ),
        (Method::DELETE, "/api/v1/users/bob", None),
        (
            Method::POST,
            "/api/v1/services",
            Some(json!({"name": "x", "url": "https://x.lab", "upstream": "10.0.0.1:1"})),
        ),
        (Method::GET, "/api/v1/audit", None),
    ] {
        let r = api.call(method.clone(), uri, &alice, body).await;
        assert_eq!(
            (r.status, r.kind()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {uri}"
        );
    }
    assert_eq!(api.user_count().await, 2);
    assert_eq!(
        api.get("/api/v1/users/alice", &Auth::Root).await.body["role"],
        "member"
    );
    let denied = api.audit("outcome=denied&action=user").await;
    assert_eq!(denied.len(), 3, "denied mutations are audited");
    assert_eq!(denied[0]["actor"], "alice");
}

#[tokio::test]
async fn a_user_token_of_an_admin_user_acts_as_admin() {
    let api = Api::new();
    api.add_user("boss@example.com", "admin", "admin").await;
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    let boss = api.token("user", Some("boss")).await;
    assert_eq!(api.get("/api/v1/users", &boss).await.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v1/users/alice", &boss).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_service_token_acts_for_non_admin_users_only() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    api.add_user("boss@example.com", "admin", "admin").await;
    let front = api.token("service", None).await;
    assert_eq!(
        api.get("/api/v1/users/alice", &front).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/v1/users/alice/services", &front).await.status,
        StatusCode::OK
    );
    let r = api
        .call(
            Method::PUT,
            "/api/v1/users/alice/state/theme",
            &front,
            Some(json!("dark")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v1/users/boss", &front).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/users", &front).await.status,
        StatusCode::FORBIDDEN
    );
    let r = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            &front,
            Some(json!({"kind": "user", "user": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/api/v1/tokens", &front).await.status,
        StatusCode::FORBIDDEN
    );
    let put = api.audit("action=state.put").await;
    assert_eq!(put[0]["actor"], "service:service");
    assert!(put[0]["tokenId"].is_string());
}

#[tokio::test]
async fn update_changes_role_profile_services_and_validates_the_result() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    api.call(
        Method::POST,
        "/api/v1/services",
        &Auth::Root,
        Some(json!({"name": "jellyfin", "url": "https://jf.lab", "upstream": "10.0.0.5:8096"})),
    )
    .await;
    let r = api
        .call(Method::PATCH, "/api/v1/users/alice", &Auth::Root,
            Some(json!({"displayName": "Alice A.", "osProfile": "developer", "services": ["jellyfin"]})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["osProfile"], "developer");
    assert_eq!(r.body["services"], json!(["jellyfin"]));
    assert_eq!(r.body["displayName"], "Alice A.");
    assert_eq!(r.body["role"], "member");
    // Demo with a persistent profile is refused; nothing changes.
    let r = api
        .call(
            Method::PATCH,
            "/api/v1/users/alice",
            &Auth::Root,
            Some(json!({"role": "demo"})),
        )
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "profile_unsuitable")
    );
    let r = api
        .call(
            Method::PATCH,
            "/api/v1/users/alice",
            &Auth::Root,
            Some(json!({"role": "demo", "osProfile": "demo"})),
        )
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "service_requires_role")
    );
    let r = api
        .call(
            Method::PATCH,
            "/api/v1/users/alice",
            &Auth::Root,
            Some(json!({"role": "demo", "osProfile": "demo", "services": []})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["role"], "demo");
    let r = api
        .call(
            Method::PATCH,
            "/api/v1/users/alice",
            &Auth::Root,
            Some(json!({"uid": 0})),
        )
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
    );
    let r = api
        .call(
            Method::PATCH,
            "/api/v1/users/ghost",
            &Auth::Root,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_user_removes_them_and_their_tokens() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    let alice = api.token("user", Some("alice")).await;
    let r = api
        .call(
            Method::DELETE,
            "/api/v1/users/alice@example.com",
            &Auth::Root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/api/v1/users/alice", &Auth::Root).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/v1/users/alice", &alice).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call(Method::DELETE, "/api/v1/users/alice", &Auth::Root, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // The login can be reused; the uid is not.
    let r = api
        .add_user("alice@example.com", "member", "homelabber")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["uid"], 1001);
    assert_eq!(r.body["subnet"], "10.87.0.0/24");
}

// ---- tokens -------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_are_shown_once_listed_without_secrets_and_revocable() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    let r = api
        .call(Method::POST, "/api/v1/tokens", &Auth::Root,
            Some(json!({"kind": "user", "user": "alice@example.com", "name": "laptop", "expiresIn": "7d"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("orch_"));
    assert_eq!(r.body["user"], "alice");
    assert_eq!(r.body["kind"], "user");
    assert_eq!(r.body["name"], "laptop");
    let list = api.get("/api/v1/tokens", &Auth::Root).await;
    assert!(
        !list.text.contains(&secret[18..]),
        "a listing leaked a secret"
    );
    let tokens = list.body["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0]["revokedAt"].is_null());
    let audit = api.audit("action=token.create").await;
    assert!(
        !audit[0].to_string().contains(&secret[18..]),
        "the audit log leaked a secret"
    );
    let id = tokens[0]["id"].as_str().unwrap();
    // A member lists and revokes their own tokens only.
    let alice = Auth::Bearer(secret.clone());
    assert_eq!(
        api.get("/api/v1/tokens", &alice).await.body["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &alice,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("/api/v1/tokens", &alice).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &Auth::Root,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT,
        "revoking twice is fine"
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            "/api/v1/tokens/000000000000",
            &Auth::Root,
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn token_requests_are_validated() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    api.add_user("bob@example.com", "member", "homelabber")
        .await;
    api.add_user("viz@example.com", "demo", "demo").await;
    let cases = [
        (
            json!({"kind": "root"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token_kind",
        ),
        (
            json!({"kind": "user"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"kind": "admin", "user": "alice"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"kind": "admin", "expiresIn": "forever"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_expiry",
        ),
        (
            json!({"kind": "admin", "expiresIn": "3651d"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_expiry",
        ),
        (
            json!({"kind": "admin", "expiresIn": "0s"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_expiry",
        ),
        (
            json!({"kind": "admin", "name": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_token_name",
        ),
        (
            json!({"kind": "user", "user": "ghost"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"kind": "admin", "secret": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, kind) in cases {
        let r = api
            .call(
                Method::POST,
                "/api/v1/tokens",
                &Auth::Root,
                Some(body.clone()),
            )
            .await;
        assert_eq!((r.status, r.kind()), (status, kind), "{body}");
    }
    let alice = api.token("user", Some("alice")).await;
    let own = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            &alice,
            Some(json!({"kind": "user", "user": "alice"})),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED);
    let other = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            &alice,
            Some(json!({"kind": "user", "user": "bob"})),
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let admin = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            &alice,
            Some(json!({"kind": "admin"})),
        )
        .await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN);
    let viz = api.token("user", Some("viz")).await;
    let demo = api
        .call(
            Method::POST,
            "/api/v1/tokens",
            &viz,
            Some(json!({"kind": "user", "user": "viz"})),
        )
        .await;
    assert_eq!(demo.status, StatusCode::FORBIDDEN);
}

// ---- services -----------------------------------------------------------------------------

async fn add_service(api: &Api, name: &str, role: &str, owner: Option<&str>) -> Resp {
    let mut body = json!({"name": name, "category": "media", "url": format!("https://{name}.lab"),
                          "upstream": "192.168.1.10:8096", "requiredRole": role, "icon": "mdi-play"});
    if let Some(o) = owner {
        body["owner"] = json!(o);
    }
    api.call(Method::POST, "/api/v1/services", &Auth::Root, Some(body))
        .await
}

#[tokio::test]
async fn services_are_registered_listed_checked_and_removed() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    api.add_user("bob@example.com", "member", "homelabber")
        .await;
    let r = add_service(&api, "jellyfin", "member", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["upstream"], "192.168.1.10:8096");
    assert_eq!(r.body["requiredRole"], "member");
    add_service(&api, "grafana", "admin", None).await;
    let r = add_service(&api, "bobs-app", "admin", Some("bob@example.com")).await;
    assert_eq!(r.body["owner"], "bob");
    let r = add_service(&api, "jellyfin", "member", None).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::CONFLICT, "service_exists")
    );

    api.call(
        Method::PATCH,
        "/api/v1/users/alice",
        &Auth::Root,
        Some(json!({"services": ["jellyfin"]})),
    )
    .await;
    let names = |r: &Resp| -> Vec<String> {
        r.body["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&api.get("/api/v1/services", &Auth::Root).await),
        ["bobs-app", "grafana", "jellyfin"]
    );
    assert_eq!(
        names(&api.get("/api/v1/users/alice/services", &Auth::Root).await),
        ["jellyfin"]
    );
    assert_eq!(
        names(&api.get("/api/v1/users/bob/services", &Auth::Root).await),
        ["bobs-app"]
    );
    let alice = api.token("user", Some("alice")).await;
    assert_eq!(
        names(&api.get("/api/v1/services", &alice).await),
        ["jellyfin"]
    );

    let check = |user: &str, svc: &str| format!("/api/v1/users/{user}/services/{svc}/access");
    let r = api.get(&check("alice", "jellyfin"), &Auth::Root).await;
    assert_eq!(
        (r.status, r.body["allowed"].clone()),
        (StatusCode::OK, json!(true))
    );
    let r = api.get(&check("alice", "grafana"), &Auth::Root).await;
    assert_eq!(
        (r.status, r.body["allowed"].clone()),
        (StatusCode::FORBIDDEN, json!(false))
    );
    let r = api.get(&check("bob", "bobs-app"), &Auth::Root).await;
    assert_eq!(r.status, StatusCode::OK, "owners always may");
    let r = api.get(&check("alice", "nope"), &Auth::Root).await;
    assert_eq!((r.status, r.kind()), (StatusCode::NOT_FOUND, "not_found"));
    let r = api.get(&check("bob", "jellyfin"), &alice).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "members cannot probe other users"
    );

    assert_eq!(
        api.call(
            Method::DELETE,
            "/api/v1/services/jellyfin",
            &Auth::Root,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("/api/v1/users/alice", &Auth::Root).await.body["services"],
        json!([])
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            "/api/v1/services/jellyfin",
            &Auth::Root,
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let a = api.audit("action=service").await;
    assert_eq!(a.len(), 6, "{a:?}");
}

#[tokio::test]
async fn bad_service_input_is_refused_with_a_kind() {
    let api = Api::new();
    let base = json!({"name": "svc", "url": "https://svc.lab", "upstream": "10.0.0.1:80"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("name", json!("../x")), "invalid_service_name"),
        (with("url", json!("javascript:alert(1)")), "invalid_url"),
        (with("upstream", json!("10.0.0.1")), "invalid_upstream"),
        (with("upstream", json!("10.0.0.1:0")), "invalid_upstream"),
        (with("category", json!("Media Stuff")), "invalid_category"),
        (with("requiredRole", json!("owner")), "invalid_role"),
        (with("icon", json!("a b")), "invalid_icon"),
        (with("owner", json!("ghost")), "unknown_owner"),
        (with("port", json!(80)), "invalid_body"),
    ];
    for (body, kind) in cases {
        let r = api
            .call(
                Method::POST,
                "/api/v1/services",
                &Auth::Root,
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.kind()),
            (StatusCode::UNPROCESSABLE_ENTITY, kind),
            "{body}"
        );
    }
    assert_eq!(
        api.get("/api/v1/services", &Auth::Root).await.body["services"],
        json!([])
    );
}

// ---- desktop state ------------------------------------------------------------------------

#[tokio::test]
async fn desktop_state_round_trips_per_user_and_key() {
    let api = Api::new();
    api.add_user("alice@example.com", "member", "homelabber")
        .await;
    let alice = api.token("user", Some("alice")).await;
    let windows = json!([{"app": "terminal", "x": 10, "y": 20}]);
    let r = api
        .call(
            Method::PUT,
            "/api/v1/users/alice/state/windows",
            &alice,
            Some(windows.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["value"], windows);
    api.call(
        Method::PUT,
        "/api/v1/users/alice/state/wallpaper",
        &alice,
        Some(json!("blue.png")),
    )
    .await;
    api.call(
        Method::PUT,
        "/api/v1/users/alice/state/wallpaper",
        &alice,
        Some(json!("red.png")),
    )
    .await;
    let r = api.get("/api/v1/users/alice/state/wallpaper", &alice).await;
    assert_eq!(r.body["value"], "red.png");
    let r = api.get("/api/v1/users/alice/state", &alice).await;
    assert_eq!(
        r.body["state"],
        json!({"wallpaper": "red.png", "windows": windows})
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            "/api/v1/users/alice/state/windows",
            &alice,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.get("/api/v1/users/alice/state/windows", &alice)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            "/api/v1/users/alice/state/windows",
            &alice,
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let r = api
        .call(
            Method::PUT,
            "/api/v1/users/alice/state/Bad%20Key",
            &alice,
            Some(json!(1)),
        )
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_state_key")
    );
    let big = json!("x".repeat(70 * 1024));
    let r = api
        .call(
            Method::PUT,
            "/api/v1/users/alice/state/big",
            &alice,
            Some(big),
        )
        .await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::UNPROCESSABLE_ENTITY, "value_too_large")
    );
    let puts = api.audit("action=state.put").await;
    assert_eq!(puts.len(), 5);
    assert!(
        puts.iter().all(|e| !e.to_string().contains("red.png")),
        "state values must not be audited"
    );
}

// ---- audit --------------------------------------------------------------------------------

#[tokio::test]
async fn audit_is_filtered_newest_first_and_paginated() {
    let api = Api::new();
    for i in 0..5 {
        api.add_user(&format!("u{i}@example.com"), "member", "homelabber")
            .await;
    }
    api.add_user("bad", "member", "homelabber").await;
    let all = api.audit("limit=1000").await;
    assert_eq!(all.len(), 6);
    assert!(all
        .windows(2)
        .all(|w| w[0]["id"].as_i64() > w[1]["id"].as_i64()));
    let r = api.get("/api/v1/audit?limit=4", &Auth::Root).await;
    let next = r.body["next"].as_i64().unwrap();
    let page2 = api.audit(&format!("limit=4&before={next}")).await;
    assert_eq!(page2.len(), 2);
    let r = api
        .get(&format!("/api/v1/audit?limit=4&before={next}"), &Auth::Root)
        .await;
    assert!(r.body["next"].is_null());
    // A page that ends exactly at the last entry has no next page either.
    let r = api.get("/api/v1/audit?limit=6", &Auth::Root).await;
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 6);
    assert!(r.body["next"].is_null(), "{}", r.text);
    assert_eq!(api.audit("outcome=invalid").await.len(), 1);
    assert_eq!(api.audit("user=u3").await.len(), 1);
    assert_eq!(api.audit("user=u3@example.com").await.len(), 1);
    assert_eq!(api.audit("since=2000-01-01T00:00:00Z").await.len(), 6);
    assert_eq!(api.audit("until=946684800").await.len(), 0);
    let r = api.get("/api/v1/audit?outcome=maybe", &Auth::Root).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
    let r = api.get("/api/v1/audit?since=yesterday", &Auth::Root).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );
}

#[tokio::test]
async fn box_routes_answer_503_without_a_runtime_and_still_authorize_first() {
    let api = Api::new();
    let r = api
        .call(
            Method::POST,
            "/api/v1/boxes/nobody/start",
            &Auth::Root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = api
        .add_user("alice@example.com", "member", "homelabber")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = api
        .call(Method::POST, "/api/v1/boxes/alice/start", &Auth::Root, None)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.body["error"]["kind"], "unavailable");
    let r = api.get("/api/v1/boxes", &Auth::Root).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["boxes"][0]["state"], "absent", "{}", r.text);
    let r = api.get("/api/v1/boxes?state=flying", &Auth::Root).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = api
        .call(
            Method::POST,
            "/api/v1/boxes/bulk",
            &Auth::Root,
            Some(json!({"action": "explode"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let member = api.token("user", Some("alice")).await;
    let r = api
        .call(
            Method::POST,
            "/api/v1/boxes/bulk",
            &member,
            Some(json!({"action": "stop"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // The network view: 404 for a user that does not exist, 503 without a runtime.
    let r = api.get("/api/v1/users/nobody/network", &Auth::Root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = api.get("/api/v1/users/alice/network", &Auth::Root).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
}

// ---- terminal -----------------------------------------------------------------------------

#[tokio::test]
async fn terminal_tickets_are_for_users_with_a_terminal_that_the_caller_may_act_for() {
    let api = Api::new();
    api.add_user("ann@example.com", "member", "homelabber")
        .await;
    api.add_user("vis@example.com", "demo", "demo").await;
    let svc = api.token("service", None).await;
    let ann = api.token("user", Some("ann")).await;
    let tickets = |u: &str| format!("/api/v1/boxes/{u}/terminal/tickets");
    let r = api
        .call(Method::POST, &tickets("ann"), &svc, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["ticket"].as_str().unwrap().len(), 64);
    assert_eq!(r.body["expiresInSecs"], 30);
    // Demo profiles have no terminal.
    let r = api
        .call(Method::POST, &tickets("vis"), &svc, Some(json!({})))
        .await;
    assert_eq!((r.status, r.kind()), (StatusCode::FORBIDDEN, "forbidden"));
    // A member asking for another user's box gets what a missing user gets.
    let r = api
        .call(Method::POST, &tickets("vis"), &ann, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(Method::POST, &tickets("nobody"), &ann, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A session that does not exist; unknown fields.
    let r = api
        .call(
            Method::POST,
            &tickets("ann"),
            &ann,
            Some(json!({"session": "ab"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(
            Method::POST,
            &tickets("ann"),
            &ann,
            Some(json!({"user": "x"})),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text);
    let audit = api.audit("action=terminal.ticket").await;
    assert!(audit.len() >= 3, "{audit:?}");
    // Sessions are listed empty; closing one that does not exist is 404.
    let r = api.get("/api/v1/boxes/ann/terminal/sessions", &ann).await;
    assert_eq!(r.body, json!({"sessions": []}));
    let r = api
        .call(
            Method::DELETE,
            "/api/v1/boxes/ann/terminal/sessions/abc",
            &ann,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_terminal_route_refuses_foreign_origins_and_plain_requests() {
    let api = Api::new();
    api.add_user("ann@example.com", "member", "homelabber")
        .await;
    let req = Api::request(Method::GET, "/api/v1/boxes/ann/terminal", &Auth::Root, PEER)
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let r = api.raw(req).await;
    assert_eq!((r.status, r.kind()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(api.audit("action=auth.failure").await.len(), 1);
    let r = api.get("/api/v1/boxes/ann/terminal", &Auth::Root).await;
    assert_eq!(
        (r.status, r.kind()),
        (StatusCode::BAD_REQUEST, "websocket_required")
    );
    let r = api
        .get("/api/v1/boxes/ann/terminal?bogus=1", &Auth::Root)
        .await;
    assert!(r.status.is_client_error());
}

#[test]
fn origins_match_the_configured_list_exactly() {
    use super::auth::origin_allowed;
    let allowed = vec!["https://lab.example.com".to_string()];
    let mut h = axum::http::HeaderMap::new();
    assert!(origin_allowed(&h, &allowed), "no Origin: not a browser");
    h.insert(header::ORIGIN, "https://lab.example.com".parse().unwrap());
    assert!(origin_allowed(&h, &allowed));
    for bad in [
        "https://lab.example.com.evil.net",
        "http://lab.example.com",
        "https://lab.example.com:8443",
        "null",
    ] {
        h.insert(header::ORIGIN, bad.parse().unwrap());
        assert!(!origin_allowed(&h, &allowed), "{bad}");
    }
}

#[tokio::test]
async fn tickets_die_with_their_token_and_are_single_use() {
    let api = Api::new();
    api.add_user("ann@example.com", "member", "homelabber")
        .await;
    let ann = api.token("user", Some("ann")).await;
    let mint = || async {
        let r = api
            .call(
                Method::POST,
                "/api/v1/boxes/ann/terminal/tickets",
                &ann,
                Some(json!({})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["ticket"].as_str().unwrap().to_string()
    };
    let app = &api.state.app;
    let t = mint().await;
    assert!(app.redeem_ticket(&t, "test").is_ok());
    assert!(app.redeem_ticket(&t, "test").is_err(), "single use");
    let t = mint().await;
    let Auth::Bearer(secret) = &ann else {
        unreachable!()
    };
    let id = secret.split('_').nth(1).unwrap();
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            &Auth::Root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert!(
        app.redeem_ticket(&t, "test").is_err(),
        "a ticket of a revoked token"
    );
}

#[tokio::test]
async fn a_disabled_user_gets_no_terminal_even_with_a_ticket_minted_before() {
    let api = Api::new();
    api.add_user("ann@example.com", "member", "homelabber")
        .await;
    let ann = api.token("user", Some("ann")).await;
    let r = api
        .call(
            Method::POST,
            "/api/v1/boxes/ann/terminal/tickets",
            &ann,
            Some(json!({})),
        )
        .await;
    let t = r.body["ticket"].as_str().unwrap().to_string();
    let r = api
        .call(
            Method::PATCH,
            "/api/v1/users/ann",
            &Auth::Root,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let app = api.state.app.clone();
    let ticket = app.redeem_ticket(&t, "test").unwrap();
    let err = app
        .terminal_attach(&ticket.actor, "ann", &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::service::ServiceError::Forbidden(_)),
        "{err:?}"
    );
}
