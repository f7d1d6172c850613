//! `orchestratorctl`: the admin CLI of orchestratord.
//!
//! A standalone HTTP/1.1 client of the API in `docs/api.md`; it shares no code with the
//! daemon. Each run parses the command line (`cli`), turns the command into one API call and
//! a view (`commands::plan`), sends it over one connection (`client`), and shows the answer
//! (`commands::render`, `output`, `boxes`). `exec` instead shows its streamed answer as it
//! arrives (`exec`) and exits with the command's exit code. A `client::Failure` in the error
//! chain decides the exit code (usage 2, unreachable 3, API errors by status); any other
//! error exits 1. The codes are listed in `cli::EXIT_CODES`, shown by `--help`.

mod boxes;
mod cli;
mod client;
mod commands;
mod exec;
mod files;
mod output;
mod shell;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command, ConnArgs};
use crate::client::{usage, Client, Failure, Secret, Target};
use crate::commands::View;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| {
            // stdin unlocked: `files put -` reads it on a thread of its own.
            let mut stdout = std::io::stdout().lock();
            let stdin = Box::new(std::io::stdin());
            runtime.block_on(run(cli, stdin, &mut stdout, &mut std::io::stderr()))
        });
    let broken_pipe = |err: &anyhow::Error| {
        let io = err.root_cause().downcast_ref::<std::io::Error>();
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader of our output went away (`| head`): theirs to decide, not an error.
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(err.downcast_ref::<Failure>().map_or(1, Failure::exit_code))
        }
    }
}

