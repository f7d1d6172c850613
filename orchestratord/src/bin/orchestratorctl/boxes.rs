//! Human output for boxes: the `box list` table, the `box status` block, the one line a
//! lifecycle command prints, and the lines of a bulk operation, in human units (spans like
//! `3h12m`, memory in MiB, CPUs as a count).
//!
//! Like `output`, this reads `serde_json::Value`, not typed structs: a field the daemon
//! leaves out shows as `-`, and one it adds later still shows in `box status`.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use crate::output::{self, cell, Column};

const MIB: u64 = 1024 * 1024;

#[rustfmt::skip]
const LIST_COLUMNS: &[Column] = &[("USER", "user"), ("ROLE", "role"), ("PROFILE", "profile"),
    ("STATE", "state"), ("PID", "pid"), ("UPTIME", "uptime"), ("EXPIRES", "expires")];

/// The BoxView fields `status` shows in its own form; any other field follows as it is.
#[rustfmt::skip]
const SHOWN_FIELDS: &[&str] = &["user", "role", "profile", "state", "desired", "pid",
    "startedAt", "uptimeSecs", "expiresAt", "persistent", "userNamespace", "apparmor",
    "limits", "usage", "lastError", "network"];

/// A span in its two largest units, without blanks so that it fits a table cell: `42s`,
/// `5m3s`, `3h12m`, `2d3h`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match secs {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{m}m{s}s"),
        3600..=86_399 => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// Bytes in MiB: whole numbers as they are, others with one decimal.
