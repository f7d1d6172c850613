//! `orchestratorctl files`: a user's home through the file API. Paths are relative to the
//! home. `get` and `put` stream (a multi-gigabyte file never sits in memory); `-` is
//! stdout for `get` and stdin for `put`. `ls` follows every page of a listing.

use std::io::{Read, Write};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::cli::FilesCmd;
use crate::client::{api_path, query, usage, Call, Client, Failure, Response};
use crate::output;

const COLUMNS: &[output::Column] = &[
    ("TYPE", "type"),
    ("MODE", "mode"),
    ("UID", "uid"),
    ("SIZE", "size"),
    ("MODIFIED", "mtime"),
    ("NAME", "name"),
    ("TARGET", "target"),
];

fn files_path(user: &str, rest: &[&str]) -> Result<String> {
    let mut segs = vec!["users", user, "files"];
    segs.extend_from_slice(rest);
    api_path(&segs)
}

/// The answer's JSON, or the failure its status means.
fn ok_json(r: &Response) -> Result<Value> {
    if !r.status.is_success() {
        return Err(Failure::from_response(r.status, &r.body).into());
    }
    if r.body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&r.body).context("reading the daemon's answer")
}

pub async fn run(
    client: &Client,
    cmd: &FilesCmd,
    json_mode: bool,
    stdin: Box<dyn Read + Send>,
    out: &mut dyn Write,
) -> Result<u8> {
    match cmd {
        FilesCmd::Ls {
            user,
            path,
            all,
            sort,
            reverse,
        } => {
            let mut entries = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let q = query(&[
                    ("path", Some(path.clone())),
                    ("hidden", all.then(|| "true".to_string())),
                    ("sort", sort.clone()),
                    ("order", reverse.then(|| "desc".to_string())),
                    ("limit", Some("10000".into())),
                    ("cursor", cursor.clone()),
                ]);
                let call = Call {
                    method: Method::GET,
                    path: format!("{}{q}", files_path(user, &[])?),
                    body: None,
                };
                let page = ok_json(&client.send(&call).await?)?;
                if let Some(e) = page.get("entries").and_then(Value::as_array) {
                    entries.extend(e.iter().cloned());
                }
                match page.get("nextCursor").and_then(Value::as_str) {
                    Some(c) => cursor = Some(c.to_string()),
                    None => break,
                }
            }
            if json_mode {
                let v = json!({"path": path, "entries": entries});
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                write!(out, "{}", output::table(COLUMNS, &entries))?;
            }
            Ok(0)
        }
        FilesCmd::Get {
            user,
            remote,
            local,
        } => {
            let call = Call {
                method: Method::GET,
                path: format!(
                    "{}{}",
                    files_path(user, &["content"])?,
                    query(&[("path", Some(remote.clone()))])
                ),
                body: None,
            };
            let mut answer = client.open(&call, "application/octet-stream").await?;
            if !answer.status.is_success() {
                let body = answer.rest().await?;
                return Err(Failure::from_response(answer.status, &body).into());
            }
            let mut written: u64 = 0;
            if local == "-" {
                while let Some(chunk) = answer.chunk().await? {
                    out.write_all(&chunk).context("writing to stdout")?;
                }
            } else {
                // Into a temporary name next to LOCAL, renamed when complete: a broken
                // download never leaves a truncated file under the real name.
                let part = format!("{local}.part");
                let mut f =
                    std::fs::File::create(&part).with_context(|| format!("creating {part}"))?;
                let result: Result<()> = async {
                    while let Some(chunk) = answer.chunk().await? {
                        f.write_all(&chunk)
                            .with_context(|| format!("writing {part}"))?;
                        written += chunk.len() as u64;
                    }
                    f.sync_all().with_context(|| format!("writing {part}"))?;
                    std::fs::rename(&part, local)
                        .with_context(|| format!("renaming {part} to {local}"))
                }
                .await;
                if let Err(e) = result {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
                if json_mode {
                    let v =
                        json!({"user": user, "remote": remote, "local": local, "bytes": written});
                    writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                } else {
                    writeln!(
                        out,
                        "downloaded {written} bytes to {}",
                        output::sanitize(local)
                    )?;
                }
            }
            Ok(0)
        }
        FilesCmd::Put {
            user,
            local,
            remote,
            overwrite,
            mode,
        } => {
            let call = Call {
                method: Method::PUT,
                path: format!(
                    "{}{}",
                    files_path(user, &["content"])?,
                    query(&[
                        ("path", Some(remote.clone())),
                        ("overwrite", overwrite.then(|| "true".to_string())),
                        ("mode", mode.clone()),
                    ])
                ),
                body: None,
            };
            // stdin or the file is read on a thread of its own, a chunk at a time: a
            // multi-gigabyte pipe never sits in memory.
            let reader: Box<dyn Read + Send> = if local == "-" {
                stdin
            } else {
                Box::new(std::fs::File::open(local).with_context(|| format!("opening {local}"))?)
            };
            let body = ChannelBody::reading(reader)?.boxed();
            let mut answer = client.open_stream(&call, body).await?;
            let reply = answer.rest().await?;
            let v = ok_json(&Response {
                status: answer.status,
                body: reply,
            })?;
            if json_mode {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "uploaded {} bytes to {}",
                    output::cell(v.get("size")),
                    output::sanitize(remote)
                )?;
            }
            Ok(0)
        }
        FilesCmd::Rm {
            user,
            paths,
            recursive,
        } => {
            let mut done = Vec::new();
            for p in paths {
                let call = Call {
                    method: Method::DELETE,
                    path: format!(
                        "{}{}",
                        files_path(user, &["entry"])?,
                        query(&[
                            ("path", Some(p.clone())),
                            ("recursive", recursive.then(|| "true".to_string())),
                        ])
                    ),
                    body: None,
                };
                let r = client.send(&call).await?;
                if r.status != StatusCode::NO_CONTENT {
                    ok_json(&r)?;
                }
                if !json_mode {
                    writeln!(out, "deleted {}", output::sanitize(p))?;
                }
                done.push(p.clone());
            }
            if json_mode {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({"deleted": done}))?
                )?;
            }
            Ok(0)
        }
        FilesCmd::Mkdir {
            user,
            paths,
            parents,
        } => {
            let mut made = Vec::new();
            for p in paths {
                let call = Call {
                    method: Method::POST,
                    path: files_path(user, &["mkdir"])?,
                    body: Some(json!({"path": p, "parents": parents})),
                };
                let v = ok_json(&client.send(&call).await?)?;
                if !json_mode {
                    writeln!(out, "created {}", output::sanitize(p))?;
                }
                made.push(v);
            }
            if json_mode {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&json!({"created": made}))?
                )?;
            }
            Ok(0)
        }
        FilesCmd::Mv {
            user,
            paths,
            overwrite,
        } => {
            move_or_copy(
                client,
                Transfer::Move,
                user,
                paths,
                *overwrite,
                json_mode,
                out,
            )
            .await
        }
        FilesCmd::Cp {
            user,
            paths,
            recursive,
            overwrite,
        } => {
            let how = Transfer::Copy {
                recursive: *recursive,
            };
            move_or_copy(client, how, user, paths, *overwrite, json_mode, out).await
        }
    }
}

