//! Commands as API calls: `plan` turns a parsed command into one request and a view that
//! says how to show its answer; `render` shows the answer. Both are pure apart from reading
//! stdin for `state set USER KEY -` and `exec --stdin`, so they are tested without a
//! daemon. `exec` is the one command whose answer is a stream: `exec::run` shows it.

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hyper::Method;
use serde_json::{json, Value};

use crate::boxes;
use crate::cli::{
    BoxCmd, Command, ExecArgs, NetCmd, ServiceCmd, StateCmd, TokenCmd, UserCmd, UserSet,
};
use crate::client::{api_path, query, usage, Call, Failure, Response};
use crate::output::{self, Column};

#[rustfmt::skip]
const USER_COLUMNS: &[Column] = &[("LOGIN", "login"), ("EMAIL", "email"), ("NAME", "displayName"),
    ("ROLE", "role"), ("PROFILE", "osProfile"), ("SERVICES", "services"),
    ("DISABLED", "disabled"), ("BOX", "boxState")];
#[rustfmt::skip]
const USER_FIELDS: &[&str] = &["login", "email", "displayName", "role", "osProfile", "services",
    "uid", "gid", "disabled", "subnet", "boxState", "createdAt", "updatedAt"];
#[rustfmt::skip]
const TOKEN_COLUMNS: &[Column] = &[("ID", "id"), ("KIND", "kind"), ("USER", "user"),
    ("NAME", "name"), ("CREATED", "createdAt"), ("EXPIRES", "expiresAt"), ("REVOKED", "revokedAt")];
#[rustfmt::skip]
const SERVICE_COLUMNS: &[Column] = &[("NAME", "name"), ("CATEGORY", "category"), ("URL", "url"),
    ("UPSTREAM", "upstream"), ("ROLE", "requiredRole"), ("OWNER", "owner")];
#[rustfmt::skip]
const SERVICE_FIELDS: &[&str] = &["name", "category", "url", "upstream", "requiredRole", "owner",
    "icon"];
#[rustfmt::skip]
const AUDIT_COLUMNS: &[Column] = &[("ID", "id"), ("TIME", "time"), ("ACTOR", "actor"),
    ("ACTION", "action"), ("TARGET", "target"), ("OUTCOME", "outcome"), ("DETAIL", "detail")];

/// How to show a successful answer in human mode.
#[derive(Debug, PartialEq)]
pub enum View {
    /// A table of the array under this field of the answer.
    Table(&'static str, &'static [Column]),
    Record(&'static [&'static str]),
    /// A 204 answer; print this confirmation.
    Done(String),
    TokenSecret,
    Access,
    StateMap,
    StateValue,
    Audit,
    /// A list of boxes; `now` places their expiry times.
    BoxTable(SystemTime),
    /// One box in detail.
    BoxStatus(SystemTime),
    /// The box after a lifecycle command, as one line.
    BoxState,
    /// A box's log: plain text (with `--json`, `{"user", "log"}`).
    Log(String),
    /// The results of a bulk operation; exit 1 if any failed.
    Bulk,
    /// A user's network policy.
    NetPolicy,
    /// A command in a box; its answer is a stream that `exec::run` shows, not `render`.
    Exec {
        timeout_secs: Option<u64>,
    },
}

fn get(path: String, view: View) -> (Call, View) {
    (
        Call {
            method: Method::GET,
            path,
            body: None,
        },
        view,
    )
}

fn delete(path: String, done: String) -> (Call, View) {
    (
        Call {
            method: Method::DELETE,
            path,
            body: None,
        },
        View::Done(done),
    )
}

/// A request with a JSON object body from which null fields are dropped: options left out
/// on the command line are left out of the body (the API rejects unknown fields, and for
/// PATCH absent means "unchanged").
fn with_fields(method: Method, path: String, mut body: Value, view: View) -> (Call, View) {
    if let Value::Object(fields) = &mut body {
        fields.retain(|_, value| !value.is_null());
    }
    (
        Call {
            method,
            path,
            body: Some(body),
        },
        view,
    )
}

