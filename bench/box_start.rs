//! Box runtime benchmarks B1, B3 and B10 of PERFORMANCE.md, against the real kernel, as
//! root, through the runtime API the daemon uses (`BoxRuntime::run(Command::Start/Stop)`,
//! `exec_command`), with the release-built `orchestratord-helper` and `orchestratord-init`.
//!
//! Every box lives in a cgroup subtree and a state directory unique to the run; both are
//! removed on exit, also on an error, a panic, SIGINT or SIGTERM (the guard's Drop stops
//! every box still running, sweeps the subtree and removes it).
//!
//! Modes (JSON lines on stdout, a human summary on stderr):
//! - `b1 --iterations N`: sequentially N times: start a box, run `true` in it through the
//!   exec helper, stop it. Per-iteration total and split (start, exec, stop), p50/p90/p99.
//!   `--peer NAME=CMD` (repeatable) times a peer command (split on whitespace, run
//!   directly, no shell) the same number of times with the same timing code, interleaved
//!   with ours in `--rounds` rounds so drift on a shared machine hits everyone alike.
//!   `--samples` adds one JSON line per measured iteration. `--network`: boxes get their
//!   network as the daemon gives it: the process first unshares a network namespace of
//!   its own (before any thread exists, so nothing touches the machine's namespace) and
//!   loads the base nftables table there; each timed start then applies the user's rules
//!   (`policy::nft::apply_user` through `runtime::net::Firewall`, as the service does
//!   before every start) and starts with `BoxRuntime::with_network(true)` (veth created
//!   in the box, addresses, route); stop deletes the link.
//! - `b3 --concurrency N`: N boxes started concurrently (one thread each), then N stopped
//!   concurrently; then checks that nothing leaked. `--peer NAME=CMD` runs N concurrent
//!   copies of a peer command as a reference.
//! - `b10 --boxes N`: N idle boxes; the sum of their cgroups' memory usage and of their
//!   processes' PSS and RSS, per box; then stops them.
//!
//! Run: `cargo build --release --bins --example box-start`, then
//! `target/release/examples/box-start b1 --iterations 100` (see bench/README.md).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use orchestratord::runtime::boxes::{
    become_subreaper, Binaries, BoxRuntime, Command, ExecRequest, Outcome, Running,
};
use orchestratord::runtime::cgroup::Cgroups;
use orchestratord::runtime::net::{Firewall, NetCommand};
use orchestratord::runtime::seccomp::{self, Compiled};
use policy::plan::{BoxPlan, PlanUser};
use policy::seccomp::{box_filter, Arch};
use policy::{Config, ProfileSet, Role};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Box runtime benchmarks B1, B3, B10 (bench/README.md)")]
struct Cli {
    /// The helper binary (default: orchestratord-helper beside this example's target dir).
    #[arg(long, global = true, value_name = "PATH")]
    helper: Option<PathBuf>,
    /// The init binary (default: orchestratord-init beside this example's target dir).
    #[arg(long, global = true, value_name = "PATH")]
    init: Option<PathBuf>,
    /// OS profile of the boxes.
    #[arg(long, global = true, default_value = "homelabber")]
    profile: String,
    /// Boxes with their network (rules + veth), in a network namespace of this process.
    #[arg(long, global = true)]
    network: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Sequential start + exec `true` + stop.
    B1 {
        #[arg(long, default_value_t = 100)]
        iterations: usize,
        /// Untimed iterations per tool before the measured ones.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// The iterations are split in this many rounds; each round runs ours and then
        /// every peer.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// A new user (login, slot, home, upper directory) for every iteration instead of
        /// restarting the same user's box.
        #[arg(long)]
        fresh_users: bool,
        /// NAME=COMMAND to time side by side (split on whitespace, no shell).
        #[arg(long, value_name = "NAME=CMD")]
        peer: Vec<String>,
        /// Also one JSON line per measured iteration (before the summaries).
        #[arg(long)]
        samples: bool,
    },
    /// Concurrent starts, then concurrent stops, then a leak check.
    B3 {
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// NAME=COMMAND run `concurrency` times concurrently as a reference.
        #[arg(long, value_name = "NAME=CMD")]
        peer: Vec<String>,
    },
    /// Memory of idle boxes.
    B10 {
        #[arg(long, default_value_t = 200)]
        boxes: usize,
        /// Seconds to let the boxes settle before measuring.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
}

// ---------------------------------------------------------------------------------------
// Interruption: SIGINT/SIGTERM set a flag that every loop checks, so the guard's Drop
// runs and no box outlives the benchmark.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn watch_signals() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    // Blocked here, before any other thread exists, so every thread inherits the mask and
    // only the watcher takes them (std resets the mask in spawned children).
    set.thread_block()?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("box-start: {sig}, cleaning up");
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
    });
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Statistics.

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    min: f64,
    max: f64,
    mean: f64,
}

fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    Summary {
        n: s.len(),
        p50: pct(&s, 50.0),
        p90: pct(&s, 90.0),
        p99: pct(&s, 99.0),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
        mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl Summary {
    fn json(&self) -> serde_json::Value {
        json!({
            "n": self.n, "p50": round3(self.p50), "p90": round3(self.p90),
            "p99": round3(self.p99), "min": round3(self.min), "max": round3(self.max),
            "mean": round3(self.mean),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------
// The lab: a runtime on a temp state dir and a unique cgroup subtree, cleaned up on drop.

/// A started box.
#[derive(Debug)]
struct Bx {
    plan: BoxPlan,
    running: Running,
}

#[derive(Debug)]
struct Lab {
    rt: BoxRuntime,
    cgroups: Cgroups,
    config: Config,
    profiles: ProfileSet,
    seccomp: Compiled,
    /// With `--network`: the firewall (in this process's own network namespace) and the
    /// rule context.
    net: Option<(Firewall, policy::nft::Context)>,
    /// Cgroups and inits of boxes started and not yet stopped.
    live: Mutex<Vec<(String, Running)>>,
    // Last: removed after Drop::drop has stopped every box.
    dir: tempfile::TempDir,
}

fn default_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/release/examples/box-start -> target/release/<name>, preferring the static
    // build in target/release/static/ as the daemon does (Binaries::beside).
    for dir in exe.ancestors().skip(1).take(2) {
        for p in [dir.join("static").join(name), dir.join(name)] {
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "{name} not found beside {}; build with `cargo build --release --bins` or pass --{}",
        exe.display(),
        name.trim_start_matches("orchestratord-")
    )
}

impl Lab {
    fn new(cli: &Cli) -> Result<Lab> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("box-start runs as root (it creates cgroups and namespaces)");
        }
        become_subreaper().context("become a subreaper")?;
        let bins = Binaries {
            helper: match &cli.helper {
                Some(p) => p.clone(),
                None => default_binary("orchestratord-helper")?,
            },
            init: match &cli.init {
                Some(p) => p.clone(),
                None => default_binary("orchestratord-init")?,
            },
        };
        let dir = tempfile::Builder::new()
            .prefix("orchd-bench-")
            .tempdir()
            .context("temp dir")?;
        let subtree = format!("orchd-bench-{}", std::process::id());
        let cgroups = Cgroups::detect(&subtree)?;
        let state = dir.path().join("state");
        let config = Config {
            state_dir: state.clone(),
            ..Default::default()
        };
        let profiles = ProfileSet::builtin();
        let profile = profiles
            .get(&cli.profile)
            .ok_or_else(|| anyhow!("no profile {:?}", cli.profile))?;
        let seccomp = seccomp::compile(&box_filter(
            Arch::native().context("no seccomp arch")?,
            &profile.spec.seccomp,
        ))?;
        let rt = BoxRuntime::new(bins, cgroups.clone(), state).with_network(cli.network);
        let net = if cli.network {
            let fw = Firewall::new()?;
            let ctx = policy::nft::Context {
                pool: config.network.pool,
                resolver: Some(std::net::Ipv4Addr::new(192, 0, 2, 53)),
                api_port: Some(9000),
            };
            fw.run(NetCommand::Load {
                base: &policy::nft::base(&ctx, false),
                then: "",
            })?;
            Some((fw, ctx))
        } else {
            None
        };
        Ok(Lab {
            rt,
            cgroups,
            config,
            profiles,
            seccomp,
            net,
            live: Mutex::new(Vec::new()),
            dir,
        })
    }

    fn plan(&self, profile: &str, login: &str, slot: u32) -> Result<BoxPlan> {
        let user = PlanUser {
            name: login.parse()?,
            uid: 20_000 + slot,
            gid: 20_000 + slot,
            role: Role::Member,
            disabled: false,
            slot,
            services: BTreeSet::new(),
        };
        let profile = self
            .profiles
            .get(profile)
            .ok_or_else(|| anyhow!("no profile {profile:?}"))?;
        Ok(policy::plan::compile(&self.config, &user, profile, &[])?)
    }

    fn start(&self, plan: BoxPlan) -> Result<Bx> {
        if let Some((fw, ctx)) = &self.net {
            let user = policy::nft::UserNet::new(&plan.user, &plan.network, Vec::new());
            let t = policy::nft::apply_user(ctx, &user);
            fw.run(NetCommand::Apply { text: &t.text })
                .context("apply the user's rules")?;
        }
        let out = self.rt.run(Command::Start {
            plan: &plan,
            seccomp: &self.seccomp,
        });
        match out {
            Ok(Outcome::Started(running)) => {
                self.live
                    .lock()
                    .unwrap()
                    .push((plan.cgroup.clone(), running));
                Ok(Bx { plan, running })
            }
            Ok(other) => bail!("start answered {other:?}"),
            Err(e) => {
                let log =
                    fs::read_to_string(self.rt.paths(plan.user.as_str()).log).unwrap_or_default();
                Err(anyhow::Error::new(e)
                    .context(format!("start {} failed; box log:\n{log}", plan.user)))
            }
        }
    }

    /// Runs `argv` in the box through the exec helper; Err unless it exits 0.
    fn exec(&self, bx: &Bx, argv: &[&str]) -> Result<()> {
        let req = ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (mut cmd, framed) = self
            .rt
            .exec_command(&bx.plan, &bx.running, &self.seccomp, &req)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn the exec helper")?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&framed)?;
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "exec {argv:?} in {}: {}: {}",
                bx.plan.user,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `Command::Stop`, timed; then the init is reaped (untimed), as the daemon's init
    /// watcher does: Stop itself reaps only an init that is already a zombie.
    fn stop(&self, bx: &Bx, grace: Duration) -> Result<Duration> {
        let t = Instant::now();
        self.rt.run(Command::Stop {
            cgroup: &bx.plan.cgroup,
            running: Some(bx.running),
            grace,
            home_mount: None,
        })?;
        let took = t.elapsed();
        self.live
            .lock()
            .unwrap()
            .retain(|(cg, _)| cg != &bx.plan.cgroup);
        reap_init(bx.running.pid);
        Ok(took)
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()));
        if !live.is_empty() {
            eprintln!("box-start: stopping {} box(es) left running", live.len());
        }
        for (cgroup, running) in live {
            if let Err(e) = self.rt.run(Command::Stop {
                cgroup: &cgroup,
                running: Some(running),
                grace: Duration::from_millis(100),
                home_mount: None,
            }) {
                eprintln!("box-start: cleanup: stop {cgroup}: {e:#}");
            }
            reap_init(running.pid);
        }
        if let Err(e) = self.rt.run(Command::Sweep {
            known: &BTreeSet::new(),
        }) {
            eprintln!("box-start: cleanup: sweep: {e:#}");
        }
        for base in self.cgroups.bases() {
            if let Err(e) = fs::remove_dir(base) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("box-start: cleanup: rmdir {}: {e}", base.display());
                }
            }
        }
    }
}

