//! Helpers shared by tests that touch the machine.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A number unique within this test process (combine with the pid for names that are
/// unique per run).
pub fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Records that a test skipped, and why. CI collects these lines from the file named by
/// `ORCHESTRATORD_SKIP_LOG` and fails on any skip not allowed for this machine (a skip is
/// only for something the machine truly lacks).
pub fn skip(area: &str, reason: &str) {
    let line = format!("{area}: {reason}");
    eprintln!("SKIPPED: {line}");
    if let Some(path) = std::env::var_os("ORCHESTRATORD_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
