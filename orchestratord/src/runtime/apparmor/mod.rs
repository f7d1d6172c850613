//! AppArmor for boxes, where the kernel has it: a second wall behind namespaces, empty
//! capability sets, no_new_privs and seccomp (SECURITY.md).
//!
//! The profile text is `policy::apparmor::render(user)` (profile
//! `orchestratord-box-<login>`). Its life, in order (docs/apparmor.md):
//!
//! 1. [`kernel_enabled`] decides once whether the host has AppArmor at all. Without it
//!    nothing below is called and boxes rely on the other walls.
//! 2. Before a box starts, the daemon compiles and loads the profile with [`Parser::load`]
//!    (`apparmor_parser -r`: load, or atomically replace the running version, so a box that
//!    is restarted after an upgrade gets the new rules).
//! 3. In the box helper, as the last steps before exec and in this order (runc's
//!    `finalizeNamespace` then `apparmor.ApplyProfile`, then no_new_privs, seccomp, execve):
//!    [`exec_transition`] asks the kernel to run the next `execve` of this thread under the
//!    profile. The helper must itself be unconfined: with no_new_privs set, AppArmor only
//!    lets a confined task move to a subset of its own confinement.
//! 4. When a box is deleted (or reconciliation finds a profile without a box,
//!    [`Parser::loaded`]), the daemon removes the profile with [`Parser::unload`].
//!
//! [`Parser::check`] compiles a profile without loading it (`apparmor_parser -Q`), which
//! works on any kernel; tests run it on every rendered profile.
//!
//! Roots are parameters: `sys_root` (normally `/sys`) locates the AppArmor module parameters
//! and the apparmorfs under securityfs, so tests point them at a temporary directory.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// `PATH` of the parser's cleared environment.
const CHILD_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest profile name accepted by [`Parser::unload`] and [`exec_transition`]; a box
/// profile is at most 30 characters (`orchestratord-box-` and a 12-character login).
const MAX_PROFILE_NAME: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    #[error("cannot run {path} to {op} a profile")]
    Spawn {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot hand the profile to apparmor_parser to {op} it")]
    Stdin {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot collect the output of apparmor_parser asked to {op} a profile")]
    Output {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("apparmor_parser could not {op} the profile ({status}): {stderr}")]
    Parser {
        op: &'static str,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("{0:?} is not a profile name this daemon uses")]
    ProfileName(String),
    #[error("cannot remove profile {name} through {path}")]
    Remove {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the loaded profiles from {path}")]
    Profiles {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot ask for profile {profile} on the next exec through {path}")]
    ExecAttr {
        profile: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel did not record profile {profile} for the next exec: {path} reads {found:?}"
    )]
    ExecNotRecorded {
        profile: String,
        path: PathBuf,
        found: String,
    },
}

/// The apparmorfs (AppArmor's directory in securityfs) under `sys_root`.
pub fn apparmorfs(sys_root: &Path) -> PathBuf {
    sys_root.join("kernel/security/apparmor")
}

/// Whether the running kernel enforces AppArmor: the module says `Y` and its filesystem is
/// there (the test runc's `apparmor.IsEnabled` makes). `sys_root` is normally `/sys`.
pub fn kernel_enabled(sys_root: &Path) -> bool {
    let enabled = fs::read_to_string(sys_root.join("module/apparmor/parameters/enabled"))
        .is_ok_and(|v| v.trim() == "Y");
    enabled && apparmorfs(sys_root).is_dir()
}

/// Refuses anything but a plain profile name, so a name written to a kernel interface can
/// neither carry a second command (a newline), nor name a policy namespace (`:ns:name`),
/// nor a stacked label (`a//&b`).
fn check_profile_name(name: &str) -> Result<(), AppArmorError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PROFILE_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AppArmorError::ProfileName(name.to_string()))
    }
}

/// `apparmor_parser`, the one tool that compiles profiles and loads them into the kernel,
/// plus the two apparmorfs files the daemon reads and writes itself (the list of loaded
/// profiles and `.remove`). Every method blocks (a child process or kernel file I/O): the
/// daemon calls them from `spawn_blocking`, never on a tokio worker.
#[derive(Debug, Clone)]
pub struct Parser {
    path: PathBuf,
    apparmorfs: PathBuf,
}

impl Parser {
    /// Where Debian's and Ubuntu's `apparmor` package installs the parser (with or without
    /// the merged /usr).
    pub const DEFAULT_PATH: &'static str = "/sbin/apparmor_parser";

    /// The parser at `path`, working on the apparmorfs under `sys_root` (normally `/sys`).
    pub fn new(path: impl Into<PathBuf>, sys_root: &Path) -> Self {
        Parser {
            path: path.into(),
            apparmorfs: apparmorfs(sys_root),
        }
    }

    /// Parses and compiles `text` without loading it: `-Q` (`--skip-kernel-load`) stops
    /// before the kernel, so this works on a kernel without AppArmor; `-K`
    /// (`--skip-cache`) neither reads nor writes the cache in /var/cache/apparmor.
    pub fn check(&self, text: &str) -> Result<(), AppArmorError> {
        self.run("check", &["-Q", "-K"], text)
    }

    /// Compiles `text` and loads it into the kernel, replacing a loaded profile of the same
    /// name (`-r`, `--replace`: processes already confined by it move to the new rules).
    /// `-K`: per-box profiles are generated from text on stdin, so a cache entry would only
    /// be litter left behind for users who are long gone. `-f` makes the parser use the
    /// same apparmorfs as [`Parser::loaded`] and [`Parser::unload`].
    pub fn load(&self, text: &str) -> Result<(), AppArmorError> {
        let fs = self.apparmorfs.to_string_lossy();
        self.run("load", &["-r", "-K", "-f", &fs], text)
    }

