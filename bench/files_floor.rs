//! B8's syscall floor: what listing a directory costs in the kernel alone, with the same
//! work the file API does per entry (getdents, then `fstatat(AT_SYMLINK_NOFOLLOW)` of
//! every name and `readlinkat` of symlinks), no HTTP, no JSON, no sorting.
//!
//! `cargo run --release --example files-floor -- DIR [RUNS]` prints one JSON line
//! `{"dir", "entries", "runs", "median_ms", "min_ms"}`.

use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: files-floor DIR [RUNS]");
    let runs: usize = args
        .next()
        .map_or(7, |r| r.parse().expect("RUNS is a number"));
    let mut times = Vec::new();
    let mut entries = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let mut d = Dir::open(
            dir.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .expect("open dir");
        let fd = d.as_raw_fd();
        let names: Vec<std::ffi::CString> = d
            .iter()
            .map(|e| e.expect("readdir").file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        let mut n = 0;
        for name in &names {
            let st =
                fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).expect("fstatat");
            if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK {
                let _ = nix::fcntl::readlinkat(Some(fd), name.as_c_str());
            }
            n += 1;
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        entries = n;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"dir\": {:?}, \"entries\": {entries}, \"runs\": {runs}, \"median_ms\": {:.2}, \"min_ms\": {:.2}}}",
        dir,
        times[times.len() / 2],
        times[0]
    );
}
