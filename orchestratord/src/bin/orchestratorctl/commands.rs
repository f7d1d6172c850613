//! Commands as API calls: `plan` turns a parsed command into one request and a view that
//! says how to show its answer; `render` shows the answer. Both are pure apart from reading
//! stdin for `state set USER KEY -`, so they are tested without a daemon.

use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hyper::Method;
use serde_json::{json, Value};

use crate::cli::{Command, ServiceCmd, StateCmd, TokenCmd, UserCmd, UserSet};
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
        Command::Completions { .. } => return Err(usage("completions do not talk to the daemon")),
    })
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
    let code = u8::from(is_access_answer && allowed == Some(false));
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
    fn a_success_without_the_expected_list_is_an_error_not_a_panic() {
        let view = View::Table("users", USER_COLUMNS);
        for body in ["", "not json", r#"{"users": 3}"#] {
            assert!(render_to_strings(&view, 200, body).0.is_err(), "{body}");
        }
    }
}
