//! The orchestratord daemon.
//!
//! Start-up order: read and validate the config (or take the embedded defaults), load the
//! profiles, create the state directory (0700), open the database, write the first admin
//! token if none was ever made, prune the audit log, bind both listeners, then serve until
//! SIGTERM or SIGINT and drain in-flight requests.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orchestratord::api::{self, server, AppState};
use orchestratord::runtime::boxes::{self, Binaries, BoxRuntime};
use orchestratord::runtime::cgroup::Cgroups;
use orchestratord::service::net::{resolver_from_resolv_conf, Network};
use orchestratord::service::{App, BoxManager};
use orchestratord::store::Store;
use policy::{Config, ProfileSet};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Per-user isolated boxes for a homelab: the daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it the embedded defaults are used: API on
    /// 127.0.0.1:9000, socket /run/orchestratord/orchestratord.sock, state in
    /// /var/lib/orchestratord, host image, local homes.
    #[arg(long, short = 'c', env = "ORCHESTRATORD_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the config and profiles, print the effective config, and exit.
    #[arg(long)]
    check: bool,
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    Config::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn load_profiles(config: &Config) -> anyhow::Result<ProfileSet> {
    let Some(dir) = &config.profiles_dir else {
        return Ok(ProfileSet::builtin());
    };
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read profiles_dir {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .with_context(|| format!("profile file name {} is not UTF-8", path.display()))?
                .to_string();
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            sources.push((stem, text));
        }
    }
    let set = ProfileSet::from_sources(sources.iter().map(|(n, t)| (n.as_str(), t.as_str())))
        .with_context(|| format!("invalid profile in {}", dir.display()))?;
    anyhow::ensure!(
        !set.is_empty(),
        "profiles_dir {} holds no *.toml profiles",
        dir.display()
    );
    Ok(set)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Under systemd, journald stamps time and does not render ANSI colours.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