async fn run(
    cli: Cli,
    mut stdin: Box<dyn Read + Send>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8> {
    if let Command::Completions { shell } = cli.command {
        // Into a buffer: `generate` panics when its writer fails (say, a closed pipe).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "orchestratorctl", &mut script);
        out.write_all(&script)
            .context("writing the completion script")?;
        return Ok(0);
    }
    if let Command::Files(cmd) = &cli.command {
        let client = client(&cli.conn)?;
        let code = files::run(&client, cmd, cli.json, stdin, out).await?;
        out.flush().context("writing the output")?;
        return Ok(code);
    }
    if let Command::Shell(args) = &cli.command {
        let client = client(&cli.conn)?;
        return shell::run(&client, args).await;
    }
    // Plan first: a bad VALUE or name fails before anything touches the network.
    let (call, view) = commands::plan(&cli.command, &mut stdin, SystemTime::now())?;
    let client = client(&cli.conn)?;
    if let View::Exec { timeout_secs } = view {
        return exec::run(&client, &call, timeout_secs, cli.json, out, err).await;
    }
    let response = client.send(&call).await?;
    let code = commands::render(&view, &response, cli.json, out, err)?;
    out.flush().context("writing the output")?;
    Ok(code)
}

/// Turns the connection options into a client; `--url` needs a token.
fn client(conn: &ConnArgs) -> Result<Client> {
    // An empty environment variable counts as unset.
    let token = match &conn.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            let token = Secret::from(text.as_str());
            if token.is_empty() {
                return Err(usage(format!("the token file {} is empty", path.display())));
            }
            Some(token)
        }
        None => conn.token.clone().filter(|t| !t.is_empty()),
    };
    let target = match conn.url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => Target::from_url(url)?,
        None => Target::Unix(conn.socket.clone()),
    };
    if matches!(target, Target::Tcp { .. }) && token.is_none() {
        return Err(usage(
            "--url needs a token: pass --token-file, --token or ORCHESTRATOR_TOKEN",
        ));
    }
    Ok(Client {
        target,
        token,
        timeout: conn.timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::parse;
    use crate::client::fake_server::{answer, serve_once};

    /// Runs the whole CLI against a fake daemon that answers `reply`; returns the request it
    /// received, the outcome as an exit code, stdout and stderr.
    async fn run_against(args: &str, reply: String) -> (String, u8, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let (socket, server) = serve_once(dir.path(), reply);
        let cli = parse(&format!("--socket {} {args}", socket.display())).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = match run(cli, Box::new(std::io::empty()), &mut out, &mut err).await {
            Ok(code) => code,
            Err(e) => {
                writeln!(err, "error: {e:#}").unwrap();
                e.downcast_ref::<Failure>().map_or(1, Failure::exit_code)
            }
        };
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (server.await.unwrap(), code, text(out), text(err))
    }

    #[test]
    fn url_without_a_token_is_a_usage_error_and_empty_values_count_as_unset() {
        let mut conn = parse("--url http://127.0.0.1:9000 --token '' user list")
            .unwrap()
            .conn;
        let err = client(&conn).unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failure>().map(Failure::exit_code),
            Some(2)
        );
        assert!(err.to_string().contains("--url needs a token"), "{err}");
        conn.url = Some(String::new());
        assert!(matches!(client(&conn).unwrap().target, Target::Unix(_)));
    }

    #[test]
    fn empty_token_file_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let conn = parse(&format!("--token-file {} user list", path.display()))
            .unwrap()
            .conn;
        let err = client(&conn).unwrap_err();
        assert_eq!(
            err.downcast_ref::<Failure>().map(Failure::exit_code),
            Some(2)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn completions_need_no_daemon_and_a_closed_stdout_is_an_error_not_a_panic() {
        let cli = parse("--socket /nonexistent completions bash").unwrap();
        let mut out = Vec::new();
        let code = run(
            cli,
            Box::new(std::io::empty()),
            &mut out,
            &mut std::io::sink(),
        )
        .await;
        assert_eq!(code.unwrap(), 0);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("_orchestratorctl()"));

        struct ClosedPipe;
        impl Write for ClosedPipe {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let cli = parse("completions fish").unwrap();
        let result = run(
            cli,
            Box::new(std::io::empty()),
            &mut ClosedPipe,
            &mut std::io::sink(),
        )
        .await;
        assert!(result.is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn user_show_end_to_end_prints_a_record() {
        let user = r#"{"login": "alice", "email": "alice@example.com", "displayName": "Alice",
            "role": "member", "osProfile": "homelabber", "services": ["jellyfin"], "uid": 1000,
            "gid": 1000, "disabled": false, "subnet": "10.87.0.0/24", "boxState": "absent",
            "createdAt": "2026-11-22T14:00:00Z", "updatedAt": "2026-11-22T14:00:00Z"}"#;
        let (request, code, out, _) =
            run_against("user show alice@example.com", answer("200 OK", user)).await;
        assert!(request.starts_with("GET /api/v1/users/alice%40example.com HTTP/1.1\r\n"));
        assert!(
            !request.to_ascii_lowercase().contains("authorization:"),
            "{request}"
        );
        assert_eq!(code, 0);
        assert!(
            out.starts_with("login:       alice\nemail:       alice@example.com\n"),
            "{out}"
        );
        assert!(out.contains("services:    jellyfin\n") && out.contains("disabled:    no\n"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unauthorized_answer_exits_five_with_the_api_message_and_kind() {
        let body = r#"{"error": {"kind": "unauthorized", "message": "token expired"}}"#;
        let (_, code, out, err) = run_against("token list", answer("401 Unauthorized", body)).await;
        assert_eq!((code, out.as_str()), (5, ""));
        assert_eq!(err, "error: token expired (unauthorized)\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn not_found_exits_four() {
        let body = r#"{"error": {"kind": "not_found", "message": "no such user"}}"#;
        let (request, code, _, err) =
            run_against("state rm bob wallpaper", answer("404 Not Found", body)).await;
        assert!(request.starts_with("DELETE /api/v1/users/bob/state/wallpaper HTTP/1.1\r\n"));
        assert_eq!(
            (code, err.as_str()),
            (4, "error: no such user (not_found)\n")
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn box_start_end_to_end_prints_the_state_line_and_a_busy_box_exits_one() {
        let view = r#"{"user": "alice", "role": "member", "profile": "homelabber",
            "state": "running", "desired": "running", "pid": 1234, "apparmor": true}"#;
        let (request, code, out, _) = run_against("box start alice", answer("200 OK", view)).await;
        assert!(request.starts_with("POST /api/v1/boxes/alice/start HTTP/1.1\r\n"));
        assert_eq!((code, out.as_str()), (0, "alice: running (pid 1234)\n"));

        let busy = r#"{"error": {"kind": "box_busy", "message": "box alice is busy"}}"#;
        let (_, code, out, err) = run_against("box stop alice", answer("409 Conflict", busy)).await;
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(err, "error: box alice is busy (box_busy)\n");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exec_end_to_end_writes_the_output_and_exits_with_the_commands_code() {
        // "hi\n" and "no\n" in base64; the last line has no newline.
        let stream =
            "{\"stdout\":\"aGkK\"}\n{\"stderr\":\"bm8K\"}\n{\"exitCode\":124,\"timedOut\":true}";
        let (request, code, out, err) =
            run_against("exec alice -- sleep 99", answer("200 OK", stream)).await;
        assert!(request.starts_with("POST /api/v1/boxes/alice/exec/stream HTTP/1.1\r\n"));
        assert!(request.ends_with(r#"{"argv":["sleep","99"]}"#), "{request}");
        assert_eq!((code, out.as_str()), (124, "hi\n"));
        assert_eq!(
            err,
            "no\nerror: the command timed out and was killed (timed_out)\n"
        );

        let (_, code, out, _) =
            run_against("exec --json alice -- true", answer("200 OK", stream)).await;
        assert_eq!((code, out.lines().count()), (124, 3));
        assert!(out.starts_with("{\"stdout\":\"aGkK\"}\n"), "{out}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exec_in_a_stopped_box_is_an_api_error_and_a_cut_stream_is_unreachable() {
        let body =
            r#"{"error": {"kind": "box_not_running", "message": "box alice is not running"}}"#;
        let (_, code, out, err) =
            run_against("exec alice true", answer("409 Conflict", body)).await;
        assert_eq!((code, out.as_str()), (1, ""));
        assert_eq!(err, "error: box alice is not running (box_not_running)\n");

        let cut = "{\"stdout\":\"aGkK\"}\n";
        let (_, code, out, err) = run_against("exec alice true", answer("200 OK", cut)).await;
        assert_eq!((code, out.as_str()), (3, "hi\n"));
        assert!(
            err.contains("ended before the command's exit status"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn json_mode_prints_the_answer_pretty_and_delete_prints_confirmation() {
        let body = r#"{"services":[{"name":"git"}]}"#;
        let (request, code, out, _) =
            run_against("service list --json", answer("200 OK", body)).await;
        assert!(request.starts_with("GET /api/v1/services HTTP/1.1\r\n"));
        let pretty = "{\n  \"services\": [\n    {\n      \"name\": \"git\"\n    }\n  ]\n}\n";
        assert_eq!((code, out.as_str()), (0, pretty));

        let (request, code, out, _) =
            run_against("service rm git", answer("204 No Content", "")).await;
        assert!(request.starts_with("DELETE /api/v1/services/git HTTP/1.1\r\n"));
        assert_eq!((code, out.as_str()), (0, "deleted service git\n"));
    }
}
