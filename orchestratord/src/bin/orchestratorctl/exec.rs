//! `exec`: runs a command in a box and shows its output while it runs.
//!
//! The daemon answers `POST /api/v1/boxes/{user}/exec/stream` with NDJSON, one object per
//! line: `{"stdout": "<base64>"}` and `{"stderr": "<base64>"}` while the command runs, then
//! `{"exitCode": N, "timedOut": bool}`. A line may be split anywhere across the chunks of
//! the body, so `Lines` puts lines back together; each complete line is decoded at once and
//! its bytes are written, unchanged, to our stdout or stderr and flushed, so a long-running
//! command shows its output live (like `docker exec`, and unlike the rest of this CLI, the
//! command's output is not sanitised: the admin asked to see exactly what it prints). The
//! process then exits with the command's exit code.
//!
//! `--timeout` (the connection option) bounds the wait for the answer's head; the body may
//! take as long as the command is allowed to run, plus that much again as slack.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use hyper::StatusCode;
use serde_json::Value;

use crate::client::{Call, Client, Failure};

/// What we take: the stream, or an API error body.
pub const ACCEPT: &str = "application/x-ndjson, application/json";

/// The API's longest exec timeout, the bound when `--timeout` is not given.
const MAX_EXEC_SECS: u64 = 3600;

/// The longest line we buffer: far beyond any chunk of output the daemon sends, yet a
/// bound on memory if it never sends a newline.
const MAX_LINE: usize = 16 << 20;

/// Splits a byte stream into lines, whatever the chunk boundaries.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Adds a chunk; returns the lines it completes, without their `\n`.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..end]);
            lines.push(std::mem::take(&mut self.partial));
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE {
            return Err(anyhow!(
                "the daemon sent an exec line longer than {} MiB",
                MAX_LINE >> 20
            ));
        }
        Ok(lines)
    }

    /// The last line, when the stream did not end with a newline.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then_some(self.partial)
    }
}

/// One decoded line of the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit {
        code: i64,
        timed_out: bool,
    },
    /// A blank line, or an object with none of the fields we know (a later daemon may send
    /// more kinds).
    Other,
}

/// Decodes one line. An `{"error": ...}` object (the daemon failed mid-stream) is an API
/// error; anything that is not a JSON object, or holds bad base64, is a broken stream.
pub fn decode(line: &[u8]) -> Result<Event> {
    if line.trim_ascii().is_empty() {
        return Ok(Event::Other);
    }
    let malformed = || {
        let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
        anyhow!(
            "the daemon sent a malformed exec line: {}",
            crate::output::sanitize(&shown)
        )
    };
    let value: Value = serde_json::from_slice(line).map_err(|_| malformed())?;
    let object = value.as_object().ok_or_else(malformed)?;
    let bytes = |field: &Value| -> Result<Vec<u8>> {
        let text = field.as_str().ok_or_else(malformed)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| malformed())
    };
    if let Some(data) = object.get("stdout") {
        return Ok(Event::Stdout(bytes(data)?));
    }
    if let Some(data) = object.get("stderr") {
        return Ok(Event::Stderr(bytes(data)?));
    }
    if let Some(code) = object.get("exitCode") {
        let code = code.as_i64().ok_or_else(malformed)?;
        let timed_out = object.get("timedOut").and_then(Value::as_bool) == Some(true);
        return Ok(Event::Exit { code, timed_out });
    }
    if object.contains_key("error") {
        return Err(Failure::from_response(StatusCode::INTERNAL_SERVER_ERROR, line).into());
    }
    Ok(Event::Other)
}

/// Our exit status for the command's exit code: the same number whenever a process can
/// exit with it (0 to 255; the daemon reports 128+N for signal N and 124 for a timeout);
/// anything else is a plain failure rather than a wrapped-around, maybe zero, status.
pub fn exit_status(code: i64) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