/// The box runtime, when this machine can run boxes (a usable cgroup hierarchy and the
/// helper binaries beside the daemon). Without it the daemon still serves its API; box
/// operations answer 503.
fn box_manager(config: &policy::Config, profiles: &policy::ProfileSet) -> Option<BoxManager> {
    let cgroups = match Cgroups::detect(&config.boxes.cgroup) {
        Ok(c) => c,
        Err(err) => {
            error!(%err, "no usable cgroup hierarchy: boxes are disabled");
            return None;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(err) => {
            error!(%err, "cannot locate the daemon binary: boxes are disabled");
            return None;
        }
    };
    let bins = Binaries::beside(&exe);
    for p in [&bins.helper, &bins.init] {
        if !p.is_file() {
            error!(path = %p.display(), "helper binary missing: boxes are disabled");
            return None;
        }
    }
    if let Err(err) = boxes::become_subreaper() {
        error!(%err, "cannot become a child subreaper: boxes are disabled");
        return None;
    }
    let runtime = BoxRuntime::new(bins, cgroups, config.state_dir.clone());
    match BoxManager::new(runtime, profiles) {
        Ok(mut m) => {
            m.grace = config.boxes.stop_grace.0;
            if !config.network.enabled {
                info!("box networking is disabled: boxes get loopback only");
                return Some(m);
            }
            // Fail closed: boxes that should have a firewalled network never run without
            // one.
            match Network::init(config) {
                Ok(net) => Some(m.with_network(net)),
                Err(err) => {
                    error!(err = format!("{err:#}"), "box networking unavailable: boxes are disabled (set network.enabled = false to run boxes with loopback only)");
                    None
                }
            }
        }
        Err(err) => {
            error!(%err, "cannot prepare the box runtime: boxes are disabled");
            None
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let profiles = load_profiles(&config)?;
    if args.check {
        println!(
            "{}",
            toml::to_string_pretty(&config).context("cannot render config")?
        );
        let names: Vec<_> = profiles.iter().map(|p| p.name.to_string()).collect();
        println!("# profiles: {}", names.join(", "));
        return Ok(());
    }

    let mut config = config;
    if config.network.enabled && config.network.resolver.is_none() {
        config.network.resolver = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .as_deref()
            .and_then(resolver_from_resolv_conf);
        match config.network.resolver {
            Some(r) => info!(resolver = %r, "boxes resolve names through the host's resolver"),
            None => warn!(
                "no usable resolver in /etc/resolv.conf: boxes get no DNS (set network.resolver)"
            ),
        }
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create state_dir {}", config.state_dir.display()))?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod state_dir {}", config.state_dir.display()))?;
    let store = Store::open(&config.database_path())?;
    let boxes = box_manager(&config, &profiles);
    let mut app = App::new(config.clone(), profiles, store);
    if let Some(m) = boxes {
        app = app.with_boxes(m);
    }

    let token_path = config.admin_token_path();
    if app.bootstrap_admin_token(&token_path)? {
        info!(path = %token_path.display(), "first start: wrote an admin token (mode 0600)");
        eprintln!(
            "orchestratord: first admin token written to {}",
            token_path.display()
        );
    }
    match app.prune_audit() {
        Ok(n) if n > 0 => info!(pruned = n, "pruned old audit entries"),
        Ok(_) => {}
        Err(err) => warn!(?err, "cannot prune the audit log"),
    }

    let state = AppState::new(app);
    let router = api::router(state.clone());
    let header_timeout = config.http.header_timeout.0;

    // Before anything can connect: a SIGTERM or SIGINT that arrives once the socket exists
    // shuts down gracefully, never by the default action (regression: a signal right after
    // start killed the daemon and left its socket behind).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let unix = server::bind_unix(&config.socket)?;
    info!(listen = %tcp.local_addr()?, socket = %config.socket.display(), "orchestratord is serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let tcp_task = tokio::spawn(server::serve(
        tcp,
        router.clone(),
        header_timeout,
        stop_rx.clone(),
    ));
    let unix_task = tokio::spawn(server::serve(unix, router, header_timeout, stop_rx.clone()));

    let prune_state = state.clone();
    let mut prune_stop = stop_rx.clone();
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        tick.tick().await;
        let mut minute = tokio::time::interval(Duration::from_secs(60));
        minute.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(err) = prune_state.app.prune_audit() {
                        warn!(?err, "cannot prune the audit log");
                    }
                }
                _ = minute.tick() => prune_state.app.sweep_listings(),
                _ = server::stopped(&mut prune_stop) => break,
            }
        }
    });

    // Boxes: adopt or restart what should run, then expire ephemeral boxes on time.
    if state.app.boxes.is_some() {
        let app = state.app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            // The firewall first: restarted boxes get their links only behind it.
            if let Err(err) = app.reconcile_network().await {
                error!(%err, "network reconciliation failed");
            }
            if let Err(err) = app.reconcile_boxes().await {
                error!(%err, "box reconciliation failed");
            }
            let net_app = app.clone();
            let mut net_stop = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(15));
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(err) = net_app.reconcile_network().await {
                                warn!(%err, "network reconciliation failed");
                            }
                        }
                        _ = server::stopped(&mut net_stop) => break,
                    }
                }
            });
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(err) = app.expire_boxes().await {
                            warn!(%err, "cannot expire boxes");
                        }
                    }
                    _ = server::stopped(&mut stop) => break,
                }
            }
        });
    }

    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let _ = stop_tx.send(true);
    // Terminal sockets are upgraded connections the serve loops no longer track: close
    // them and end their sessions (the shells would die with the daemon anyway).
    state.app.terminals.shutdown();
    let _ = tokio::join!(tcp_task, unix_task, pruner);
    let _ = std::fs::remove_file(&config.socket);
    info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("orchestratord: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("orchestratord: {err:#}");
            ExitCode::from(1)
        }
    }
}