/// Waits for a stopped box's init (our child: we are a subreaper and its helper exited)
/// and reaps it. Gives up after a few seconds rather than hang the benchmark.
fn reap_init(pid: i32) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(WaitStatus::StillAlive) => {
                eprintln!("box-start: init {pid} did not exit after its stop");
                return;
            }
            // Reaped, or not our child (ECHILD): nothing left to do.
            _ => return,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Peers: commands timed with the same clock and spawn code as ours.

#[derive(Debug, Clone)]
struct Peer {
    name: String,
    argv: Vec<String>,
}

fn parse_peers(specs: &[String]) -> Result<Vec<Peer>> {
    specs
        .iter()
        .map(|s| {
            let (name, cmd) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("--peer {s:?}: expected NAME=COMMAND"))?;
            let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
            if name.is_empty() || argv.is_empty() {
                bail!("--peer {s:?}: expected NAME=COMMAND");
            }
            Ok(Peer {
                name: name.to_string(),
                argv,
            })
        })
        .collect()
}

/// Reaps orphans that peers left to us (we are a subreaper, so a peer's daemonized or
/// double-forked helper becomes our child when it exits). Only called while no box runs.
fn reap_orphans() -> usize {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut n = 0;
    while let Ok(st) = waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
        n += 1;
    }
    n
}

