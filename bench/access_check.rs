//! In-process benchmark of the access check `may user U use service S` (issue 2: "answers in
//! microseconds"): the service-layer call the forward-auth route makes, over a file-backed
//! SQLite store with 200 users and 50 services, and the pure policy rule alone.
//!
//! Run: `cargo run --release --example access-check` (prints a Markdown table row set).

use std::time::Instant;

use orchestratord::service::{Actor, App, NewService, NewUserRequest};
use orchestratord::store::Store;
use policy::{Config, ProfileSet};

const USERS: usize = 200;
const SERVICES: usize = 50;
const CALLS: usize = 200_000;

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Config {
        state_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let store = Store::open(&config.database_path())?;
    let app = App::new(config, ProfileSet::builtin(), store);
    let root = Actor::root();
    for s in 0..SERVICES {
        app.add_service(
            &root,
            NewService {
                name: format!("svc{s}"),
                category: "apps".into(),
                url: format!("https://svc{s}.lab"),
                upstream: format!("10.0.{}.{}:8080", s / 200, s % 200 + 1),
                required_role: "member".into(),
                owner: None,
                icon: None,
            },
        )?;
    }
    for u in 0..USERS {
        let services: Vec<String> = (0..5)
            .map(|k| format!("svc{}", (u + k * 7) % SERVICES))
            .collect();
        app.create_user(
            &root,
            NewUserRequest {
                email: format!("user{u}@example.com"),
                display_name: format!("User {u}"),
                role: "member".into(),
                os_profile: "homelabber".into(),
                services: Some(services),
                login: Some(format!("user{u}")),
            },
        )?;
    }

    let names: Vec<(String, String)> = (0..CALLS)
        .map(|i| {
            (
                format!("user{}", i % USERS),
                format!("svc{}", (i * 13) % SERVICES),
            )
        })
        .collect();
    // Warm the statement cache and the page cache.
    for (u, s) in names.iter().take(1000) {
        app.may_use(&root, u, s)?;
    }
    let mut samples = Vec::with_capacity(CALLS);
    let mut allowed = 0usize;
    let start = Instant::now();
    for (u, s) in &names {
        let t = Instant::now();
        let (_, ok) = app.may_use(&root, u, s)?;
        samples.push(t.elapsed().as_nanos() as u64);
        allowed += usize::from(ok);
    }
    let total = start.elapsed();
    samples.sort_unstable();

    // The pure rule on its own.
    let registry = app.store.list_services()?;
    let user = app.store.find_user("user7")?.expect("user7 exists");
    let subject = policy::service::Subject {
        name: &user.login,
        role: user.role,
        disabled: false,
        services: &user.services,
        profile_services: &[],
    };
    let rule_start = Instant::now();
    let mut hits = 0usize;
    for i in 0..CALLS {
        hits += usize::from(registry[i % SERVICES].may_be_used_by(&subject));
    }
    let rule_ns = rule_start.elapsed().as_nanos() as f64 / CALLS as f64;

    println!("| access check | calls | p50 | p99 | mean |");
    println!("|---|---|---|---|---|");
    println!(
        "| `App::may_use` (2 indexed SQLite lookups + rule), {USERS} users, {SERVICES} services | {CALLS} | {:.1} us | {:.1} us | {:.1} us |",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        total.as_nanos() as f64 / CALLS as f64 / 1000.0
    );
    println!("| `Service::may_be_used_by` (pure rule) | {CALLS} | - | - | {rule_ns:.0} ns |");
    eprintln!("({allowed} allowed, {hits} rule hits)");
    Ok(())
}