/// Runs the command: sends `call`, shows the stream, returns the command's exit status.
/// With `json`, the daemon's lines are printed as they are instead.
pub async fn run(
    client: &Client,
    call: &Call,
    timeout_secs: Option<u64>,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8> {
    let mut answer = client.open(call, ACCEPT).await?;
    if !answer.status.is_success() {
        let body = tokio::time::timeout(client.timeout, answer.rest())
            .await
            .unwrap_or_else(|_| Ok(Default::default()))?;
        return Err(Failure::from_response(answer.status, &body).into());
    }
    let limit = Duration::from_secs(timeout_secs.unwrap_or(MAX_EXEC_SECS)) + client.timeout;
    let show = async {
        let mut lines = Lines::default();
        while let Some(chunk) = answer.chunk().await? {
            for line in lines.push(&chunk)? {
                if let Some(code) = show_line(&line, json, out, err)? {
                    return Ok(code);
                }
            }
        }
        if let Some(line) = lines.finish() {
            if let Some(code) = show_line(&line, json, out, err)? {
                return Ok(code);
            }
        }
        Err(Failure::Unreachable(
            "the daemon's exec stream ended before the command's exit status".to_owned(),
        )
        .into())
    };
    tokio::time::timeout(limit, show).await.unwrap_or_else(|_| {
        Err(Failure::Unreachable(format!(
            "the command did not finish within {}",
            humantime::format_duration(limit)
        ))
        .into())
    })
}

/// Shows one line; returns the exit status when the line carries it.
fn show_line(
    line: &[u8],
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Option<u8>> {
    let event = decode(line)?;
    if json {
        out.write_all(line)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .context("writing the output")?;
    }
    match event {
        Event::Stdout(bytes) if !json => out
            .write_all(&bytes)
            .and_then(|()| out.flush())
            .context("writing the command's stdout")?,
        Event::Stderr(bytes) if !json => err
            .write_all(&bytes)
            .and_then(|()| err.flush())
            .context("writing the command's stderr")?,
        Event::Exit { code, timed_out } => {
            if timed_out && !json {
                writeln!(
                    err,
                    "error: the command timed out and was killed (timed_out)"
                )
                .context("writing to stderr")?;
            }
            return Ok(Some(exit_status(code)));
        }
        Event::Stdout(_) | Event::Stderr(_) | Event::Other => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{api_path, Target};
    use hyper::Method;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn lines_split_across_chunk_boundaries_are_put_back_together_and_decoded() {
        let stream = format!(
            "{{\"stdout\":\"{}\"}}\n{{\"stderr\":\"{}\"}}\n\n{{\"exitCode\":3,\"timedOut\":false}}",
            b64(b"hello\n\xff"),
            b64(b"oops")
        );
        // Every way of cutting the stream in two and in single bytes gives the same events.
        let mut cuts: Vec<Vec<&[u8]>> = (0..=stream.len())
            .map(|at| vec![&stream.as_bytes()[..at], &stream.as_bytes()[at..]])
            .collect();
        cuts.push(stream.as_bytes().chunks(1).collect());
        for chunks in cuts {
            let mut lines = Lines::default();
            let mut all = Vec::new();
            for chunk in chunks {
                all.extend(lines.push(chunk).unwrap());
            }
            all.extend(lines.finish());
            let events: Vec<Event> = all.iter().map(|l| decode(l).unwrap()).collect();
            assert_eq!(
                events,
                [
                    Event::Stdout(b"hello\n\xff".to_vec()),
                    Event::Stderr(b"oops".to_vec()),
                    Event::Other,
                    Event::Exit {
                        code: 3,
                        timed_out: false
                    },
                ]
            );
        }
    }

    #[test]
    fn a_line_without_end_is_bounded() {
        let mut lines = Lines::default();
        let chunk = vec![b'x'; 1 << 20];
        let overflow = (0..17).find_map(|_| lines.push(&chunk).err());
        assert!(overflow.is_some());
    }

    #[test]
    fn malformed_lines_are_errors_and_unknown_objects_are_skipped() {
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"stdout": "%%%"}"#,
            br#"{"exitCode": "x"}"#,
        ] {
            let err = decode(bad).unwrap_err();
            assert!(err.to_string().contains("malformed exec line"), "{err}");
        }
        assert_eq!(decode(br#"{"progress": 1}"#).unwrap(), Event::Other);
        assert_eq!(
            decode(br#"{"exitCode": 124}"#).unwrap(),
            Event::Exit {
                code: 124,
                timed_out: false
            }
        );
    }

    #[test]
    fn an_error_line_mid_stream_is_an_api_error() {
        let err =
            decode(br#"{"error": {"kind": "box_not_running", "message": "stopped"}}"#).unwrap_err();
        let failure = err.downcast_ref::<Failure>().unwrap();
        assert_eq!(failure.to_string(), "stopped (box_not_running)");
        assert_eq!(failure.exit_code(), 1);
    }

    #[test]
    fn exit_codes_are_propagated_exactly_and_impossible_ones_are_failures() {
        for (code, status) in [(0, 0), (3, 3), (124, 124), (137, 137), (255, 255)] {
            assert_eq!(exit_status(code), status, "{code}");
        }
        for code in [256, 512, -1, i64::MAX] {
            assert_eq!(exit_status(code), 1, "{code}");
        }
    }

    /// A writer that reports each write to the test as it happens.
    struct Live(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

    impl Write for Live {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.send(buf.to_vec()).expect("the test listens");
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn chunk(line: &str) -> String {
        format!("{:x}\r\n{line}\r\n", line.len())
    }

    /// Serves one exec stream over chunked encoding: the first half of a stdout line, the
    /// rest only once the client has shown the stdout it already had, then the exit line.
    /// Returns the request it received.
    async fn serve_exec(
        listener: UnixListener,
        mut shown: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    ) -> String {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0_u8; 4096];
        while !request.ends_with(b"]}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before a full request");
            request.extend_from_slice(&buf[..n]);
        }
        let first = format!("{{\"stdout\":\"{}\"}}\n", b64(b"first\n"));
        let (head, tail) = first.split_at(9);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
             transfer-encoding: chunked\r\n\r\n{}{}",
            chunk(head),
            chunk(tail)
        );
        stream.write_all(reply.as_bytes()).await.unwrap();
        // The client must show this output before the command ends: no buffering.
        assert_eq!(shown.recv().await.unwrap(), b"first\n");
        let rest = format!(
            "{{\"stderr\":\"{}\"}}\n{{\"exitCode\":3,\"timedOut\":false}}\n",
            b64(b"late\n")
        );
        let end = format!("{}0\r\n\r\n", chunk(&rest));
        stream.write_all(end.as_bytes()).await.unwrap();
        String::from_utf8(request).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_is_shown_as_it_arrives_and_the_exit_code_is_the_commands() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(serve_exec(listener, rx));
        let client = Client {
            target: Target::Unix(socket),
            token: None,
            timeout: Duration::from_secs(30),
        };
        let call = Call {
            method: Method::POST,
            path: api_path(&["boxes", "alice", "exec", "stream"]).unwrap(),
            body: Some(json!({"argv": ["sh", "-c", "exit 3"]})),
        };
        let (mut out, mut err) = (Live(tx), Vec::new());
        let code = run(&client, &call, Some(5), false, &mut out, &mut err);
        let code = tokio::time::timeout(Duration::from_secs(60), code)
            .await
            .expect("hang guard: the exec stream never finished");
        assert_eq!(code.unwrap(), 3);
        assert_eq!(err, b"late\n");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /api/v1/boxes/alice/exec/stream HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request
            .to_ascii_lowercase()
            .contains("accept: application/x-ndjson"));
    }
}
