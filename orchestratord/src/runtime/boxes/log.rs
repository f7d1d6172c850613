//! The per-box log: lifecycle events written by the daemon and whatever the box's init
//! writes to stdout/stderr (the file is its stdout, opened O_APPEND). Capped: when it
//! grows past the cap, the newest half is kept. Truncating in place (not rename) keeps the
//! init's descriptor pointing at the live file; with O_APPEND its writes land at the new
//! end.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Default size cap of a box log.
pub const CAP: u64 = 1 << 20;

/// Appends one line (a timestamp is the caller's business), then enforces `cap`.
pub fn append(path: &Path, line: &str, cap: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let mut text = line.trim_end_matches('\n').to_string();
    text.push('\n');
    f.write_all(text.as_bytes())?;
    enforce_cap(path, cap)
}

/// Keeps the newest half of the file (from a line start) once it exceeds `cap`.
pub fn enforce_cap(path: &Path, cap: u64) -> std::io::Result<()> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len <= cap {
        return Ok(());
    }
    let keep = cap / 2;
    f.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    f.read_to_end(&mut tail)?;
    let start = tail
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut out = b"[... older lines dropped: log cap reached]\n".to_vec();
    out.extend_from_slice(&tail[start..]);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&out)
}

/// The last `lines` lines of the log (empty when there is none).
pub fn tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    Ok(all[from..].iter().map(|l| format!("{l}\n")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_its_newest_half_once_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box.log");
        for i in 0..200 {
            append(
                &path,
                &format!("line {i:04} ........................"),
                2048,
            )
            .unwrap();
        }
        let len = fs::metadata(&path).unwrap().len();
        assert!(len <= 2048, "{len}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("line 0199"));
        assert!(!text.contains("line 0000"));
        assert!(text.starts_with("[... older lines dropped"));
        // Every kept line is whole.
        for l in text.lines().skip(1) {
            assert!(l.starts_with("line ") && l.ends_with('.'), "{l:?}");
        }
    }

    #[test]
    fn tail_returns_the_last_lines_and_nothing_for_a_missing_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box.log");
        assert_eq!(tail(&path, 5).unwrap(), "");
        for i in 0..10 {
            append(&path, &format!("e{i}"), CAP).unwrap();
        }
        assert_eq!(tail(&path, 2).unwrap(), "e8\ne9\n");
    }
}