/// `--since 2h` means two hours ago; other forms (RFC 3339, Unix seconds) go to the daemon
/// as they are, and the daemon validates them.
fn time_bound(text: Option<&String>, now: SystemTime) -> Option<String> {
    let text = text?;
    let Ok(span) = humantime::parse_duration(text) else {
        return Some(text.clone());
    };
    let then = now.checked_sub(span).unwrap_or(UNIX_EPOCH);
    Some(
        then.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string(),
    )
}

/// `net show` for people: the facts, the policy in words, the counters, the nft rules.
fn net_policy(body: &Value) -> String {
    let s = |k: &str| output::cell(body.get(k));
    let mut o = format!(
        "user:      {}\nsubnet:    {}\naddress:   {}\ngateway:   {}\ninterface: {}\n",
        s("user"),
        s("subnet"),
        s("address"),
        s("gateway"),
        s("interface")
    );
    if let Some(p) = body.get("packets").filter(|p| !p.is_null()) {
        let n = |k: &str| output::cell(p.get(k));
        o.push_str(&format!(
            "packets:   {} allowed ({} bytes), {} dropped ({} bytes)\n",
            n("allowedPackets"),
            n("allowedBytes"),
            n("droppedPackets"),
            n("droppedBytes")
        ));
    }
    o.push_str("\npolicy:\n");
    for line in body
        .get("policy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        o.push_str(&format!(
            "  - {}\n",
            output::sanitize(line.as_str().unwrap_or(""))
        ));
    }
    o.push_str("\nnft (table inet orchestratord):\n");
    let nft = body.get("nft").and_then(Value::as_str).unwrap_or_default();
    o.push_str(&output::sanitize_text(nft));
    o
}

/// Both flags of a `--x`/`--no-x` style pair as one optional value.
fn either(yes: bool, no: bool) -> Option<bool> {
    (yes || no).then_some(yes)
}

