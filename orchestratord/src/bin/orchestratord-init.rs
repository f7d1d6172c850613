//! PID 1 of a box: reaps every process that ends up orphaned in the box's pid namespace
//! and forwards termination signals to all of them. Deliberately tiny and separate from the
//! daemon (runc CVE-2019-5736: the daemon's binary must not be what runs inside a box); it
//! is executed through a descriptor opened before pivot_root, so its host path is not
//! reachable from inside, and it runs as box-root with only CAP_KILL (bounded by the box's
//! user namespace), no_new_privs and the box's seccomp filter.
//!
//! Signals: SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are sent on to every
//! process in the box (`kill(-1, sig)` from pid 1 reaches all of them but pid 1 itself).
//! After SIGTERM, SIGINT or SIGQUIT init exits once no process is left, which tears down
//! the namespace; the daemon sends SIGKILL after a grace period otherwise.
//!
//! With `--subreaper -- PROGRAM ARGS...` (outside any box) it runs PROGRAM as a child and
//! reaps everything orphaned below it until it receives SIGTERM: a stand-in for a reaping
//! PID 1 on machines whose init does not reap (used by tests).

#![allow(unsafe_code)]

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const FORWARD: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A handler that does nothing: the signals are taken with sigwait, but pid 1 of a pid
/// namespace only receives signals from outside for which it has a handler (with the
/// default disposition the kernel drops them, blocked or not).
extern "C" fn noop(_: nix::libc::c_int) {}

fn main() {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(noop),
        nix::sys::signal::SaFlags::empty(),
        SigSet::empty(),
    );
    for s in FORWARD {
        // SAFETY: the handler is async-signal-safe (it does nothing).
        let _ = unsafe { nix::sys::signal::sigaction(s, &action) };
    }
    let mut set = SigSet::empty();
    for s in FORWARD {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    // Signals are taken synchronously with sigwait; blocked, they cannot interrupt a reap.
    if let Err(e) = set.thread_block() {
        eprintln!("orchestratord-init: cannot block signals: {e}");
        std::process::exit(1);
    }
    let args: Vec<String> = std::env::args().collect();
    let subreaper = args.get(1).map(String::as_str) == Some("--subreaper");
    if subreaper {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            eprintln!("orchestratord-init: cannot become a subreaper: {e}");
            std::process::exit(1);
        }
        let prog = args.iter().skip_while(|a| *a != "--").nth(1);
        if let Some(prog) = prog {
            let rest: Vec<&String> = args.iter().skip_while(|a| *a != "--").skip(2).collect();
            let mut cmd = std::process::Command::new(prog);
            cmd.args(rest);
            // The child must not inherit the blocked mask.
            let mut empty = SigSet::empty();
            for s in FORWARD {
                empty.add(s);
            }
            empty.add(Signal::SIGCHLD);
            let _ = empty.thread_unblock();
            let spawned = cmd.spawn();
            let _ = set.thread_block();
            match spawned {
                Ok(child) => println!("{}", child.id()),
                Err(e) => {
                    eprintln!("orchestratord-init: cannot start {prog}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let mut terminating = false;
    loop {
        // Reap everything that has exited.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => break,
                Err(_) => break,
            }
        }
        if terminating && only_init_left() {
            std::process::exit(0);
        }
        let sig = if terminating {
            // Poll for processes that are not init's children (commands started by exec
            // have their parent outside the box) while they wind down.
            match wait_timeout(&set, 50) {
                Some(s) => s,
                None => continue,
            }
        } else {
            match set.wait() {
                Ok(s) => s,
                Err(_) => continue,
            }
        };
        if sig == Signal::SIGCHLD {
            continue;
        }
        if subreaper {
            if sig == Signal::SIGTERM {
                std::process::exit(0);
            }
            continue;
        }
        let _ = kill(Pid::from_raw(-1), sig);
        if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
            terminating = true;
        }
    }
}

/// Whether pid 1 is the only process left in the box's pid namespace.
fn only_init_left() -> bool {
    match std::fs::read_dir("/proc") {
        Ok(dir) => !dir.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| pid != 1)
        }),
        Err(_) => true,
    }
}

/// sigtimedwait(2) on `set` for `ms` milliseconds.
fn wait_timeout(set: &SigSet, ms: i64) -> Option<Signal> {
    let ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: ms * 1_000_000,
    };
    // SAFETY: the set and timespec are valid for the call; siginfo may be null.
    let rc = unsafe { nix::libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    Signal::try_from(rc).ok()
}