/// `mv` or `cp` inside the home.
#[derive(Debug, Clone, Copy)]
enum Transfer {
    Move,
    Copy { recursive: bool },
}

/// `mv|cp SRC... DST`: several sources go into the directory DST.
async fn move_or_copy(
    client: &Client,
    how: Transfer,
    user: &str,
    paths: &[String],
    overwrite: bool,
    json_mode: bool,
    out: &mut dyn Write,
) -> Result<u8> {
    let (route, verb, done_key) = match how {
        Transfer::Move => ("move", "mv", "moved"),
        Transfer::Copy { .. } => ("copy", "cp", "copied"),
    };
    let (dst, srcs) = paths
        .split_last()
        .filter(|(_, s)| !s.is_empty())
        .ok_or_else(|| usage(format!("{verb} needs a source and a destination")))?;
    let mut done = Vec::new();
    for src in srcs {
        let to = if srcs.len() > 1 {
            let name = src.trim_end_matches('/').rsplit('/').next().unwrap_or(src);
            format!("{}/{name}", dst.trim_end_matches('/'))
        } else {
            dst.clone()
        };
        let body = match how {
            Transfer::Move => json!({"from": src, "to": to, "overwrite": overwrite}),
            Transfer::Copy { recursive } => {
                json!({"from": src, "to": to, "overwrite": overwrite, "recursive": recursive})
            }
        };
        let call = Call {
            method: Method::POST,
            path: files_path(user, &[route])?,
            body: Some(body),
        };
        let v = ok_json(&client.send(&call).await?)?;
        if !json_mode {
            writeln!(
                out,
                "{done_key} {} to {}",
                output::sanitize(src),
                output::sanitize(&to)
            )?;
        }
        done.push(v);
    }
    if json_mode {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({done_key: done}))?
        )?;
    }
    Ok(0)
}

/// Size of the chunks an upload is read and sent in.
const READ_CHUNK: usize = 256 * 1024;

/// A request body fed by a reader thread.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl ChannelBody {
    /// A body of what `reader` yields, read on a thread of its own at most a few chunks
    /// ahead of the connection. The thread ends at the end of the input, at a read error
    /// (which fails the body) or once the body is gone; it is never waited for, so an
    /// answer that comes before the end of a pipe (a refused upload) is not held up by
    /// a read that may never return.
    fn reading(mut reader: Box<dyn Read + Send>) -> Result<ChannelBody> {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        std::thread::Builder::new()
            .name("upload-reader".into())
            .spawn(move || {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    let chunk = match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(e),
                    };
                    let failed = chunk.is_err();
                    if tx.blocking_send(chunk).is_err() || failed {
                        return;
                    }
                }
            })
            .context("starting the upload reader")?;
        Ok(ChannelBody(rx))
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}