pub fn plan(command: &Command, stdin: &mut dyn Read, now: SystemTime) -> Result<(Call, View)> {
    use Method as M;
    let users = || api_path(&["users"]);
    let user = |u: &str| api_path(&["users", u]);
    Ok(match command {
        Command::User(UserCmd::Add {
            email,
            login,
            name,
            role,
            profile,
            services,
        }) => {
            let local_part = email.split('@').next().unwrap_or(email);
            let body = json!({"email": email, "displayName": name.as_deref().unwrap_or(local_part),
                "role": role, "osProfile": profile, "services": services, "login": login});
            with_fields(M::POST, users()?, body, View::Record(USER_FIELDS))
        }
        Command::User(UserCmd::List {
            role,
            profile,
            disabled,
            enabled,
        }) => {
            let disabled = either(*disabled, *enabled).map(|d| d.to_string());
            let q = query(&[
                ("role", role.clone()),
                ("profile", profile.clone()),
                ("disabled", disabled),
            ]);
            get(
                format!("{}{q}", users()?),
                View::Table("users", USER_COLUMNS),
            )
        }
        Command::User(UserCmd::Show { user: u }) => get(user(u)?, View::Record(USER_FIELDS)),
        Command::User(UserCmd::Set(UserSet {
            user: u,
            name,
            role,
            profile,
            services,
            disable,
            enable,
        })) => {
            let body = json!({"displayName": name, "role": role, "osProfile": profile,
                "services": services, "disabled": either(*disable, *enable)});
            with_fields(M::PATCH, user(u)?, body, View::Record(USER_FIELDS))
        }
        Command::User(UserCmd::Rm { user: u }) => delete(user(u)?, format!("deleted user {u}")),
        Command::Token(TokenCmd::Create {
            kind,
            user,
            name,
            expires,
        }) => {
            let body = json!({"kind": kind, "user": user, "name": name, "expiresIn": expires});
            with_fields(M::POST, api_path(&["tokens"])?, body, View::TokenSecret)
        }
        Command::Token(TokenCmd::List { user }) => {
            let path = format!(
                "{}{}",
                api_path(&["tokens"])?,
                query(&[("user", user.clone())])
            );
            get(path, View::Table("tokens", TOKEN_COLUMNS))
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            delete(api_path(&["tokens", id])?, format!("revoked token {id}"))
        }
        Command::Service(ServiceCmd::Add {
            name,
            url,
            upstream,
            category,
            role,
            owner,
            icon,
        }) => {
            let body = json!({"name": name, "category": category, "url": url, "upstream": upstream,
                "requiredRole": role, "owner": owner, "icon": icon});
            with_fields(
                M::POST,
                api_path(&["services"])?,
                body,
                View::Record(SERVICE_FIELDS),
            )
        }
        Command::Service(ServiceCmd::List { user }) => {
            let path = match user {
                Some(u) => api_path(&["users", u, "services"])?,
                None => api_path(&["services"])?,
            };
            get(path, View::Table("services", SERVICE_COLUMNS))
        }
        Command::Service(ServiceCmd::Rm { name }) => delete(
            api_path(&["services", name])?,
            format!("deleted service {name}"),
        ),
        Command::Service(ServiceCmd::Check { user, service }) => get(
            api_path(&["users", user, "services", service, "access"])?,
            View::Access,
        ),
        Command::State(StateCmd::Get { user, key: None }) => {
            get(api_path(&["users", user, "state"])?, View::StateMap)
        }
        Command::State(StateCmd::Get {
            user,
            key: Some(key),
        }) => get(api_path(&["users", user, "state", key])?, View::StateValue),
        Command::State(StateCmd::Set { user, key, value }) => {
            let mut text = value.clone();
            if value == "-" {
                text.clear();
                stdin
                    .read_to_string(&mut text)
                    .context("reading VALUE from stdin")?;
            }
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                usage(format!(
                    "VALUE is not JSON ({e}); quote strings, e.g. '\"blue\"'"
                ))
            })?;
            // Not `with_fields`: nulls inside the value are the user's data.
            let path = api_path(&["users", user, "state", key])?;
            let view = View::Record(&["key", "value", "updatedAt"]);
            (
                Call {
                    method: M::PUT,
                    path,
                    body: Some(value),
                },
                view,
            )
        }
        Command::State(StateCmd::Rm { user, key }) => delete(
            api_path(&["users", user, "state", key])?,
            format!("deleted state key {key} of user {user}"),
        ),
        Command::Audit(a) => {
            let q = query(&[
                ("user", a.user.clone()),
                ("action", a.action.clone()),
                ("outcome", a.outcome.clone()),
                ("since", time_bound(a.since.as_ref(), now)),
                ("until", time_bound(a.until.as_ref(), now)),
                ("limit", a.limit.map(|l| l.to_string())),
                ("before", a.before.clone()),
            ]);
            get(format!("{}{q}", api_path(&["audit"])?), View::Audit)
        }
        Command::Boxes(cmd) => plan_box(cmd, now)?,
        Command::Exec(args) => plan_exec(args, stdin)?,
        Command::Net(NetCmd::Show { user }) => {
            get(api_path(&["users", user, "network"])?, View::NetPolicy)
        }
        Command::Completions { .. } => return Err(usage("completions do not talk to the daemon")),
        Command::Files(_) => return Err(usage("files commands stream; they have no single call")),
        Command::Shell(_) => return Err(usage("shell speaks the terminal protocol, not one call")),
    })
}

fn plan_box(command: &BoxCmd, now: SystemTime) -> Result<(Call, View)> {
    let post = |user: &str, action: &str| -> Result<(Call, View)> {
        let path = api_path(&["boxes", user, action])?;
        let call = Call {
            method: Method::POST,
            path,
            body: None,
        };
        Ok((call, View::BoxState))
    };
    Ok(match command {
        BoxCmd::List { state, user, role } => {
            let q = query(&[
                ("state", state.clone()),
                ("user", user.clone()),
                ("role", role.clone()),
            ]);
            get(format!("{}{q}", api_path(&["boxes"])?), View::BoxTable(now))
        }
        BoxCmd::Status { user } => get(api_path(&["boxes", user])?, View::BoxStatus(now)),
        BoxCmd::Start { user } => post(user, "start")?,
        BoxCmd::Stop { user } => post(user, "stop")?,
        BoxCmd::Restart { user } => post(user, "restart")?,
        BoxCmd::Reset { user } => post(user, "reset")?,
        BoxCmd::Rm { user } => {
            let path = api_path(&["boxes", user])?;
            let call = Call {
                method: Method::DELETE,
                path,
                body: None,
            };
            (call, View::BoxState)
        }
        BoxCmd::Logs { user, lines } => {
            let q = query(&[("lines", Some(lines.to_string()))]);
            let path = format!("{}{q}", api_path(&["boxes", user, "logs"])?);
            get(path, View::Log(user.clone()))
        }
        BoxCmd::Bulk {
            action,
            state,
            role,
            profile,
        } => {
            let body = json!({"action": action, "state": state, "role": role,
                "profile": profile});
            with_fields(
                Method::POST,
                api_path(&["boxes", "bulk"])?,
                body,
                View::Bulk,
            )
        }
    })
}