pub fn mib(bytes: u64) -> String {
    if bytes == u64::MAX {
        "unlimited".to_owned()
    } else if bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// A CPU count with at most two decimals and no trailing zeros: `2`, `1.5`, `0.25`.
pub fn cpus(count: f64) -> String {
    let text = format!("{count:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Consumed CPU time: seconds with two decimals below a minute, a span above.
fn cpu_time(usec: u64) -> String {
    if usec < 60_000_000 {
        format!("{:.2}s", usec as f64 / 1e6)
    } else {
        span(usec / 1_000_000)
    }
}

/// An expiry time relative to `now`: `in 3h12m`, or `expired` once it has passed. A time
/// that does not parse is shown as the daemon sent it.
fn expires(value: Option<&Value>, now: SystemTime) -> String {
    let Some(text) = value.and_then(Value::as_str) else {
        return cell(value);
    };
    match humantime::parse_rfc3339(text) {
        Ok(at) => match at.duration_since(now) {
            Ok(left) if left > Duration::ZERO => format!("in {}", span(left.as_secs())),
            _ => "expired".to_owned(),
        },
        Err(_) => cell(value),
    }
}

fn text(value: Option<&Value>, show: impl Fn(&Value) -> Option<String>) -> Value {
    Value::String(value.and_then(&show).unwrap_or_else(|| cell(value)))
}

/// The `box list` table.
pub fn table(boxes: &[Value], now: SystemTime) -> String {
    let rows: Vec<Value> = boxes
        .iter()
        .map(|b| {
            let mut row = Map::new();
            for field in ["user", "role", "profile", "state", "pid"] {
                row.insert(field.into(), b.get(field).cloned().unwrap_or(Value::Null));
            }
            let uptime = text(b.get("uptimeSecs"), |v| v.as_u64().map(span));
            row.insert("uptime".into(), uptime);
            row.insert("expires".into(), expires(b.get("expiresAt"), now).into());
            Value::Object(row)
        })
        .collect();
    output::table(LIST_COLUMNS, &rows)
}

/// The `box status` block: `key: value` lines, limits and usage in human units.
pub fn status(b: &Value, now: SystemTime) -> String {
    let field = |name: &str| b.get(name);
    let limit = |name: &str| field("limits").and_then(|l| l.get(name));
    let used = |name: &str| field("usage").and_then(|u| u.get(name));
    let net = |name: &str| field("network").and_then(|n| n.get(name));
    let packets = |name: &str| net("packets").and_then(|p| p.get(name));
    let bytes = |v: &Value| v.as_u64().map(mib);
    // A null io limit of a box that has limits: none is set.
    let bandwidth = |v: &Value| match v {
        Value::Null => Some("unlimited".to_string()),
        _ => v.as_u64().map(|b| format!("{}/s", mib(b))),
    };
    let count = |v: &Value| v.as_u64().map(|n| n.to_string());
    let expiry = match field("expiresAt").and_then(Value::as_str) {
        Some(at) => format!(
            "{} ({})",
            cell(field("expiresAt")),
            expires(Some(&at.into()), now)
        ),
        None => cell(None),
    };
    let mut lines: Vec<(&str, Value)> = vec![
        ("user", text(field("user"), |_| None)),
        ("role", text(field("role"), |_| None)),
        ("profile", text(field("profile"), |_| None)),
        ("state", text(field("state"), |_| None)),
        ("desired", text(field("desired"), |_| None)),
        ("pid", text(field("pid"), |_| None)),
        ("started", text(field("startedAt"), |_| None)),
        (
            "uptime",
            text(field("uptimeSecs"), |v| v.as_u64().map(span)),
        ),
        ("expires", expiry.into()),
        ("persistent", text(field("persistent"), |_| None)),
        ("user namespace", text(field("userNamespace"), |_| None)),
        ("apparmor", text(field("apparmor"), |_| None)),
        ("memory", text(used("memoryBytes"), bytes)),
        ("memory limit", text(limit("memoryBytes"), bytes)),
        ("swap limit", text(limit("memorySwapBytes"), bytes)),
        (
            "cpu time",
            text(used("cpuUsec"), |v| v.as_u64().map(cpu_time)),
        ),
        ("cpu limit", text(limit("cpus"), |v| v.as_f64().map(cpus))),
        ("pids", text(used("pids"), count)),
        ("pids limit", text(limit("pids"), count)),
        ("io read limit", text(limit("ioReadBps"), bandwidth)),
        ("io write limit", text(limit("ioWriteBps"), bandwidth)),
        ("last error", text(field("lastError"), |_| None)),
        ("address", text(net("address"), |_| None)),
        ("subnet", text(net("subnet"), |_| None)),
        ("interface", text(net("interface"), |_| None)),
        ("packets allowed", text(packets("allowedPackets"), count)),
        ("packets dropped", text(packets("droppedPackets"), count)),
    ];
    if let Some(object) = b.as_object() {
        let extra = object
            .iter()
            .filter(|(k, _)| !SHOWN_FIELDS.contains(&k.as_str()));
        lines.extend(extra.map(|(k, v)| (k.as_str(), v.clone())));
    }
    let keys: Vec<&str> = lines.iter().map(|(k, _)| *k).collect();
    let record: Map<String, Value> = lines.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    output::record(&Value::Object(record), &keys)
}

/// The line a lifecycle command prints: `alice: running (pid 1234)`, `alice: stopped`,
/// `alice: error (<last error>)`.
pub fn state_line(b: &Value) -> String {
    let (user, state) = (cell(b.get("user")), cell(b.get("state")));
    let detail = match state.as_str() {
        "running" => b
            .get("pid")
            .filter(|p| !p.is_null())
            .map(|p| format!("pid {p}")),
        "error" => b
            .get("lastError")
            .filter(|e| !e.is_null())
            .map(|e| cell(Some(e))),
        _ => None,
    };
    match detail {
        Some(detail) => format!("{user}: {state} ({detail})\n"),
        None => format!("{user}: {state}\n"),
    }
}

/// The lines of a bulk operation, one per box (`alice: ok`, `bob: failed: <error>`), and
/// whether any failed.
pub fn bulk(results: &[Value]) -> (String, bool) {
    let mut lines = String::new();
    let mut failed = false;
    for r in results {
        let user = cell(r.get("user"));
        if r.get("ok").and_then(Value::as_bool) == Some(true) {
            lines.push_str(&format!("{user}: ok\n"));
        } else {
            failed = true;
            lines.push_str(&format!("{user}: failed: {}\n", cell(r.get("error"))));
        }
    }
    (lines, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::UNIX_EPOCH;

    /// 2026-11-22T14:00:00Z
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_356_000)
    }

    fn running_box() -> Value {
        json!({"user": "alice", "role": "member", "profile": "homelabber", "state": "running",
            "desired": "running", "persistent": true, "pid": 1234,
            "startedAt": "2026-11-22T10:48:00Z", "uptimeSecs": 11_520,
            "expiresAt": "2026-11-22T16:05:00Z", "lastError": null, "userNamespace": true,
            "apparmor": false,
            "limits": {"memoryBytes": 2_147_483_648_u64, "memorySwapBytes": 536_870_912,
                "cpus": 1.5, "pids": 512, "ioReadBps": 209_715_200, "ioWriteBps": null},
            "usage": {"memoryBytes": 222_717_133, "pids": 12, "cpuUsec": 12_345_678},
            "network": {"subnet": "10.87.0.0/24", "address": "10.87.0.2", "gateway": "10.87.0.1",
                "interface": "ob-alice", "packets": {"allowedPackets": 40, "allowedBytes": 4000,
                "droppedPackets": 2, "droppedBytes": 120}}})
    }

    #[test]
    fn spans_use_their_two_largest_units_without_blanks() {
        for (secs, text) in [
            (0, "0s"),
            (42, "42s"),
            (303, "5m3s"),
            (11_520, "3h12m"),
            (183_600, "2d3h"),
        ] {
            assert_eq!(span(secs), text, "{secs}");
        }
    }

    #[test]
    fn sizes_are_mib_and_cpu_counts_drop_trailing_zeros() {
        assert_eq!(mib(2 << 30), "2048 MiB");
        assert_eq!(mib(222_717_133), "212.4 MiB");
        assert_eq!(mib(u64::MAX), "unlimited");
        assert_eq!(
            [cpus(2.0), cpus(1.5), cpus(0.25), cpus(0.1 + 0.2)],
            ["2", "1.5", "0.25", "0.3"]
        );
    }

    #[test]
    fn box_view_renders_to_a_table_line_in_human_units() {
        let stopped = json!({"user": "bob", "role": "demo", "profile": "minimal",
            "state": "stopped", "pid": null, "uptimeSecs": null,
            "expiresAt": "2026-11-22T13:00:00Z"});
        assert_eq!(
            table(&[running_box(), stopped], now()),
            "USER   ROLE    PROFILE     STATE    PID   UPTIME  EXPIRES\n\
             alice  member  homelabber  running  1234  3h12m   in 2h5m\n\
             bob    demo    minimal     stopped  -     -       expired\n"
        );
    }

    #[test]
    fn status_shows_limits_and_usage_in_human_units_and_unknown_fields_last() {
        let mut b = running_box();
        b["zone"] = json!("lab");
        let text = status(&b, now());
        let expected = "\
user:            alice
role:            member
profile:         homelabber
state:           running
desired:         running
pid:             1234
started:         2026-11-22T10:48:00Z
uptime:          3h12m
expires:         2026-11-22T16:05:00Z (in 2h5m)
persistent:      yes
user namespace:  yes
apparmor:        no
memory:          212.4 MiB
memory limit:    2048 MiB
swap limit:      512 MiB
cpu time:        12.35s
cpu limit:       1.5
pids:            12
pids limit:      512
io read limit:   200 MiB/s
io write limit:  unlimited
last error:      -
address:         10.87.0.2
subnet:          10.87.0.0/24
interface:       ob-alice
packets allowed: 40
packets dropped: 2
zone:            lab
";
        assert_eq!(text, expected);
    }

    #[test]
    fn status_of_an_absent_box_without_limits_or_usage_shows_dashes() {
        let b = json!({"user": "carol", "state": "absent", "limits": null, "usage": null,
            "userNamespace": null, "lastError": "init exited with 1\u{1b}[2J"});
        let text = status(&b, now());
        assert!(text.contains("memory limit:    -\n"), "{text}");
        assert!(text.contains("io read limit:   -\n"), "{text}");
        assert!(text.contains("user namespace:  -\n"), "{text}");
        assert!(text.contains("expires:         -\n"), "{text}");
        assert!(
            text.contains("last error:      init exited with 1?[2J\n"),
            "{text}"
        );
    }

    #[test]
    fn state_line_names_the_pid_of_a_running_box_and_the_error_of_a_failed_one() {
        assert_eq!(state_line(&running_box()), "alice: running (pid 1234)\n");
        let failed = json!({"user": "bob", "state": "error", "lastError": "oom"});
        assert_eq!(state_line(&failed), "bob: error (oom)\n");
        let gone = json!({"user": "bob", "state": "absent", "pid": null});
        assert_eq!(state_line(&gone), "bob: absent\n");
    }

    #[test]
    fn bulk_prints_a_line_per_box_and_reports_any_failure() {
        let results = [
            json!({"user": "alice", "ok": true, "error": null}),
            json!({"user": "bob", "ok": false, "error": "box bob is busy"}),
        ];
        let (text, failed) = bulk(&results);
        assert_eq!(text, "alice: ok\nbob: failed: box bob is busy\n");
        assert!(failed);
        assert_eq!(bulk(&results[..1]), ("alice: ok\n".to_owned(), false));
    }
}
