//! B7 of PERFORMANCE.md: the cost of adding, changing and removing one user's firewall
//! rules with 10, 100 and 1000 users present, ours (the daemon's path: one transaction
//! rendered by `policy::nft`, handed to libnftables in-process) side by side with the same
//! transaction through one `nft -f -` process ("nft batch") and with one `nft` process per
//! command of it ("nft per-op").
//!
//! The process unshares a network namespace of its own before anything else (it is still
//! single-threaded then), so the table and everything in it vanish with it: nothing is
//! added to the machine's ruleset.
//!
//! Run as root: `cargo run --release --example net-rules -- --iterations 50` (bench/b7-firewall.sh).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use orchestratord::runtime::net::{Firewall, NetCommand};
use policy::nft::{self, Upstream, UserNet};
use policy::profile::DnsPolicy;
use policy::UserName;
use serde_json::json;

fn ctx() -> nft::Context {
    nft::Context {
        pool: "10.80.0.0/12".parse().expect("pool"),
        resolver: Some(Ipv4Addr::new(192, 168, 1, 1)),
        api_port: Some(9000),
    }
}

/// User `n` of the bench: slot n of the pool, alternating profiles, two services.
fn user(n: u32, internet: bool) -> UserNet {
    let pool = ctx().pool;
    let subnet = pool.slot(n).expect("slot in pool");
    UserNet {
        login: UserName::parse(&format!("u{n}")).expect("login"),
        interface: format!("ob-u{n}"),
        subnet,
        gateway: subnet.host(1).expect("gw"),
        address: subnet.host(2).expect("addr"),
        internet,
        lan: n % 3 == 0,
        dns: if n % 2 == 0 {
            DnsPolicy::Allow
        } else {
            DnsPolicy::Block
        },
        services: vec![
            Upstream {
                addr: Ipv4Addr::new(192, 168, 1, 10),
                port: 8096,
            },
            Upstream {
                addr: Ipv4Addr::new(192, 168, 1, 11),
                port: 443,
            },
        ],
    }
}

fn nft_batch(text: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn nft")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn nft_per_op(text: &str) -> Result<()> {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        nft_batch(line)?;
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Row {
    users: u32,
    tool: &'static str,
    op: &'static str,
    samples: Vec<f64>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut iterations = 50usize;
    let mut per_op_iterations = 5usize;
    let mut sizes = vec![10u32, 100, 1000];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => iterations = it.next().context("--iterations N")?.parse()?,
            "--per-op-iterations" => {
                per_op_iterations = it.next().context("--per-op-iterations N")?.parse()?
            }
            "--sizes" => {
                sizes = it
                    .next()
                    .context("--sizes A,B,C")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    // Our own network namespace, before any thread exists.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare net")?;
    let fw = Firewall::new()?;
    let ctx = ctx();
    let mut rows = Vec::new();
    for &n in &sizes {
        let all: String = (0..n)
            .map(|i| nft::apply_user(&ctx, &user(i, i % 2 == 0)).text)
            .collect();
        let t = Instant::now();
        fw.run(NetCommand::Load {
            base: &nft::base(&ctx, false),
            then: &all,
        })?;
        eprintln!(
            "b7: loaded the base and {n} users in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        let st = fw.state()?;
        if st.fingerprints.len() != n as usize {
            bail!(
                "expected {n} users in the table, found {}",
                st.fingerprints.len()
            );
        }
        // The user that comes and goes: one more slot.
        let newcomer = user(n, true);
        let add = nft::apply_user(&ctx, &newcomer).text;
        let change = nft::apply_user(&ctx, &user(n, false)).text;
        let remove = nft::remove_user(&newcomer.login, &newcomer.interface, newcomer.address);
        type Runner<'a> = (&'static str, usize, Box<dyn Fn(&str) -> Result<()> + 'a>);
        let runners: Vec<Runner> = vec![
            (
                "ours",
                iterations,
                Box::new(|t: &str| Ok(fw.run(NetCommand::Apply { text: t })?)),
            ),
            ("nft batch", iterations, Box::new(nft_batch)),
            ("nft per-op", per_op_iterations, Box::new(nft_per_op)),
        ];
        for (tool, iters, run) in &runners {
            let mut s_add = Vec::new();
            let mut s_change = Vec::new();
            let mut s_remove = Vec::new();
            for _ in 0..*iters {
                for (text, out) in [
                    (&add, &mut s_add),
                    (&change, &mut s_change),
                    (&remove, &mut s_remove),
                ] {
                    let t = Instant::now();
                    run(text)?;
                    out.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            for (op, samples) in [("add", s_add), ("change", s_change), ("remove", s_remove)] {
                rows.push(Row {
                    users: n,
                    tool,
                    op,
                    samples,
                });
            }
        }
        // The table still holds exactly the n users.
        if fw.state()?.fingerprints.len() != n as usize {
            bail!("the table changed size during the run");
        }
    }
    eprintln!("| users | tool | op | n | p50 ms | p90 ms | p99 ms |");
    eprintln!("|---|---|---|---|---|---|---|");
    for r in &mut rows {
        r.samples.sort_by(f64::total_cmp);
        let (p50, p90, p99) = (
            pct(&r.samples, 0.5),
            pct(&r.samples, 0.9),
            pct(&r.samples, 0.99),
        );
        eprintln!(
            "| {} | {} | {} | {} | {p50:.3} | {p90:.3} | {p99:.3} |",
            r.users,
            r.tool,
            r.op,
            r.samples.len()
        );
        println!(
            "{}",
            json!({"bench": "b7", "users": r.users, "tool": r.tool, "op": r.op,
                   "n": r.samples.len(), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99})
        );
    }
    Ok(())
}
