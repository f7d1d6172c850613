//! File API tests, end to end through the router over a real local home in a temporary
//! state directory (run as root, like CI: the file operations switch to the user's ids).
//!
//! Every escape attempt has a writable, readable "outside" directory next to the homes,
//! so a resolution that left the home would succeed and the test would fail.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use policy::{Config, ProfileSet};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::auth::Peer;
use super::{router, AppState};
use crate::service::App;
use crate::store::Store;

const NOFILES: &str = r#"
description = "no file manager"
persistence = "persistent"
rootfs = "rw"
files = "none"
[limits]
memory = "1G"
cpu = 1
pids = 512
disk = "1G"
[network]
internet = false
lan = false
dns = "block"
"#;

struct Fx {
    _dir: tempfile::TempDir,
    state: PathBuf,
    outside: PathBuf,
    router: Router,
    app: Arc<App>,
}

struct Resp {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    bytes: Vec<u8>,
    body: Value,
}

impl Resp {
    fn kind(&self) -> &str {
        self.body["error"]["kind"].as_str().unwrap_or("<none>")
    }
}

#[derive(Clone)]
enum Who {
    Root,
    Token(String),
}

impl Fx {
    async fn new() -> Fx {
        Self::with_limit("8G").await
    }

    async fn with_limit(limit: &str) -> Fx {
        let dir = tempfile::tempdir().unwrap();
        // World-searchable, with a world-writable `outside`: an escape would work.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("state");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&state).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(outside.join("secret"), "outside secret").unwrap();
        std::fs::set_permissions(
            outside.join("secret"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let config: Config = toml::from_str(&format!(
            "state_dir = {:?}\n[files]\nupload_limit = {limit:?}\n",
            state.display().to_string()
        ))
        .unwrap();
        let mut sources: Vec<(&str, &str)> = policy::profile::BUILTIN.to_vec();
        sources.push(("nofiles", NOFILES));
        let profiles = ProfileSet::from_sources(sources).unwrap();
        let app = App::new(config, profiles, Store::open_in_memory().unwrap());
        let st = AppState::new(app);
        let fx = Fx {
            _dir: dir,
            state,
            outside,
            router: router(st.clone()),
            app: st.app.clone(),
        };
        fx.add_user("alice@example.com", "member", "homelabber")
            .await;
        fx
    }

    async fn add_user(&self, email: &str, role: &str, profile: &str) {
        let r = self
            .json(
                Method::POST,
                "/api/v1/users",
                &Who::Root,
                json!({"email": email, "displayName": email, "role": role, "osProfile": profile}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    async fn token(&self, user: &str) -> Who {
        let r = self
            .json(
                Method::POST,
                "/api/v1/tokens",
                &Who::Root,
                json!({"kind": "user", "user": user}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        Who::Token(r.body["token"].as_str().unwrap().into())
    }

    fn home(&self, user: &str) -> PathBuf {
        self.state.join("homes").join(user)
    }

    fn uid(&self, user: &str) -> u32 {
        self.app.store.find_user(user).unwrap().unwrap().uid
    }

    /// Makes `path` (in alice's home) belong to alice, as if she had made it.
    fn give(&self, path: &Path) {
        let uid = self.uid("alice");
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    }

    /// alice's home, created through the API (as a first visit would).
    async fn alice_home(&self) -> PathBuf {
        let r = self.get("/api/v1/users/alice/files", &Who::Root).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        self.home("alice")
    }

    fn builder(method: Method, uri: &str, who: &Who) -> axum::http::request::Builder {
        let b = Request::builder().method(method).uri(uri);
        match who {
            Who::Root => b.extension(Peer::Unix { uid: Some(0) }),
            Who::Token(t) => b
                .extension(Peer::Tcp("192.0.2.10:40000".parse().unwrap()))
                .header(header::AUTHORIZATION, format!("Bearer {t}")),
        }
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            bytes,
            body,
        }
    }

    async fn get(&self, uri: &str, who: &Who) -> Resp {
        self.send(
            Self::builder(Method::GET, uri, who)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// `POST /api/v1/users/alice/files/{op}` with `body`, as root.
    async fn post_root(&self, op: &str, body: Value) -> Resp {
        let uri = format!("/api/v1/users/alice/files/{op}");
        self.json(Method::POST, &uri, &Who::Root, body).await
    }

    async fn json(&self, method: Method, uri: &str, who: &Who, v: Value) -> Resp {
        self.send(
            Self::builder(method, uri, who)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn put(&self, query: &str, data: impl Into<Body>, who: &Who) -> Resp {
        self.send(
            Self::builder(
                Method::PUT,
                &format!("/api/v1/users/alice/files/content?{query}"),
                who,
            )
            .body(data.into())
            .unwrap(),
        )
        .await
    }

    async fn download(&self, path: &str) -> Resp {
        self.get(
            &format!("/api/v1/users/alice/files/content?path={path}"),
            &Who::Root,
        )
        .await
    }

    async fn audit(&self, action: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/api/v1/audit?action={action}"), &Who::Root)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["entries"].as_array().unwrap().clone()
    }

    fn outside_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn names(r: &Resp) -> Vec<String> {
    r.body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries: {}", r.body))
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---- the basics ------------------------------------------------------------------------

#[tokio::test]
async fn upload_lands_as_the_user_and_downloads_back() {
    let fx = Fx::new().await;
    let r = fx.put("path=/docs/a.txt", "hello", &Who::Root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "no parent yet: {}", r.body);
    let r = fx
        .post_root("mkdir", json!({"path": "docs/deep/er", "parents": true}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["type"], "dir");
    let r = fx.put("path=/docs/a.txt", "hello", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["size"], 5);
    assert_eq!(r.body["mode"], "644");
    let on_disk = fx.home("alice").join("docs/a.txt");
    let md = std::fs::metadata(&on_disk).unwrap();
    assert_eq!(md.uid(), fx.uid("alice"), "written with the user's fsuid");
    assert_eq!(md.gid(), fx.uid("alice"));
    assert_eq!(std::fs::read_to_string(&on_disk).unwrap(), "hello");
    let d = fx.download("docs/a.txt").await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.bytes, b"hello");
    assert_eq!(d.headers[header::CONTENT_LENGTH], "5");
    let r = fx
        .get("/api/v1/users/alice/files?path=docs", &Who::Root)
        .await;
    assert_eq!(names(&r), ["a.txt", "deep"]);
    assert_eq!(r.body["entries"][1]["type"], "dir");
    assert!(r.body.get("nextCursor").is_none());
    let r = fx
        .get(
            "/api/v1/users/alice/files/entry?path=docs/a.txt",
            &Who::Root,
        )
        .await;
    assert_eq!(r.body["uid"], fx.uid("alice"));
    // The overwrite guard, then an overwrite.
    let r = fx.put("path=docs/a.txt", "second", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.kind(), "file_exists");
    let r = fx
        .put("path=docs/a.txt&overwrite=true", "second", &Who::Root)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&on_disk).unwrap(), "second");
    assert_eq!(dir_names(&fx.home("alice").join("docs")), ["a.txt", "deep"]);
    let audit = fx.audit("file.write").await;
    // The refused first try, the write, the refused overwrite, the overwrite.
    assert_eq!(audit.len(), 4, "{audit:?}");
    assert!(audit.iter().any(|e| e["target"] == "alice:/docs/a.txt"));
    assert!(!serde_json::to_string(&audit).unwrap().contains("second"));
}

#[tokio::test]
async fn mkdir_move_copy_chmod_and_delete_work_and_are_audited() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    fx.put("path=a", "data", &Who::Root).await;
    let mk = |p: &str| json!({"path": p});
    let r = fx.post_root("mkdir", mk("d")).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = fx.post_root("mkdir", mk("d")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = fx
        .post_root("copy", json!({"from": "a", "to": "d/b"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(std::fs::read_to_string(home.join("d/b")).unwrap(), "data");
    let r = fx
        .post_root("move", json!({"from": "a", "to": "d/b"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "no overwrite by default");
    let r = fx
        .post_root("move", json!({"from": "a", "to": "d/c"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(!home.join("a").exists() && home.join("d/c").exists());
    let r = fx
        .json(
            Method::PATCH,
            "/api/v1/users/alice/files/entry?path=d/c",
            &Who::Root,
            json!({"mode": "4755"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["mode"], "755", "setuid is stripped");
    let mode = std::fs::metadata(home.join("d/c"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    let del = |q: &str| {
        Fx::builder(
            Method::DELETE,
            &format!("/api/v1/users/alice/files/entry?{q}"),
            &Who::Root,
        )
        .body(Body::empty())
        .unwrap()
    };
    let r = fx.send(del("path=d")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.kind(), "not_empty");
    let r = fx.send(del("path=/")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.kind(), "home_root");
    let r = fx.send(del("path=d&recursive=true")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(dir_names(&home), Vec::<String>::new());
    for action in [
        "file.mkdir",
        "file.copy",
        "file.rename",
        "file.chmod",
        "file.delete",
    ] {
        assert!(!fx.audit(action).await.is_empty(), "{action} not audited");
    }
    let r = fx.audit("file.rename").await;
    assert!(r
        .iter()
        .any(|e| e["detail"].as_str().unwrap_or("").contains("to /d/c")));
}

#[tokio::test]
async fn a_directory_is_copied_only_with_recursive_and_never_over_an_existing_name() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    let r = fx
        .post_root("mkdir", json!({"path": "d/sub", "parents": true}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    fx.put("path=d/a", "alpha", &Who::Root).await;
    fx.put("path=d/sub/b&mode=600", "beta", &Who::Root).await;
    let copy = |body: Value| fx.post_root("copy", body);

    let r = copy(json!({"from": "d", "to": "e"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.kind(), "is_a_directory");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("recursive"));
    let r = copy(json!({"from": "d", "to": "e", "recursive": true})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (r.body["type"].as_str(), r.body["name"].as_str()),
        (Some("dir"), Some("e"))
    );
    assert_eq!(std::fs::read_to_string(home.join("e/a")).unwrap(), "alpha");
    assert_eq!(
        std::fs::read_to_string(home.join("e/sub/b")).unwrap(),
        "beta"
    );
    let md = std::fs::metadata(home.join("e/sub/b")).unwrap();
    assert_eq!(
        (md.uid(), md.permissions().mode() & 0o7777),
        (fx.uid("alice"), 0o600)
    );
    for body in [
        json!({"from": "d", "to": "e", "recursive": true}),
        json!({"from": "d", "to": "e", "recursive": true, "overwrite": true}),
        json!({"from": "d", "to": "e/a", "recursive": true, "overwrite": true}),
    ] {
        let r = copy(body.clone()).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{body}: {}", r.body);
        assert_eq!(r.kind(), "file_exists");
    }
    let r = copy(json!({"from": "d", "to": "d/sub/x", "recursive": true})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.kind(), "into_itself");
    let r = copy(json!({"from": "d", "to": "f", "recursiv": true})).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
    assert_eq!(dir_names(&home), ["d", "e"], "nothing else was made");
    assert_eq!(dir_names(&home.join("e")), ["a", "sub"]);
    let audit = fx.audit("file.copy").await;
    assert!(
        audit.iter().any(|e| e["target"] == "alice:/e"
            && e["outcome"] == "ok"
            && e["detail"] == "from /d; recursive"),
        "{audit:?}"
    );

    let r = fx.get("/api/v1/openapi.json", &Who::Root).await;
    let props = &r.body["components"]["schemas"]["CopyRequest"]["properties"];
    assert!(props["recursive"].is_object(), "{props}");

    // Regression: a file copied through a symlink took the link's own mode (0777).
    std::os::unix::fs::symlink("d/sub/b", home.join("ln")).unwrap();
    fx.give(&home.join("ln"));
    let r = copy(json!({"from": "ln", "to": "c"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["mode"], "600");
}

#[tokio::test]
async fn a_directory_copy_over_the_upload_limit_is_refused_and_leaves_nothing() {
    let fx = Fx::with_limit("1M").await;
    let home = fx.alice_home().await;
    for f in ["a", "b"] {
        let r = fx
            .put(&format!("path={f}"), vec![1u8; 600 * 1024], &Who::Root)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    std::fs::create_dir(home.join("d")).unwrap();
    for f in ["a", "b"] {
        std::fs::rename(home.join(f), home.join("d").join(f)).unwrap();
    }
    let r = fx
        .post_root("copy", json!({"from": "d", "to": "e", "recursive": true}))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(r.kind(), "upload_too_large");
    assert_eq!(dir_names(&home), ["d"]);
}

#[tokio::test]
async fn uploads_lose_setuid_and_setgid() {
    let fx = Fx::new().await;
    let r = fx.put("path=s&mode=6755", "x", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mode = std::fs::metadata(fx.home("alice").join("s"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
}

#[tokio::test]
async fn range_and_conditional_downloads() {
    let fx = Fx::new().await;
    fx.put("path=f", "0123456789", &Who::Root).await;
    let req = |h: &[(header::HeaderName, &str)]| {
        let mut b = Fx::builder(
            Method::GET,
            "/api/v1/users/alice/files/content?path=f",
            &Who::Root,
        );
        for (k, v) in h {
            b = b.header(k, *v);
        }
        b.body(Body::empty()).unwrap()
    };
    let full = fx.send(req(&[])).await;
    let tag = full.headers[header::ETAG].to_str().unwrap().to_string();
    let lm = full.headers[header::LAST_MODIFIED]
        .to_str()
        .unwrap()
        .to_string();
    let r = fx.send(req(&[(header::RANGE, "bytes=2-4")])).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes, b"234");
    assert_eq!(r.headers[header::CONTENT_RANGE], "bytes 2-4/10");
    let r = fx.send(req(&[(header::RANGE, "bytes=-3")])).await;
    assert_eq!(r.bytes, b"789");
    let r = fx.send(req(&[(header::RANGE, "bytes=10-")])).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers[header::CONTENT_RANGE], "bytes */10");
    let r = fx.send(req(&[(header::IF_NONE_MATCH, &tag)])).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.bytes.is_empty());
    let r = fx.send(req(&[(header::IF_NONE_MATCH, "\"other\"")])).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = fx.send(req(&[(header::IF_MODIFIED_SINCE, &lm)])).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    // If-Range with a stale tag: the whole (changed) file.
    let r = fx
        .send(req(&[
            (header::RANGE, "bytes=0-0"),
            (header::IF_RANGE, "\"stale\""),
        ]))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes.len(), 10);
    let r = fx
        .send(req(&[
            (header::RANGE, "bytes=0-0"),
            (header::IF_RANGE, &tag),
        ]))
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
}

// ---- who may do what -------------------------------------------------------------------

#[tokio::test]
async fn demo_users_and_read_only_profiles_only_read() {
    let fx = Fx::new().await;
    fx.add_user("d@example.com", "demo", "demo").await;
    let demo = fx.token("d").await;
    let r = fx.get("/api/v1/users/d/files", &demo).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = fx
        .send(
            Fx::builder(Method::PUT, "/api/v1/users/d/files/content?path=x", &demo)
                .body(Body::from("x"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = fx
        .json(
            Method::POST,
            "/api/v1/users/d/files/mkdir",
            &Who::Root,
            json!({"path": "x"}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "read-only even for an admin"
    );
    assert_eq!(dir_names(&fx.home("d")), Vec::<String>::new());
}

#[tokio::test]
async fn a_profile_without_files_gets_403_and_others_get_404() {
    let fx = Fx::new().await;
    fx.add_user("n@example.com", "member", "nofiles").await;
    let r = fx.get("/api/v1/users/n/files", &Who::Root).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let alice = fx.token("alice").await;
    let r = fx.get("/api/v1/users/n/files", &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "another user's files");
    let r = fx.get("/api/v1/users/nobody/files", &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = fx.get("/api/v1/users/alice/files", &alice).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn permissions_inside_the_home_are_the_users_not_roots() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    std::fs::write(home.join("rootfile"), "root only").unwrap();
    std::fs::set_permissions(
        home.join("rootfile"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let r = fx.download("rootfile").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    std::fs::create_dir(home.join("rootdir")).unwrap();
    let r = fx.put("path=rootdir/x", "x", &Who::Root).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = fx
        .json(
            Method::PATCH,
            "/api/v1/users/alice/files/entry?path=rootfile",
            &Who::Root,
            json!({"mode": "666"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only the owner may chmod");
    // Root's supplementary group 0 is not the user's.
    std::fs::write(home.join("groupfile"), "group root").unwrap();
    std::fs::set_permissions(
        home.join("groupfile"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let r = fx.download("groupfile").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

// ---- escapes ---------------------------------------------------------------------------

#[tokio::test]
async fn traversal_in_any_spelling_is_refused_or_stays_inside() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    let rel_secret = "../../outside/secret";
    for (q, status, kind) in [
        ("..", StatusCode::UNPROCESSABLE_ENTITY, "invalid_path"),
        (
            "a/../../outside/secret",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_path",
        ),
        // %2e%2e%2f decodes to ../ in the query: refused like ..
        (
            "%2e%2e%2f%2e%2e%2foutside%2fsecret",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_path",
        ),
        // Double-encoded: the name `%2e%2e%2f...` literally, inside the home.
        (
            "%252e%252e%252foutside%252fsecret",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("a%00b", StatusCode::UNPROCESSABLE_ENTITY, "invalid_path"),
    ] {
        let r = fx.download(q).await;
        assert_eq!((r.status, r.kind()), (status, kind), "{q}");
    }
    let abs = fx.outside.join("secret").display().to_string();
    let r = fx.download(&abs).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "absolute paths are inside the home"
    );
    let r = fx
        .put(
            &format!("path={rel_secret}&overwrite=true"),
            "pwned",
            &Who::Root,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = fx.put(&format!("path={abs}"), "inside", &Who::Root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = fx.put("path=%252e%252e%252fx", "inside", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(dir_names(&home), ["%2e%2e%2fx"]);
    assert_eq!(
        std::fs::read_to_string(fx.outside.join("secret")).unwrap(),
        "outside secret"
    );
    assert_eq!(fx.outside_names(), ["secret"]);
}

#[tokio::test]
async fn symlinks_to_outside_resolve_inside_the_home() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    let out = fx.outside.display().to_string();
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, home.join(name)).unwrap();
        fx.give(&home.join(name));
    };
    link(&format!("{out}/secret"), "final"); // final component, absolute
    link("../../../outside/secret", "final_rel"); // final component, relative
    link(&out, "anc"); // ancestor, absolute
    link("../../../outside", "anc_rel"); // ancestor, relative
    link(&format!("{out}/created"), "dangling"); // dangling, then created through
    link("/proc/self/root/etc/passwd", "magic"); // a magic link path
    link("/proc/self/cwd", "magic_dir");
    for p in [
        "final",
        "final_rel",
        "anc/secret",
        "anc_rel/secret",
        "magic",
        "magic_dir/etc/passwd",
    ] {
        let r = fx.download(p).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}: {}", r.body);
        assert!(!String::from_utf8_lossy(&r.bytes).contains("outside secret"));
    }
    // The link itself is visible and described, with its target.
    let r = fx
        .get("/api/v1/users/alice/files/entry?path=final", &Who::Root)
        .await;
    assert_eq!(r.body["type"], "symlink");
    assert_eq!(r.body["target"], format!("{out}/secret"));
    // Writes through links never land outside.
    let r = fx.put("path=anc/new", "x", &Who::Root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = fx.put("path=anc_rel/new", "x", &Who::Root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = fx.put("path=dangling", "x", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "the link exists");
    let r = fx
        .put("path=dangling&overwrite=true", "x", &Who::Root)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(
        std::fs::symlink_metadata(home.join("dangling"))
            .unwrap()
            .is_file(),
        "the link was replaced"
    );
    let r = fx
        .post_root("mkdir", json!({"path": "anc/x/y", "parents": true}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = fx
        .json(
            Method::PATCH,
            "/api/v1/users/alice/files/entry?path=final",
            &Who::Root,
            json!({"mode": "600"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = fx
        .post_root("copy", json!({"from": "final", "to": "stolen"}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = fx
        .post_root("move", json!({"from": "anc/secret", "to": "stolen"}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Deleting a link deletes the link, recursively too.
    let r = fx
        .send(
            Fx::builder(
                Method::DELETE,
                "/api/v1/users/alice/files/entry?path=anc&recursive=true",
                &Who::Root,
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!home.join("anc").exists());
    assert_eq!(fx.outside_names(), ["secret"]);
    let md = std::fs::metadata(fx.outside.join("secret")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o666);
    assert_eq!(
        std::fs::read_to_string(fx.outside.join("secret")).unwrap(),
        "outside secret"
    );
}

#[tokio::test]
async fn recursive_delete_never_follows_a_symlink_out() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    std::fs::create_dir(home.join("d")).unwrap();
    fx.give(&home.join("d"));
    std::os::unix::fs::symlink(&fx.outside, home.join("d/out")).unwrap();
    fx.give(&home.join("d/out"));
    let r = fx
        .send(
            Fx::builder(
                Method::DELETE,
                "/api/v1/users/alice/files/entry?path=d&recursive=true",
                &Who::Root,
            )
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(fx.outside_names(), ["secret"]);
}

#[tokio::test]
async fn fifos_sockets_and_devices_are_refused_without_blocking() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    nix::unistd::mkfifo(
        &home.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    fx.give(&home.join("fifo"));
    nix::sys::stat::mknod(
        &home.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(home.join("sock")).unwrap();
    std::fs::set_permissions(home.join("sock"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink("fifo", home.join("to_fifo")).unwrap();
    for p in ["fifo", "null", "sock", "to_fifo"] {
        let r = fx.download(p).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{p}: {}",
            r.body
        );
        assert_eq!(r.kind(), "not_a_file");
        let r = fx.post_root("copy", json!({"from": p, "to": "c"})).await;
        assert_eq!(r.kind(), "not_a_file", "{p}");
    }
    let r = fx.put("path=to_fifo", "x", &Who::Root).await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "an existing name is not written through"
    );
    let r = fx.get("/api/v1/users/alice/files", &Who::Root).await;
    let types: Vec<&str> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["fifo", "char", "socket", "symlink"]);
}

#[tokio::test]
async fn a_hard_link_to_an_unreadable_file_stays_unreadable() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    let shadow = fx.outside.join("shadow");
    std::fs::write(&shadow, "root:$6$hash").unwrap();
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&shadow, home.join("hl")).unwrap();
    let r = fx.download("hl").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = fx.post_root("copy", json!({"from": "hl", "to": "c"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = fx.put("path=hl&overwrite=true", "x", &Who::Root).await;
    // Replacing the name is the user's right in their own directory; the file is not
    // written through.
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root:$6$hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_during_writes_never_lets_one_land_outside() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    std::fs::create_dir(home.join("real")).unwrap();
    fx.give(&home.join("real"));
    std::os::unix::fs::symlink("real", home.join("d")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (home, out, stop) = (home.clone(), fx.outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tmp = home.join(format!(".swap{n}"));
                let target = if n % 2 == 0 {
                    out.clone()
                } else {
                    PathBuf::from("real")
                };
                std::os::unix::fs::symlink(&target, &tmp).unwrap();
                std::fs::rename(&tmp, home.join("d")).unwrap();
                n += 1;
            }
            n
        })
    };
    let mut created = 0;
    for i in 0..300 {
        let r = fx.put(&format!("path=d/f{i}"), "x", &Who::Root).await;
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::NOT_FOUND,
            "{}: {}",
            r.status,
            r.body
        );
        if r.status == StatusCode::CREATED {
            created += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0);
    assert_eq!(fx.outside_names(), ["secret"], "nothing landed outside");
    assert_eq!(dir_names(&home.join("real")).len(), created);
}

// ---- limits ----------------------------------------------------------------------------

#[tokio::test]
async fn an_oversize_upload_is_refused_and_leaves_nothing() {
    let fx = Fx::with_limit("1M").await;
    let home = fx.alice_home().await;
    let big = vec![7u8; 2 * 1024 * 1024];
    // With a Content-Length: refused before a byte is written.
    let r = fx
        .send(
            Fx::builder(
                Method::PUT,
                "/api/v1/users/alice/files/content?path=big",
                &Who::Root,
            )
            .header(header::CONTENT_LENGTH, big.len())
            .body(Body::from(big.clone()))
            .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(r.kind(), "upload_too_large");
    // Streamed without a length: refused while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = fx
        .put(
            "path=big",
            Body::from_stream(futures_util::stream::iter(chunks)),
            &Who::Root,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(dir_names(&home), Vec::<String>::new());
    let r = fx
        .put("path=small", vec![1u8; 1024 * 1024], &Who::Root)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "exactly the limit is fine: {}",
        r.body
    );
}

#[tokio::test]
async fn an_abandoned_upload_leaves_nothing() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(vec![1u8; 64 * 1024]),
        Ok(vec![2u8; 64 * 1024]),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    let r = fx
        .put(
            "path=part",
            Body::from_stream(futures_util::stream::iter(chunks)),
            &Who::Root,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.kind(), "upload_aborted");
    assert_eq!(dir_names(&home), Vec::<String>::new());
    let audit = fx.audit("file.write").await;
    assert_eq!(audit[0]["outcome"], "invalid");
}

// ---- listing ---------------------------------------------------------------------------

#[tokio::test]
async fn listing_sorts_filters_hidden_files_and_pages_by_size() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    for (i, name) in ["c", "a", ".hidden", "b", "e", "d"].iter().enumerate() {
        std::fs::write(home.join(name), vec![0u8; (i * 7) % 5]).unwrap();
    }
    let r = fx.get("/api/v1/users/alice/files", &Who::Root).await;
    assert_eq!(names(&r), ["a", "b", "c", "d", "e"]);
    let r = fx
        .get(
            "/api/v1/users/alice/files?hidden=true&order=desc",
            &Who::Root,
        )
        .await;
    assert_eq!(names(&r), ["e", "d", "c", "b", "a", ".hidden"]);
    // By size, two at a time: same order as one page.
    let whole = fx
        .get(
            "/api/v1/users/alice/files?sort=size&hidden=true",
            &Who::Root,
        )
        .await;
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = fx
            .get(
                &format!("/api/v1/users/alice/files?sort=size&hidden=true&limit=2{cursor}"),
                &Who::Root,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        paged.extend(names(&r));
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, names(&whole));
    let sizes: Vec<u64> = whole.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
    let r = fx
        .get("/api/v1/users/alice/files?cursor=bogus", &Who::Root)
        .await;
    assert_eq!(r.kind(), "invalid_cursor");
    let r = fx
        .get("/api/v1/users/alice/files?sort=owner", &Who::Root)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = fx.get("/api/v1/users/alice/files?path=a", &Who::Root).await;
    assert_eq!(r.kind(), "not_a_directory");
}

#[tokio::test]
async fn paging_through_100k_entries_is_complete_and_stable_under_changes() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    let dir = home.join("big");
    std::fs::create_dir(&dir).unwrap();
    const N: usize = 100_000;
    for i in 0..N {
        std::fs::File::create(dir.join(format!("f{i:06}"))).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    let mut cursor = String::new();
    let mut page = 0;
    loop {
        let r = fx
            .get(
                &format!("/api/v1/users/alice/files?path=big&limit=5000{cursor}"),
                &Who::Root,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        for n in names(&r) {
            assert!(seen.insert(n.clone()), "{n} listed twice");
            order.push(n);
        }
        // Churn between pages: new names before and after the cursor, and a removal of a
        // name not yet listed that is then put back.
        std::fs::File::create(dir.join(format!("a-new{page}"))).unwrap();
        std::fs::File::create(dir.join(format!("z-new{page}"))).unwrap();
        page += 1;
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    for i in 0..N {
        assert!(seen.contains(&format!("f{i:06}")), "f{i:06} never listed");
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "pages follow one order");
    assert!(page >= N / 5000);
}

// ---- directory watch over a real WebSocket ---------------------------------------------

/// The router served on a loopback port, every connection as root on the admin socket.
async fn serve(fx: &Fx) -> (u16, tokio::task::JoinHandle<()>) {
    serve_as(fx, Peer::Unix { uid: Some(0) }).await
}

/// The router served on a loopback port, every connection coming from `peer`.
async fn serve_as(fx: &Fx, peer: Peer) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = fx.router.clone().layer(axum::Extension(peer));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, task)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads batches until `want` says it has seen enough; returns every event. The deadline
/// only guards against a hang and fails with what never arrived.
async fn events_until(ws: &mut Ws, what: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !want(&all) {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("never saw {what}; got {all:?}"))
            .expect("socket open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            all.extend(v["events"].as_array().unwrap().iter().cloned());
        }
    }
    all
}

fn has(events: &[Value], ty: &str, name: &str) -> bool {
    events
        .iter()
        .any(|e| e["type"] == ty && (e["name"] == name || e["to"] == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_watch_reports_changes_and_coalesces_bursts() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    std::fs::create_dir(home.join("w")).unwrap();
    fx.give(&home.join("w"));
    let (port, server) = serve(&fx).await;
    let url = format!("ws://127.0.0.1:{port}/api/v1/users/alice/files/watch?path=w");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    // Through the API and behind its back: both are seen.
    let r = fx.put("path=w/a.txt", "a", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CREATED);
    std::fs::write(home.join("w/b.txt"), "b").unwrap();
    let ev = events_until(&mut ws, "created a.txt and b.txt", |e| {
        has(e, "created", "a.txt") && has(e, "created", "b.txt")
    })
    .await;
    assert!(ev.iter().all(|e| e["name"] != "w"), "{ev:?}");

    std::fs::rename(home.join("w/a.txt"), home.join("w/c.txt")).unwrap();
    let ev = events_until(&mut ws, "renamed a.txt to c.txt", |e| {
        e.iter()
            .any(|x| x["type"] == "renamed" && x["from"] == "a.txt" && x["to"] == "c.txt")
    })
    .await;
    assert!(
        !has(&ev, "removed", "a.txt"),
        "a rename is one event: {ev:?}"
    );

    // A burst: 2000 appends to one file, then a marker file.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(home.join("w/b.txt"))
            .unwrap();
        for _ in 0..2000 {
            f.write_all(b"x").unwrap();
        }
    }
    std::fs::write(home.join("w/marker"), "").unwrap();
    let ev = events_until(&mut ws, "the marker after the burst", |e| {
        has(e, "created", "marker")
    })
    .await;
    let mods = ev
        .iter()
        .filter(|e| e["type"] == "modified" && e["name"] == "b.txt")
        .count();
    assert!(mods >= 1, "the burst was reported: {ev:?}");
    assert!(mods < 2000, "the burst was coalesced: {mods} events");

    std::fs::remove_file(home.join("w/c.txt")).unwrap();
    events_until(&mut ws, "removed c.txt", |e| has(e, "removed", "c.txt")).await;
    // The directory itself goes: "gone", then the socket closes.
    std::fs::remove_dir_all(home.join("w")).unwrap();
    events_until(&mut ws, "gone", |e| e.iter().any(|x| x["type"] == "gone")).await;
    server.abort();
}

/// Browsers cannot send an Authorization header on a WebSocket: a front end holding a
/// token mints a single-use ticket, and the browser opens the watch with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_a_watch_with_a_single_use_ticket_bound_to_the_user() {
    let fx = Fx::new().await;
    let home = fx.alice_home().await;
    fx.add_user("bob@example.com", "member", "homelabber").await;
    let alice = fx.token("alice").await;
    // Served as a TCP peer: nothing is root here.
    let (port, server) = serve_as(&fx, Peer::Tcp("192.0.2.10:40000".parse().unwrap())).await;
    let url = |user: &str, ticket: &str| {
        format!("ws://127.0.0.1:{port}/api/v1/users/{user}/files/watch?ticket={ticket}")
    };
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    };
    let mint = |user: &'static str| {
        let fx = &fx;
        let alice = &alice;
        async move {
            fx.json(
                Method::POST,
                &format!("/api/v1/users/{user}/files/watch/tickets"),
                alice,
                serde_json::json!({}),
            )
            .await
        }
    };
    // Without a token or ticket: refused.
    let e = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{port}/api/v1/users/alice/files/watch"
    ))
    .await
    .unwrap_err();
    assert_eq!(status(e), 401);
    // A member gets tickets for their own home only (another's looks absent).
    assert_eq!(mint("bob").await.status, StatusCode::NOT_FOUND);
    let r = mint("alice").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let ticket = r.body["ticket"].as_str().unwrap().to_string();
    assert_eq!(r.body["expiresInSecs"], 30);
    // Used for another user's home: refused, and used up.
    let e = tokio_tungstenite::connect_async(url("bob", &ticket))
        .await
        .unwrap_err();
    assert_eq!(status(e), 401);
    let e = tokio_tungstenite::connect_async(url("alice", &ticket))
        .await
        .unwrap_err();
    assert_eq!(status(e), 401, "a ticket is single use, also when refused");
    // A fresh one opens the watch, once.
    let ticket = mint("alice").await.body["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(url("alice", &ticket))
        .await
        .unwrap();
    std::fs::write(home.join("t.txt"), "t").unwrap();
    events_until(&mut ws, "created t.txt", |e| has(e, "created", "t.txt")).await;
    let e = tokio_tungstenite::connect_async(url("alice", &ticket))
        .await
        .unwrap_err();
    assert_eq!(status(e), 401, "reused");
    // A terminal ticket does not open a watch.
    let terminal = fx
        .json(
            Method::POST,
            "/api/v1/boxes/alice/terminal/tickets",
            &alice,
            serde_json::json!({}),
        )
        .await;
    assert_eq!(terminal.status, StatusCode::OK, "{:?}", terminal.body);
    let t = terminal.body["ticket"].as_str().unwrap();
    let e = tokio_tungstenite::connect_async(url("alice", t))
        .await
        .unwrap_err();
    assert_eq!(status(e), 401, "a terminal ticket is for the terminal");
    let audit = fx
        .get("/api/v1/audit?action=files.watch.ticket", &Who::Root)
        .await;
    assert!(
        audit.body["entries"].as_array().unwrap().len() >= 2,
        "{:?}",
        audit.body
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_per_user_and_check_origin_and_rights() {
    let fx = Fx::new().await;
    fx.alice_home().await;
    let (port, server) = serve(&fx).await;
    let url = format!("ws://127.0.0.1:{port}/api/v1/users/alice/files/watch");
    let status = |e: tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    };
    // A browser from a foreign origin is refused.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/api/v1/users/d/files/watch")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert_eq!(status(e), 403);
    // A file that is not a directory, and a missing one.
    std::fs::write(fx.home("alice").join("f"), "").unwrap();
    let e = tokio_tungstenite::connect_async(format!("{url}?path=f"))
        .await
        .unwrap_err();
    assert_eq!(status(e), 422);
    let e = tokio_tungstenite::connect_async(format!("{url}?path=nope"))
        .await
        .unwrap_err();
    assert_eq!(status(e), 404);
    let mut open = Vec::new();
    for _ in 0..crate::service::files::MAX_WATCHES_PER_USER {
        open.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    let e = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    assert_eq!(status(e), 409, "one watch too many");
    // Closing one gives its slot back.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => {
                open.push(ws);
                break;
            }
            Err(e) => {
                assert_eq!(status(e), 409);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_hold_more_than_a_few_transfers_at_once() {
    let fx = Fx::new().await;
    let r = fx
        .put("path=big", vec![3u8; 4 * 1024 * 1024], &Who::Root)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let get = || {
        Fx::builder(
            Method::GET,
            "/api/v1/users/alice/files/content?path=big",
            &Who::Root,
        )
        .body(Body::empty())
        .unwrap()
    };
    // Downloads whose bodies nobody reads: each keeps its reader busy.
    let mut held = Vec::new();
    for _ in 0..crate::service::files::MAX_TRANSFERS_PER_USER {
        let resp = fx.router.clone().oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        held.push(resp);
    }
    let r = fx.send(get()).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.kind(), "too_many_transfers");
    let r = fx.put("path=other", "x", &Who::Root).await;
    assert_eq!(r.kind(), "too_many_transfers", "uploads count too");
    // Another user is not affected.
    fx.add_user("bob@example.com", "member", "homelabber").await;
    let r = fx
        .get("/api/v1/users/bob/files/content?path=nothing", &Who::Root)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A client that goes away gives its slot back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let resp = fx.router.clone().oneshot(get()).await.unwrap();
        if resp.status() == StatusCode::OK {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 4 * 1024 * 1024);
            break;
        }
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until the server closes `ws`; the deadline only guards against a hang.
async fn closed(ws: &mut Ws, why: &str) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the watch stayed open after {why}"),
            Ok(None) | Ok(Some(Err(_))) => return,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_token_or_deleting_the_user_closes_open_watches() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let fx = Fx::new().await;
    fx.alice_home().await;
    let (port, server) = serve_as(&fx, Peer::Tcp("127.0.0.1:40000".parse().unwrap())).await;
    let open = |token: String| {
        let mut req = format!("ws://127.0.0.1:{port}/api/v1/users/alice/files/watch")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let r = fx
        .json(
            Method::POST,
            "/api/v1/tokens",
            &Who::Root,
            json!({"kind": "user", "user": "alice"}),
        )
        .await;
    let (secret, id) = (
        r.body["token"].as_str().unwrap().to_string(),
        r.body["id"].as_str().unwrap().to_string(),
    );
    let (mut ws, _) = open(secret.clone()).await.unwrap();
    let r = fx
        .send(
            Fx::builder(Method::DELETE, &format!("/api/v1/tokens/{id}"), &Who::Root)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    closed(&mut ws, "the token was revoked").await;
    assert!(
        open(secret).await.is_err(),
        "a revoked token cannot open another"
    );

    let Who::Token(second) = fx.token("alice").await else {
        unreachable!()
    };
    let (mut ws, _) = open(second).await.unwrap();
    let r = fx
        .send(
            Fx::builder(Method::DELETE, "/api/v1/users/alice", &Who::Root)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    closed(&mut ws, "the user was deleted").await;
    server.abort();
}

/// The chunked listing body is exactly the document `FileList` serialises to, for empty,
/// small and multi-chunk pages, with and without a cursor; large pages come in several
/// chunks.
#[tokio::test]
async fn listing_bodies_stream_the_same_json_as_the_file_list() {
    use crate::runtime::files::{Entry, Kind};
    use crate::service::files::{FileList, Listing};
    let entry = |i: usize| Entry {
        name: format!("entry \"{i}\" \u{e9}\n"),
        kind: if i % 3 == 0 {
            Kind::Symlink
        } else {
            Kind::File
        },
        size: i as u64,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_123_456_789 + i as i128,
        ino: i as u64,
        dev: 1,
        target: (i % 3 == 0).then(|| format!("../t{i}")),
    };
    for (n, cursor) in [
        (0, None),
        (1, None),
        (1, Some("c1")),
        (700, None),
        (5000, Some("b64cursor")),
    ] {
        let list = Listing {
            path: "/a \"b\"".into(),
            entries: (0..n).map(entry).collect(),
            next_cursor: cursor.map(str::to_string),
        };
        let want = serde_json::to_value(FileList::from(list.clone())).unwrap();
        assert_eq!(want["entries"].as_array().unwrap().len(), n);
        let mut body = super::files::list_body(list);
        let mut bytes = Vec::new();
        let mut chunks = 0;
        while let Some(frame) = body.frame().await {
            bytes.extend_from_slice(&frame.unwrap().into_data().unwrap());
            chunks += 1;
        }
        let got: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(got, want, "{n} entries, cursor {cursor:?}");
        if n == 5000 {
            assert!(chunks > 5, "{chunks} chunks for {} bytes", bytes.len());
        } else if n <= 1 {
            assert_eq!(chunks, 1);
        }
    }
}

/// A daemon killed mid-upload or mid-copy leaves a hidden staging entry and its row in
/// the staging table; the next run removes that run's leftovers in that directory the
/// first time it works in the home (and nothing else: this run's staging names and the
/// user's files stay). Uploads and copies of this run leave no row behind.
#[tokio::test]
async fn an_earlier_runs_unfinished_uploads_and_copies_are_swept_on_first_use() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fx::with_limit("1M").await;
    let u = fx.app.store.find_user("alice").unwrap().unwrap();
    let home = fx.home("alice");
    let up = home.join("up");
    let tree = up.join(".orchestratord-copy.00000000000000aa.3");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/f"), b"x").unwrap();
    std::fs::write(
        up.join(".orchestratord-upload.00000000000000aa.4"),
        b"partial",
    )
    .unwrap();
    let current = format!(
        ".orchestratord-upload.{:016x}.999999",
        crate::runtime::files::run_id()
    );
    for keep in [current.as_str(), "keep.txt", ".orchestratord-upload.mine"] {
        std::fs::write(up.join(keep), b"stays").unwrap();
    }
    let mut stack = vec![home.clone()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(u.uid), Some(u.gid)).unwrap();
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The half-built tree already has its read-only modes.
    std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
    fx.app
        .store
        .add_staging(u.id, "00000000000000aa", "/up", 0)
        .unwrap();

    let r = fx
        .get("/api/v1/users/alice/files?path=up&hidden=true", &Who::Root)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut want = vec![
        current.clone(),
        "keep.txt".into(),
        ".orchestratord-upload.mine".into(),
    ];
    want.sort();
    assert_eq!(names(&r), want);
    assert!(fx.app.store.stale_staging(u.id, "-").unwrap().is_empty());

    // This run's uploads and copies, finished or refused, leave no row.
    let r = fx.put("path=up/a.txt", "hello", &Who::Root).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let big = vec![0u8; 2 << 20];
    let r = fx.put("path=up/big.bin", big, &Who::Root).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    let r = fx
        .post_root("copy", json!({"from": "up/a.txt", "to": "up/b.txt"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(fx.app.store.stale_staging(u.id, "-").unwrap().is_empty());
}