    /// Removes the profile `name` from the kernel. Removing a profile that is not loaded
    /// succeeds, so reconciliation can call this without looking first.
    ///
    /// This writes the name to `<apparmorfs>/.remove` (the kernel interface
    /// `apparmor_parser -R` itself uses, see apparmor(7)) instead of running
    /// `apparmor_parser -R` on a stub profile: the parser would have to parse a profile
    /// made up only to carry the name, and it reports "not loaded" only as text on stderr,
    /// while the kernel answers that with ENOENT.
    pub fn unload(&self, name: &str) -> Result<(), AppArmorError> {
        check_profile_name(name)?;
        let path = self.apparmorfs.join(".remove");
        let remove = |source| AppArmorError::Remove {
            name: name.to_string(),
            path: path.clone(),
            source,
        };
        // No create: a missing .remove means there is no apparmorfs here, not a file to make.
        let mut file = OpenOptions::new().write(true).open(&path).map_err(remove)?;
        // The kernel takes the whole name from one write.
        match file.write_all(name.as_bytes()) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map_err(remove),
        }
    }

    /// Names of the profiles loaded in the kernel, from `<apparmorfs>/profiles` (lines
    /// `name (mode)`).
    pub fn loaded(&self) -> Result<Vec<String>, AppArmorError> {
        let path = self.apparmorfs.join("profiles");
        let text =
            fs::read_to_string(&path).map_err(|source| AppArmorError::Profiles { path, source })?;
        Ok(text
            .lines()
            .filter_map(|l| l.rsplit_once(" (").map(|(name, _)| name.to_string()))
            .collect())
    }

    /// Runs the parser with `args`, `text` on stdin, in a cleared environment; keeps what it
    /// printed in the error.
    fn run(&self, op: &'static str, args: &[&str], text: &str) -> Result<(), AppArmorError> {
        let mut child = Command::new(&self.path)
            .args(args)
            .env_clear()
            .env("PATH", CHILD_PATH)
            // Includes are resolved against the parser's search path, never the daemon's
            // working directory.
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| AppArmorError::Spawn {
                op,
                path: self.path.clone(),
                source,
            })?;
        let stdin = child.stdin.take();
        // Feed stdin from a second thread while this one drains stdout and stderr, so a
        // parser that writes a lot before reading everything cannot deadlock with us.
        let (written, output) = std::thread::scope(|s| {
            let writer = s.spawn(move || match stdin {
                // Dropping stdin at the end closes it: the parser sees end of input.
                Some(mut stdin) => stdin.write_all(text.as_bytes()),
                None => Ok(()),
            });
            let output = child.wait_with_output();
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked")));
            (written, output)
        });
        let output = output.map_err(|source| AppArmorError::Output { op, source })?;
        if !output.status.success() {
            // A parser that stops at the first error may close stdin early (a broken pipe
            // here); its status and stderr are what explain the failure.
            return Err(AppArmorError::Parser {
                op,
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).trim().to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        // It succeeded, but on what? Only on the whole profile if the whole profile got in.
        written.map_err(|source| AppArmorError::Stdin { op, source })
    }
}

/// Arranges that the next `execve` of the calling thread runs confined by `profile`
/// (libapparmor's `aa_change_onexec`; what runc's `apparmor.ApplyProfile` does), reading
/// `/proc/thread-self`. See [`exec_transition_at`].
pub fn exec_transition(profile: &str) -> Result<(), AppArmorError> {
    exec_transition_at(Path::new("/proc/thread-self"), profile)
}

/// [`exec_transition`] with the calling thread's proc directory passed in.
///
/// Writes `exec <profile>` to `<thread_self>/attr/apparmor/exec`, or to the older
/// `<thread_self>/attr/exec` on kernels before the per-LSM directories (5.8). The attribute
/// is per thread: call this on the thread that execs, which in the single-threaded helper
/// is the process. On a kernel without AppArmor the write fails (EINVAL) and so does this.
///
/// Then it reads the attribute back: the kernel answers with the pending profile and its
/// mode (`<profile> (enforce)`), while a write that did not reach the kernel (a /proc that is
/// not procfs, the runc CVE-2025-52881 class) reads back as the text written, and the box
/// would have run unconfined without a word.
pub fn exec_transition_at(thread_self: &Path, profile: &str) -> Result<(), AppArmorError> {
    check_profile_name(profile)?;
    let modern = thread_self.join("attr/apparmor/exec");
    let path = if modern.exists() {
        modern
    } else {
        thread_self.join("attr/exec")
    };
    let attr_err = |source| AppArmorError::ExecAttr {
        profile: profile.to_string(),
        path: path.clone(),
        source,
    };
    // No create and no truncate: this must be the kernel's file, and it takes one write.
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(attr_err)?;
    file.write_all(format!("exec {profile}").as_bytes())
        .map_err(attr_err)?;
    drop(file);

    let mut found = String::new();
    OpenOptions::new()
        .read(true)
        .open(&path)
        .and_then(|mut f| f.read_to_string(&mut found))
        .map_err(attr_err)?;
    // Enforce mode only: a profile switched to complain mode would log and confine nothing.
    let recorded = found.trim_end_matches(['\0', '\n']) == format!("{profile} (enforce)");
    if recorded {
        Ok(())
    } else {
        Err(AppArmorError::ExecNotRecorded {
            profile: profile.to_string(),
            path,
            found,
        })
    }
}

#[cfg(test)]
mod tests;