/// Runs the peer once; Err unless it exits 0.
fn run_peer(p: &Peer) -> Result<Duration> {
    let t = Instant::now();
    let out = std::process::Command::new(&p.argv[0])
        .args(&p.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {}", p.argv[0]))?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            p.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(d)
}

// ---------------------------------------------------------------------------------------
// B1

#[derive(Debug, Default)]
struct B1Samples {
    start: Vec<f64>,
    exec: Vec<f64>,
    stop: Vec<f64>,
    total: Vec<f64>,
}

fn b1_once(lab: &Lab, profile: &str, login: &str, slot: u32) -> Result<[f64; 3]> {
    let plan = lab.plan(profile, login, slot)?;
    let t0 = Instant::now();
    let bx = lab.start(plan)?;
    let t1 = Instant::now();
    lab.exec(&bx, &["true"])?;
    let t2 = Instant::now();
    // `true` has exited, so only init is left: the grace is not waited out.
    let stop = lab.stop(&bx, Duration::ZERO)?;
    Ok([ms(t1 - t0), ms(t2 - t1), ms(stop)])
}

#[derive(Debug, Clone, Copy)]
struct B1Options {
    iterations: usize,
    warmup: usize,
    rounds: usize,
    fresh: bool,
    samples: bool,
}

fn b1(cli: &Cli, opts: B1Options, peers: &[Peer]) -> Result<()> {
    let B1Options {
        iterations,
        warmup,
        rounds,
        fresh,
        samples,
    } = opts;
    let lab = Lab::new(cli)?;
    let rounds = rounds.clamp(1, iterations.max(1));
    let mut ours = B1Samples::default();
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut slot = 1u32;
    let mut next_user = |fresh: bool| -> (String, u32) {
        if fresh {
            slot += 1;
            (format!("bench{slot}"), slot)
        } else {
            ("bench".to_string(), 1)
        }
    };
    for _ in 0..warmup {
        check_interrupted()?;
        let (login, s) = next_user(fresh);
        b1_once(&lab, &cli.profile, &login, s)?;
        for p in peers {
            run_peer(p)?;
            reap_orphans();
        }
    }
    for r in 0..rounds {
        let n = iterations / rounds + usize::from(r < iterations % rounds);
        for _ in 0..n {
            check_interrupted()?;
            let (login, s) = next_user(fresh);
            let [a, b, c] = b1_once(&lab, &cli.profile, &login, s)?;
            if samples {
                emit(json!({
                    "bench": "b1", "tool": "ours", "round": r, "user": login,
                    "start_ms": round3(a), "exec_ms": round3(b), "stop_ms": round3(c),
                    "total_ms": round3(a + b + c),
                }));
            }
            ours.start.push(a);
            ours.exec.push(b);
            ours.stop.push(c);
            ours.total.push(a + b + c);
        }
        for (i, p) in peers.iter().enumerate() {
            for _ in 0..n {
                check_interrupted()?;
                let d = ms(run_peer(p)?);
                reap_orphans();
                if samples {
                    emit(json!({
                        "bench": "b1", "tool": p.name, "round": r, "total_ms": round3(d),
                    }));
                }
                theirs[i].push(d);
            }
        }
    }
    let total = summarize(&ours.total);
    let parts = [
        ("start", summarize(&ours.start)),
        ("exec", summarize(&ours.exec)),
        ("stop", summarize(&ours.stop)),
    ];
    emit(json!({
        "bench": "b1", "tool": "ours", "profile": cli.profile, "fresh_users": fresh,
        "network": cli.network,
        "unit": "ms", "total": total.json(),
        "start": parts[0].1.json(), "exec": parts[1].1.json(), "stop": parts[2].1.json(),
    }));
    let peer_sums: Vec<Summary> = theirs.iter().map(|s| summarize(s)).collect();
    for (p, s) in peers.iter().zip(&peer_sums) {
        emit(json!({
            "bench": "b1", "tool": p.name, "argv": p.argv, "unit": "ms", "total": s.json(),
            "ratio_ours_p50": round3(total.p50 / s.p50),
        }));
    }

    let mut e = std::io::stderr().lock();
    writeln!(
        e,
        "\nB1: start a box + run `true` + stop, sequential, {iterations} iterations \
         ({rounds} interleaved rounds, {warmup} warm-up), profile {}, {} user(s), {}\n",
        cli.profile,
        if fresh { "a fresh" } else { "the same" },
        if cli.network {
            "with network (rules applied + veth)"
        } else {
            "without network"
        }
    )?;
    writeln!(e, "| tool | p50 ms | p90 ms | p99 ms | ours/tool p50 |")?;
    writeln!(e, "|---|---|---|---|---|")?;
    writeln!(
        e,
        "| ours (start+exec+stop) | {:.2} | {:.2} | {:.2} | 1.00 |",
        total.p50, total.p90, total.p99
    )?;
    for (name, s) in &parts {
        writeln!(
            e,
            "| ours: {name} | {:.2} | {:.2} | {:.2} | - |",
            s.p50, s.p90, s.p99
        )?;
    }
    for (p, s) in peers.iter().zip(&peer_sums) {
        writeln!(
            e,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            p.name,
            s.p50,
            s.p90,
            s.p99,
            total.p50 / s.p50
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// B3

/// Runs `f(i)` on `n` threads released together; returns each result with its duration.
fn concurrently<T: Send>(
    n: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> (Duration, Vec<(f64, Result<T>)>) {
    let barrier = std::sync::Barrier::new(n + 1);
    let f = &f;
    let barrier = &barrier;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = f(i);
                    (ms(t.elapsed()), r)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or((f64::NAN, Err(anyhow!("thread panicked"))))
            })
            .collect();
        (t.elapsed(), results)
    })
}

fn b3(cli: &Cli, n: usize, peers: &[Peer]) -> Result<()> {
    let lab = Lab::new(cli)?;
    let plans: Vec<BoxPlan> = (0..n)
        .map(|i| lab.plan(&cli.profile, &format!("churn{i}"), i as u32 + 1))
        .collect::<Result<_>>()?;
    check_interrupted()?;
    let (start_wall, started) = concurrently(n, |i| lab.start(plans[i].clone()));
    let mut boxes = Vec::new();
    let mut start_ms = Vec::new();
    let mut errors = Vec::new();
    for (d, r) in started {
        match r {
            Ok(b) => {
                start_ms.push(d);
                boxes.push(b);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!(
            "{} of {n} starts failed; first: {}",
            errors.len(),
            errors[0]
        );
    }
    check_interrupted()?;
    let grace = Duration::from_secs(2);
    let (stop_wall, stopped) = concurrently(boxes.len(), |i| lab.stop(&boxes[i], grace));
    let mut stop_ms = Vec::new();
    for (_, r) in stopped {
        match r {
            Ok(d) => stop_ms.push(ms(d)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{} of {n} stops failed; first: {}", errors.len(), errors[0]);
    }
    let (s, t) = (summarize(&start_ms), summarize(&stop_ms));
    emit(json!({
        "bench": "b3", "tool": "ours", "concurrency": n, "unit": "ms",
        "start": s.json(), "stop": t.json(),
        "start_wall": round3(ms(start_wall)), "stop_wall": round3(ms(stop_wall)),
    }));
    // Before the peers: what they leave behind is not ours.
    let leaks = leak_check(&lab, &boxes)?;
    emit(json!({"bench": "b3", "leaks": leaks}));

    let mut peer_rows = Vec::new();
    for p in peers {
        check_interrupted()?;
        let (wall, res) = concurrently(n, |_| run_peer(p));
        let mut d = Vec::new();
        for (_, r) in res {
            d.push(ms(r?));
        }
        let ps = summarize(&d);
        emit(json!({
            "bench": "b3", "tool": p.name, "argv": p.argv, "concurrency": n, "unit": "ms",
            "run": ps.json(), "wall": round3(ms(wall)),
        }));
        peer_rows.push((p.name.clone(), ps, wall));
        let orphans = reap_orphans();
        if orphans > 0 {
            eprintln!(
                "box-start: reaped {orphans} orphan(s) {} left to us",
                p.name
            );
        }
    }

    let mut e = std::io::stderr().lock();
    writeln!(
        e,
        "\nB3: {n} concurrent starts, then {n} concurrent stops (profile {})\n",
        cli.profile
    )?;
    writeln!(e, "| op | p50 ms | p99 ms | max ms | wall ms |")?;
    writeln!(e, "|---|---|---|---|---|")?;
    writeln!(
        e,
        "| ours: start | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.p50,
        s.p99,
        s.max,
        ms(start_wall)
    )?;
    writeln!(
        e,
        "| ours: stop | {:.1} | {:.1} | {:.1} | {:.1} |",
        t.p50,
        t.p99,
        t.max,
        ms(stop_wall)
    )?;
    for (name, ps, wall) in &peer_rows {
        writeln!(
            e,
            "| {name}: run (start+exit) | {:.1} | {:.1} | {:.1} | {:.1} |",
            ps.p50,
            ps.p99,
            ps.max,
            ms(*wall)
        )?;
    }
    if leaks.is_empty() {
        writeln!(
            e,
            "\nleak check: nothing leaked (no cgroup under the subtree, no process, no mount, \
             no child; box dirs hold only box.log, an empty stage, and upper/work with \
             only the home mount point)"
        )?;
        Ok(())
    } else {
        writeln!(e, "\nLEAKED:")?;
        for l in &leaks {
            writeln!(e, "  {l}")?;
        }
        bail!("{} leak(s)", leaks.len())
    }
}

/// What stopped boxes left behind that they should not have.
fn leak_check(lab: &Lab, boxes: &[Bx]) -> Result<Vec<String>> {
    let mut leaks = Vec::new();
    // Cgroups: nothing under the subtree, and nothing running in whatever is there.
    for base in lab.cgroups.bases() {
        let Ok(entries) = fs::read_dir(base) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let procs = fs::read_to_string(entry.path().join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .count();
                leaks.push(format!(
                    "cgroup {} ({procs} processes)",
                    entry.path().display()
                ));
            }
        }
    }
    // Inits: gone, and no child of ours left (zombie or not).
    for b in boxes {
        if BoxRuntime::alive(&b.running) {
            leaks.push(format!(
                "init {} of {} still alive",
                b.running.pid, b.plan.user
            ));
        }
    }
    let me = std::process::id().to_string();
    for entry in fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut f = after.split(' ');
        let state = f.next().unwrap_or("");
        if f.next() == Some(me.as_str()) {
            leaks.push(format!("child process {pid} (state {state})"));
        }
    }
    // Mounts: the helper mounts only in its own namespace; none may show on the host.
    let tmp = lab.dir.path().to_string_lossy().into_owned();
    for line in fs::read_to_string("/proc/self/mountinfo")?.lines() {
        if line.split(' ').nth(4).is_some_and(|m| m.starts_with(&tmp)) {
            leaks.push(format!("mount: {line}"));
        }
    }
    // Files: a stopped box keeps its log; its stage is an empty mount point; the
    // persistent upper/work of the profile stay (by design) but the idle box wrote nothing.
    let boxes_dir = lab.state_dir().join("boxes");
    for b in boxes {
        let dir = boxes_dir.join(b.plan.user.as_str());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            match name.as_str() {
                // The box's log and its generated layer (its /etc files, /root and the
                // home's mount point, rewritten at each start) stay with the box.
                "box.log" | "gen" => {}
                "stage" | "upper" | "work" => {
                    let mut inner = Vec::new();
                    walk(&path, &mut inner);
                    // overlayfs keeps its empty `work/work` directory, and the home's
                    // mount point is created through the overlay, so the persistent upper
                    // holds `home/<login>` (empty directories, by design).
                    let home = path.join("home");
                    let login = home.join(b.plan.user.as_str());
                    inner.retain(|p| {
                        let empty_dir = fs::read_dir(p).is_ok_and(|mut d| d.next().is_none());
                        !((name == "work" && p == &path.join("work"))
                            || (name == "upper" && (p == &home || (p == &login && empty_dir))))
                    });
                    for p in inner {
                        leaks.push(format!("file {}", p.display()));
                    }
                }
                _ => leaks.push(format!("file {}", path.display())),
            }
        }
    }
    Ok(leaks)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            }
            out.push(p);
        }
    }
}