fn plan_exec(args: &ExecArgs, stdin: &mut dyn Read) -> Result<(Call, View)> {
    let input = if args.stdin {
        let mut bytes = Vec::new();
        stdin
            .read_to_end(&mut bytes)
            .context("reading stdin for --stdin")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| usage("--stdin takes UTF-8 text, and stdin is not UTF-8"))?;
        Some(text)
    } else {
        None
    };
    let env: serde_json::Map<String, Value> = args
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let body = json!({"argv": args.command, "env": (!env.is_empty()).then_some(env),
        "cwd": args.cwd, "timeoutSecs": args.timeout, "stdin": input});
    let path = api_path(&["boxes", &args.user, "exec", "stream"])?;
    let view = View::Exec {
        timeout_secs: args.timeout,
    };
    Ok(with_fields(Method::POST, path, body, view))
}

fn list<'a>(body: &'a Value, field: &str) -> Result<&'a [Value]> {
    body.get(field)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .with_context(|| format!("the daemon's answer has no {field:?} list"))
}

/// Shows an answer; returns the exit code for a success (1 for a denied access check).
pub fn render(
    view: &View,
    response: &Response,
    json_mode: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8> {
    let body: Option<Value> = if response.body.is_empty() {
        None
    } else {
        serde_json::from_slice(&response.body).ok()
    };
    // The access check answers 403 with a result body when access is denied; a 403 with an
    // error body means the caller may not ask.
    let allowed = body
        .as_ref()
        .and_then(|b| b.get("allowed"))
        .and_then(Value::as_bool);
    let is_access_answer = *view == View::Access && allowed.is_some();
    if !response.status.is_success() && !is_access_answer {
        return Err(Failure::from_response(response.status, &response.body).into());
    }
    let bulk_failed = *view == View::Bulk
        && body
            .as_ref()
            .and_then(|b| b.get("results"))
            .and_then(Value::as_array)
            .is_some_and(|results| boxes::bulk(results).1);
    let code = u8::from((is_access_answer && allowed == Some(false)) || bulk_failed);
    if let View::Log(user) = view {
        let log = String::from_utf8_lossy(&response.body);
        if json_mode {
            let body = json!({"user": user, "log": log});
            writeln!(out, "{}", serde_json::to_string_pretty(&body)?)?;
        } else {
            let text = output::sanitize_text(&log);
            write!(out, "{text}")?;
            if !text.is_empty() && !text.ends_with('\n') {
                writeln!(out)?;
            }
        }
        return Ok(code);
    }
    if json_mode {
        if let Some(body) = &body {
            writeln!(out, "{}", serde_json::to_string_pretty(body)?)?;
        }
        return Ok(code);
    }
    if let View::Done(message) = view {
        writeln!(out, "{}", output::sanitize(message))?;
        return Ok(code);
    }
    let body = body.context("the daemon's answer is not JSON")?;
    match view {
        View::Table(field, columns) => {
            write!(out, "{}", output::table(columns, list(&body, field)?))?
        }
        View::Record(fields) => write!(out, "{}", output::record(&body, fields))?,
        View::Done(_) => {}
        View::Access => writeln!(out, "{}", if code == 0 { "allowed" } else { "denied" })?,
        View::TokenSecret => {
            let token = body
                .get("token")
                .and_then(Value::as_str)
                .context("the answer holds no token")?;
            writeln!(out, "{token}")?;
            let owner = match body.get("user").and_then(Value::as_str) {
                Some(user) => format!(" for {user}"),
                None => String::new(),
            };
            writeln!(
                err,
                "created {} token {}{owner}, expires {}; the token above is shown only once",
                output::cell(body.get("kind")),
                output::cell(body.get("id")),
                output::cell(body.get("expiresAt")),
            )?;
        }
        View::StateMap => {
            let state = body
                .get("state")
                .and_then(Value::as_object)
                .context("the answer has no state")?;
            let mut entries: Vec<(&String, &Value)> = state.iter().collect();
            entries.sort_by_key(|(key, _)| *key);
            let rows: Vec<Value> = entries
                .into_iter()
                .map(|(k, v)| json!({"key": k, "value": v.to_string()}))
                .collect();
            write!(
                out,
                "{}",
                output::table(&[("KEY", "key"), ("VALUE", "value")], &rows)
            )?;
        }
        View::BoxTable(now) => write!(out, "{}", boxes::table(list(&body, "boxes")?, *now))?,
        View::BoxStatus(now) => write!(out, "{}", boxes::status(&body, *now))?,
        View::BoxState => write!(out, "{}", boxes::state_line(&body))?,
        View::Bulk => {
            let results = list(&body, "results")?;
            write!(out, "{}", boxes::bulk(results).0)?;
            if results.is_empty() {
                writeln!(err, "no box matched")?;
            }
        }
        View::Log(_) => {}
        View::NetPolicy => write!(out, "{}", net_policy(&body))?,
        View::Exec { .. } => return Err(anyhow::anyhow!("exec answers are streamed")),
        View::StateValue => {
            let value = body.get("value").context("the answer has no value")?;
            writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
        }
        View::Audit => {
            write!(
                out,
                "{}",
                output::table(AUDIT_COLUMNS, list(&body, "entries")?)
            )?;
            if let Some(next) = body.get("next").filter(|n| !n.is_null()) {
                writeln!(
                    err,
                    "more entries: pass --before {}",
                    output::cell(Some(next))
                )?;
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use std::time::Duration;

    fn plan_of(args: &str, stdin: &str) -> Result<(Call, View)> {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        plan(&parse(args)?.command, &mut stdin.as_bytes(), now)
    }

    fn render_to_strings(view: &View, status: u16, body: &str) -> (Result<u8>, String, String) {
        let status = hyper::StatusCode::from_u16(status).unwrap();
        let response = Response {
            status,
            body: bytes::Bytes::from(body.to_owned()),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = render(view, &response, false, &mut out, &mut err);
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (code, text(out), text(err))
    }

    #[test]
    fn user_add_defaults_the_display_name_to_the_email_local_part() {
        let (call, _) = plan_of(
            "user add alice@example.com --role member --profile homelabber",
            "",
        )
        .unwrap();
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::POST, "/api/v1/users")
        );
        let expected = json!({"email": "alice@example.com", "displayName": "alice",
            "role": "member", "osProfile": "homelabber"});
        assert_eq!(call.body, Some(expected));
    }

    #[test]
    fn user_set_patches_only_the_given_fields_and_empty_services_clears() {
        let (call, _) = plan_of("user set bob@example.com --services '' --disable", "").unwrap();
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.path, "/api/v1/users/bob%40example.com");
        assert_eq!(call.body, Some(json!({"services": [], "disabled": true})));
    }

    #[test]
    fn token_create_sends_the_kind_and_only_the_given_options() {
        let (call, view) =
            plan_of("token create --kind user --user alice --expires 30d", "").unwrap();
        let expected = json!({"kind": "user", "user": "alice", "expiresIn": "30d"});
        assert_eq!((call.body, view), (Some(expected), View::TokenSecret));
    }

    #[test]
    fn list_filters_become_encoded_query_parameters() {
        let (call, _) = plan_of("user list --role member --enabled", "").unwrap();
        assert_eq!(call.path, "/api/v1/users?role=member&disabled=false");
        let (call, _) = plan_of("service list --user a@b.c", "").unwrap();
        assert_eq!(call.path, "/api/v1/users/a%40b.c/services");
    }

    #[test]
    fn audit_since_accepts_a_relative_span_and_passes_other_forms_through() {
        let (call, _) = plan_of(
            "audit --since 1h --until 2026-11-22T14:00:00Z --limit 5",
            "",
        )
        .unwrap();
        let expected = "/api/v1/audit?since=996400&until=2026-11-22T14%3A00%3A00Z&limit=5";
        assert_eq!(call.path, expected);
    }

    #[test]
    fn state_set_reads_json_from_stdin_and_refuses_non_json() {
        let (call, _) = plan_of("state set alice prefs -", r#"{"dark": true, "x": null}"#).unwrap();
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.body, Some(json!({"dark": true, "x": null})));
        let err = plan_of("state set alice wallpaper blue", "").unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failure>().map(Failure::exit_code),
            Some(2)
        );
    }

    #[test]
    fn token_create_prints_the_secret_alone_on_stdout() {
        let body = r#"{"token": "orch_aaa_bbb", "id": "aaa", "kind": "service", "user": null,
            "name": "web", "expiresAt": "2027-01-01T00:00:00Z", "revokedAt": null}"#;
        let (code, out, err) = render_to_strings(&View::TokenSecret, 201, body);
        assert_eq!((code.unwrap(), out.as_str()), (0, "orch_aaa_bbb\n"));
        assert!(
            err.contains("token aaa") && err.contains("2027-01-01T00:00:00Z"),
            "{err}"
        );
        assert!(!err.contains("orch_aaa_bbb"), "{err}");
    }

    #[test]
    fn denied_access_check_is_a_result_but_a_forbidden_caller_is_an_error() {
        let denied = r#"{"user": "bob", "service": "git", "allowed": false}"#;
        let (code, out, _) = render_to_strings(&View::Access, 403, denied);
        assert_eq!((code.unwrap(), out.as_str()), (1, "denied\n"));
        let forbidden = r#"{"error": {"kind": "forbidden", "message": "no"}}"#;
        let (code, out, _) = render_to_strings(&View::Access, 403, forbidden);
        let code = code
            .unwrap_err()
            .downcast_ref::<Failure>()
            .map(Failure::exit_code);
        assert_eq!((code, out.as_str()), (Some(5), ""));
    }

    #[test]
    fn audit_table_points_to_the_next_page() {
        let body = r#"{"entries": [{"id": 7, "time": "t", "actor": "root", "action": "user.create",
            "target": "alice", "outcome": "ok", "detail": null}], "next": 7}"#;
        let (code, out, err) = render_to_strings(&View::Audit, 200, body);
        assert_eq!(code.unwrap(), 0);
        assert_eq!(
            out,
            "ID  TIME  ACTOR  ACTION       TARGET  OUTCOME  DETAIL\n\
             7   t     root   user.create  alice   ok       -\n"
        );
        assert_eq!(err, "more entries: pass --before 7\n");
    }

    #[test]
    fn box_commands_address_the_box_resource() {
        for (args, method, path) in [
            (
                "box list --state running --role demo",
                Method::GET,
                "/api/v1/boxes?state=running&role=demo",
            ),
            ("box status alice", Method::GET, "/api/v1/boxes/alice"),
            ("box start alice", Method::POST, "/api/v1/boxes/alice/start"),
            ("box stop alice", Method::POST, "/api/v1/boxes/alice/stop"),
            (
                "box restart alice",
                Method::POST,
                "/api/v1/boxes/alice/restart",
            ),
            ("box reset alice", Method::POST, "/api/v1/boxes/alice/reset"),
            ("box rm alice", Method::DELETE, "/api/v1/boxes/alice"),
            (
                "box logs a@b.c --lines 5",
                Method::GET,
                "/api/v1/boxes/a%40b.c/logs?lines=5",
            ),
        ] {
            let (call, _) = plan_of(args, "").unwrap();
            assert_eq!(
                (call.method, call.path.as_str(), call.body),
                (method, path, None),
                "{args}"
            );
        }
        let (call, view) = plan_of("box bulk restart --profile minimal", "").unwrap();
        assert_eq!(
            (call.method, call.path.as_str()),
            (Method::POST, "/api/v1/boxes/bulk")
        );
        assert_eq!(
            call.body,
            Some(json!({"action": "restart", "profile": "minimal"}))
        );
        assert_eq!(view, View::Bulk);
    }

    #[test]
    fn exec_sends_argv_and_only_the_given_options() {
        let (call, view) = plan_of("exec alice ls -la", "ignored").unwrap();
        assert_eq!(call.path, "/api/v1/boxes/alice/exec/stream");
        assert_eq!(call.body, Some(json!({"argv": ["ls", "-la"]})));
        assert_eq!(view, View::Exec { timeout_secs: None });
        let args = "exec --timeout 9 --env A=1 --cwd /srv --stdin alice -- cat";
        let (call, view) = plan_of(args, "héllo\n").unwrap();
        let expected = json!({"argv": ["cat"], "env": {"A": "1"}, "cwd": "/srv",
            "timeoutSecs": 9, "stdin": "héllo\n"});
        assert_eq!(call.body, Some(expected));
        assert_eq!(
            view,
            View::Exec {
                timeout_secs: Some(9)
            }
        );
    }

    #[test]
    fn exec_stdin_that_is_not_utf8_is_a_usage_error() {
        let command = parse("exec --stdin alice cat").unwrap().command;
        let err = plan(&command, &mut &b"\xff\xfe"[..], UNIX_EPOCH).unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failure>().map(Failure::exit_code),
            Some(2)
        );
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn bulk_prints_a_line_per_box_and_exits_one_if_any_failed_also_in_json() {
        let body = r#"{"results": [{"user": "alice", "ok": true, "error": null},
            {"user": "bob", "ok": false, "error": "box bob is busy"}]}"#;
        let (code, out, _) = render_to_strings(&View::Bulk, 200, body);
        assert_eq!(
            (code.unwrap(), out.as_str()),
            (1, "alice: ok\nbob: failed: box bob is busy\n")
        );
        let response = Response {
            status: hyper::StatusCode::OK,
            body: bytes::Bytes::from(body),
        };
        let code = render(
            &View::Bulk,
            &response,
            true,
            &mut Vec::new(),
            &mut Vec::new(),
        );
        assert_eq!(code.unwrap(), 1);
        let (code, out, err) = render_to_strings(&View::Bulk, 200, r#"{"results": []}"#);
        assert_eq!(
            (code.unwrap(), out.as_str(), err.as_str()),
            (0, "", "no box matched\n")
        );
    }

    #[test]
    fn logs_print_the_text_without_escape_sequences_or_as_json() {
        let view = View::Log("alice".into());
        let (code, out, _) = render_to_strings(&view, 200, "booted\n\u{1b}[2Jready");
        assert_eq!((code.unwrap(), out.as_str()), (0, "booted\n?[2Jready\n"));
        let (_, out, _) = render_to_strings(&view, 200, "");
        assert_eq!(out, "");
        let response = Response {
            status: hyper::StatusCode::OK,
            body: bytes::Bytes::from("a\nb\n"),
        };
        let mut out = Vec::new();
        render(&view, &response, true, &mut out, &mut Vec::new()).unwrap();
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, json!({"user": "alice", "log": "a\nb\n"}));
    }

    #[test]
    fn box_conflicts_are_api_errors_that_exit_one() {
        for kind in ["box_busy", "box_running", "box_not_running"] {
            let body = format!(r#"{{"error": {{"kind": "{kind}", "message": "box alice: no"}}}}"#);
            let (code, out, _) = render_to_strings(&View::BoxState, 409, &body);
            let err = code.unwrap_err();
            let failure = err.downcast_ref::<Failure>().unwrap();
            assert_eq!(failure.to_string(), format!("box alice: no ({kind})"));
            assert_eq!((failure.exit_code(), out.as_str()), (1, ""));
        }
    }

    #[test]
    fn a_success_without_the_expected_list_is_an_error_not_a_panic() {
        let views = [
            View::Table("users", USER_COLUMNS),
            View::BoxTable(UNIX_EPOCH),
            View::Bulk,
        ];
        for view in &views {
            for body in ["", "not json", r#"{"users": 3, "boxes": 3, "results": 3}"#] {
                assert!(render_to_strings(view, 200, body).0.is_err(), "{body}");
            }
        }
    }
}