// ---------------------------------------------------------------------------------------
// B10

/// (Pss, Rss) in bytes of a process, from smaps_rollup.
fn pss_rss(pid: u32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("Pss:")?, field("Rss:")?))
}

/// A box cgroup's memory split: (anonymous, page cache incl. tmpfs, of which shmem/tmpfs,
/// kernel). v1: memory.stat rss/cache/shmem and memory.kmem.usage_in_bytes; v2:
/// memory.stat anon/file/shmem/kernel.
fn memory_split(lab: &Lab, cgroup: &str) -> Option<[u64; 4]> {
    let cg = lab.cgroups.boxed(cgroup).ok()?;
    let dir = cg.dirs().find(|d| d.join("memory.stat").is_file())?;
    let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
    let get = |key: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    if stat.lines().any(|l| l.starts_with("anon ")) {
        Some([get("anon"), get("file"), get("shmem"), get("kernel")])
    } else {
        let kmem = fs::read_to_string(dir.join("memory.kmem.usage_in_bytes"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Some([get("rss"), get("cache"), get("shmem"), kmem])
    }
}

fn mem_available() -> Option<u64> {
    fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn mib(b: f64) -> f64 {
    b / (1024.0 * 1024.0)
}

fn b10(cli: &Cli, n: usize, settle: f64) -> Result<()> {
    let lab = Lab::new(cli)?;
    let avail_before = mem_available();
    let mut boxes = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        check_interrupted()?;
        let plan = lab.plan(&cli.profile, &format!("idle{i}"), i as u32 + 1)?;
        boxes.push(lab.start(plan)?);
    }
    let start_all = t.elapsed();
    std::thread::sleep(Duration::from_secs_f64(settle));
    check_interrupted()?;
    let avail_after = mem_available();
    let mut cg_bytes = Vec::with_capacity(n);
    let mut pss = Vec::with_capacity(n);
    let mut rss = Vec::with_capacity(n);
    let mut procs = 0usize;
    let mut split = [0u64; 4];
    for b in &boxes {
        if let Some(parts) = memory_split(&lab, &b.plan.cgroup) {
            for (acc, v) in split.iter_mut().zip(parts) {
                *acc += v;
            }
        }
        let usage = lab
            .rt
            .usage(&b.plan.cgroup)?
            .ok_or_else(|| anyhow!("box {} has no cgroup", b.plan.user))?;
        cg_bytes.push(usage.memory_bytes as f64);
        let (mut p, mut r) = (0u64, 0u64);
        for pid in lab.rt.pids(&b.plan.cgroup)? {
            if let Some((a, c)) = pss_rss(pid) {
                p += a;
                r += c;
                procs += 1;
            }
        }
        pss.push(p as f64);
        rss.push(r as f64);
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let (cg, ps, rs) = (summarize(&cg_bytes), summarize(&pss), summarize(&rss));
    let avail_delta = match (avail_before, avail_after) {
        (Some(a), Some(b)) => Some(a as f64 - b as f64),
        _ => None,
    };
    emit(json!({
        "bench": "b10", "tool": "ours", "boxes": n, "profile": cli.profile, "processes": procs,
        "cgroup_memory_bytes": {"sum": sum(&cg_bytes), "per_box_mean": cg.mean,
            "per_box_p50": cg.p50, "per_box_max": cg.max},
        "pss_bytes": {"sum": sum(&pss), "per_box_mean": ps.mean, "per_box_p50": ps.p50},
        "rss_bytes": {"sum": sum(&rss), "per_box_mean": rs.mean, "per_box_p50": rs.p50},
        "cgroup_split_bytes": {"anon": split[0], "file": split[1], "shmem": split[2],
            "kernel": split[3]},
        "mem_available_drop_bytes": avail_delta,
        "start_all_ms": round3(ms(start_all)),
    }));
    let t = Instant::now();
    for b in &boxes {
        check_interrupted()?;
        lab.stop(b, Duration::from_secs(2))?;
    }
    let stop_all = t.elapsed();

    let mut e = std::io::stderr().lock();
    writeln!(
        e,
        "\nB10: {n} idle boxes (profile {}), {procs} processes (the inits)\n",
        cli.profile
    )?;
    writeln!(
        e,
        "| measure | sum MiB | per box KiB (mean) | per box KiB (p50) |"
    )?;
    writeln!(e, "|---|---|---|---|")?;
    let row = |e: &mut std::io::StderrLock, name: &str, v: &[f64], s: Summary| {
        writeln!(
            e,
            "| {name} | {:.1} | {:.0} | {:.0} |",
            mib(sum(v)),
            s.mean / 1024.0,
            s.p50 / 1024.0
        )
    };
    row(&mut e, "box cgroup memory usage", &cg_bytes, cg)?;
    for (name, v) in [
        ("- of which anonymous", split[0]),
        ("- of which page cache (incl. tmpfs)", split[1]),
        ("- (page cache that is tmpfs/shmem)", split[2]),
        ("- kernel memory (v1: kmem, counted in usage)", split[3]),
    ] {
        writeln!(
            e,
            "| {name} | {:.1} | {:.0} | - |",
            mib(v as f64),
            v as f64 / n as f64 / 1024.0
        )?;
    }
    row(&mut e, "PSS of box processes", &pss, ps)?;
    row(&mut e, "RSS of box processes", &rss, rs)?;
    if let Some(d) = avail_delta {
        writeln!(
            e,
            "| MemAvailable drop, whole machine (noisy: shared) | {:.1} | {:.0} | - |",
            mib(d),
            d / n as f64 / 1024.0
        )?;
    }
    writeln!(
        e,
        "\nstarted {n} in {:.0} ms, stopped in {:.0} ms",
        ms(start_all),
        ms(stop_all)
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.network {
        // Our own network namespace, while this process is still single-threaded: every
        // link and rule of the run lives and dies with it.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare a network namespace")?;
    }
    watch_signals()?;
    match &cli.mode {
        Mode::B1 {
            iterations,
            warmup,
            rounds,
            fresh_users,
            peer,
            samples,
        } => {
            let opts = B1Options {
                iterations: *iterations,
                warmup: *warmup,
                rounds: *rounds,
                fresh: *fresh_users,
                samples: *samples,
            };
            b1(&cli, opts, &parse_peers(peer)?)
        }
        Mode::B3 { concurrency, peer } => b3(&cli, *concurrency, &parse_peers(peer)?),
        Mode::B10 { boxes, settle } => b10(&cli, *boxes, *settle),
    }
}
