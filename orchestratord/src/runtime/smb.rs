//! SMB homes: `mount.cifs` behind one small type, the mount options it is given, the
//! credentials file check, unmounting, and a health probe that never hangs the daemon.
//!
//! The daemon mounts the share on the host (`<state_dir>/smb/<login>`) with the user's
//! uid/gid and `nosuid,nodev`; the box start bind-mounts that directory as the home, and
//! the box stop unmounts it. The password never leaves the 0600 credentials file: it is
//! passed as `credentials=<file>` inside `-o`, never as `password=`, never in the
//! environment (the child's environment is cleared, so `PASSWD` cannot leak in), and
//! errors carry mount.cifs's own output and the options, which hold only the file's path.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SmbError {
    #[error("credentials file {path} cannot be read")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials file {path} must be a regular file owned by root with mode 0600 (found owner {uid}, mode {mode:o})")]
    CredentialsMode { path: PathBuf, uid: u32, mode: u32 },
    #[error(
        "{what} {value:?} cannot go into mount options (no commas, control characters or spaces)"
    )]
    Option { what: &'static str, value: String },
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount.cifs {unc} failed ({status}): {output}")]
    Mount {
        unc: String,
        status: String,
        output: String,
    },
    #[error("cannot unmount {path}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// One SMB home mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifsMount {
    /// `//server/share[/subdir]` (validated by the config: no commas or control chars).
    pub unc: String,
    pub target: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub credentials_file: PathBuf,
}

fn option_safe(what: &'static str, value: &str) -> Result<(), SmbError> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c == ',' || c == ' ' || c.is_control())
    {
        return Err(SmbError::Option {
            what,
            value: value.into(),
        });
    }
    Ok(())
}

impl CifsMount {
    /// The `-o` argument: the user's ids forced on every file (the server's own ids mean
    /// nothing here), private file modes, no setuid or device files, `soft` so a dead
    /// server returns errors instead of blocking forever, SMB3 or later.
    pub fn options(&self) -> Result<String, SmbError> {
        let cred = self
            .credentials_file
            .to_str()
            .ok_or_else(|| SmbError::Option {
                what: "credentials file",
                value: self.credentials_file.to_string_lossy().into(),
            })?;
        option_safe("credentials file", cred)?;
        Ok(format!(
            "credentials={cred},uid={},gid={},forceuid,forcegid,file_mode=0600,dir_mode=0700,\
             nosuid,nodev,soft,vers=3.1.1,echo_interval=10",
            self.uid, self.gid
        ))
    }

    /// The whole argument vector for mount.cifs.
    pub fn args(&self) -> Result<Vec<String>, SmbError> {
        option_safe("share", &self.unc)?;
        let target = self.target.to_str().ok_or_else(|| SmbError::Option {
            what: "mount point",
            value: self.target.to_string_lossy().into(),
        })?;
        Ok(vec![
            self.unc.clone(),
            target.to_string(),
            "-o".into(),
            self.options()?,
        ])
    }
}

/// Refuses a credentials file anyone but root could read or change: a regular file (not
/// a symlink), owned by root, mode 0600 or stricter.
pub fn check_credentials(path: &Path) -> Result<(), SmbError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| SmbError::Credentials {
        path: path.into(),
        source,
    })?;
    let mode = md.mode() & 0o7777;
    if !md.file_type().is_file() || md.uid() != 0 || mode & 0o077 != 0 {
        return Err(SmbError::CredentialsMode {
            path: path.into(),
            uid: md.uid(),
            mode,
        });
    }
    Ok(())
}

/// `mount.cifs` (cifs-utils), behind one small type; tests point `program` at a fake.
#[derive(Debug, Clone)]
pub struct MountCifs {
    pub program: PathBuf,
}

impl Default for MountCifs {
    fn default() -> Self {
        MountCifs {
            program: PathBuf::from("/usr/sbin/mount.cifs"),
        }
    }
}

impl MountCifs {
    /// Mounts `m` (creating its mount point, 0700 root, under a 0711 parent). The caller
    /// checks first whether it is mounted already.
    pub fn mount(&self, m: &CifsMount) -> Result<(), SmbError> {
        check_credentials(&m.credentials_file)?;
        let args = m.args()?;
        let prepare = |path: &Path, mode: u32| {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(mode).create(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(source) => Err(SmbError::Prepare {
                    path: path.into(),
                    source,
                }),
            }
        };
        if let Some(parent) = m.target.parent() {
            prepare(parent, 0o711)?;
        }
        prepare(&m.target, 0o700)?;
        let out = Command::new(&self.program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SmbError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(SmbError::Mount {
            unc: m.unc.clone(),
            status: out.status.to_string(),
            output: format!(
                "{} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .trim()
            .chars()
            .take(512)
            .collect(),
        })
    }
}

/// Lazily unmounts an SMB home (`MNT_DETACH`: a dead server cannot make this wait);
/// nothing mounted there is fine.
pub fn unmount(target: &Path) -> Result<(), SmbError> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(SmbError::Unmount {
            path: target.into(),
            source,
        }),
    }
}

/// What a mount health probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Nothing is mounted there.
    NotMounted,
    /// `statfs` failed (a stale handle, the server refused, ...).
    Failed(String),
    /// No answer within the time allowed (a dead server with a hard mount).
    Unresponsive,
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::NotMounted => "not_mounted",
            Health::Failed(_) => "failed",
            Health::Unresponsive => "unresponsive",
        }
    }
}

/// Probes a mounted home with `statfs` on a throwaway thread and waits at most `limit`.
/// A probe stuck in the kernel on a dead server stays stuck on its own thread; the caller
/// gets `Unresponsive` in bounded time.
pub fn probe(target: &Path, limit: Duration) -> Health {
    let (tx, rx) = mpsc::channel();
    let path = target.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("home-probe".into())
        .spawn(move || {
            let r = match crate::runtime::quota::is_mountpoint(&path) {
                Ok(false) => Health::NotMounted,
                Ok(true) => match nix::sys::statfs::statfs(&path) {
                    Ok(_) => Health::Ok,
                    Err(e) => Health::Failed(e.desc().to_string()),
                },
                Err(e) => Health::Failed(e.to_string()),
            };
            let _ = tx.send(r);
        });
    if spawned.is_err() {
        return Health::Failed("cannot start a probe thread".into());
    }
    rx.recv_timeout(limit).unwrap_or(Health::Unresponsive)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mount_in(dir: &Path) -> CifsMount {
        let cred = dir.join("smb.cred");
        std::fs::write(&cred, "username=svc\npassword=s3cret-pw\n").unwrap();
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
        CifsMount {
            unc: "//nas.lan/homes/alice".into(),
            target: dir.join("smb/alice"),
            uid: 1003,
            gid: 1004,
            credentials_file: cred,
        }
    }

    /// A stand-in for mount.cifs that records its arguments and environment.
    fn fake_helper(dir: &Path, exit: i32) -> MountCifs {
        let p = dir.join("fake-mount.cifs");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > {0}/args\nenv > {0}/env\necho 'mount error(13): Permission denied' >&2\nexit {exit}\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        MountCifs { program: p }
    }

    #[test]
    fn options_force_the_users_ids_and_forbid_setuid_and_devices() {
        let dir = tempfile::tempdir().unwrap();
        let m = mount_in(dir.path());
        let o = m.options().unwrap();
        for part in [
            "uid=1003",
            "gid=1004",
            "forceuid",
            "forcegid",
            "nosuid",
            "nodev",
            "soft",
            "file_mode=0600",
            "dir_mode=0700",
        ] {
            assert!(o.split(',').any(|p| p == part), "{part} missing in {o}");
        }
        assert!(o.starts_with(&format!("credentials={}", m.credentials_file.display())));
        assert!(!o.contains("password"), "{o}");
    }

    #[test]
    fn values_that_would_inject_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = mount_in(dir.path());
        m.credentials_file = PathBuf::from("/etc/x,password=oops");
        assert!(matches!(m.options(), Err(SmbError::Option { .. })));
        let mut m = mount_in(dir.path());
        m.unc = "//nas/share,uid=0".into();
        assert!(matches!(m.args(), Err(SmbError::Option { .. })));
        m.unc = "//nas/share\nx".into();
        assert!(matches!(m.args(), Err(SmbError::Option { .. })));
    }

    #[test]
    fn a_credentials_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = mount_in(dir.path());
        check_credentials(&m.credentials_file).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&m.credentials_file, std::fs::Permissions::from_mode(mode))
                .unwrap();
            let e = check_credentials(&m.credentials_file).unwrap_err();
            assert!(matches!(e, SmbError::CredentialsMode { .. }), "{mode:o}");
            assert!(!e.to_string().contains("s3cret"));
        }
        std::fs::set_permissions(&m.credentials_file, std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::chown(&m.credentials_file, Some(1003), None).unwrap();
        assert!(
            check_credentials(&m.credentials_file).is_err(),
            "not root's"
        );
        let link = dir.path().join("link.cred");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(check_credentials(&link).is_err(), "a symlink");
        assert!(matches!(
            check_credentials(&dir.path().join("missing")),
            Err(SmbError::Credentials { .. })
        ));
    }

    #[test]
    fn the_helper_gets_the_credentials_file_never_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let m = mount_in(dir.path());
        let helper = fake_helper(dir.path(), 0);
        // Even if the daemon's environment held one, the helper does not see it.
        helper.mount(&m).unwrap();
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            [
                "//nas.lan/homes/alice",
                m.target.to_str().unwrap(),
                "-o",
                &m.options().unwrap()
            ]
        );
        assert!(!args.contains("s3cret") && !env.contains("s3cret"));
        assert!(!env
            .lines()
            .any(|l| l.starts_with("PASSWD=") || l.starts_with("USER=")));
        let md = std::fs::metadata(&m.target).unwrap();
        assert_eq!(md.mode() & 0o777, 0o700, "mount point is private");
    }

    #[test]
    fn a_failing_helper_is_reported_with_its_output_and_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let m = mount_in(dir.path());
        let e = fake_helper(dir.path(), 32).mount(&m).unwrap_err();
        let text = format!("{e}");
        assert!(text.contains("Permission denied"), "{text}");
        assert!(text.contains("//nas.lan/homes/alice"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let missing = MountCifs {
            program: dir.path().join("no-such-helper"),
        };
        assert!(matches!(missing.mount(&m), Err(SmbError::Spawn { .. })));
    }

    #[test]
    fn a_bad_credentials_file_stops_before_the_helper_runs() {
        let dir = tempfile::tempdir().unwrap();
        let m = mount_in(dir.path());
        std::fs::set_permissions(&m.credentials_file, std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let e = fake_helper(dir.path(), 0).mount(&m).unwrap_err();
        assert!(matches!(e, SmbError::CredentialsMode { .. }));
        assert!(!dir.path().join("args").exists(), "the helper never ran");
    }

    #[test]
    fn probes_answer_for_unmounted_and_mounted_paths() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            probe(dir.path(), Duration::from_secs(30)),
            Health::NotMounted
        );
        assert!(matches!(
            probe(&dir.path().join("gone"), Duration::from_secs(30)),
            Health::Failed(_)
        ));
        // /proc is a mount point everywhere.
        assert_eq!(
            probe(Path::new("/proc"), Duration::from_secs(30)),
            Health::Ok
        );
        unmount(dir.path()).unwrap();
    }

    #[test]
    fn mounting_a_real_share_needs_the_kernels_cifs() {
        let have = std::fs::read_to_string("/proc/filesystems")
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim_end().ends_with("cifs"));
        let loadable = !have
            && Command::new("modprobe")
                .args(["-q", "cifs"])
                .status()
                .is_ok_and(|s| s.success());
        if !have && !loadable {
            crate::testing::skip(
                "mounting_a_real_share_needs_the_kernels_cifs: cifs",
                "kernel lacks CIFS",
            );
            return;
        }
        // With CIFS in the kernel (the VM tier), a mount of an unreachable server fails
        // cleanly and in bounded time, and leaves nothing mounted.
        let dir = tempfile::tempdir().unwrap();
        let mut m = mount_in(dir.path());
        m.unc = "//127.0.0.1/nothing-here".into();
        let e = MountCifs::default().mount(&m).unwrap_err();
        assert!(matches!(e, SmbError::Mount { .. }), "{e}");
        assert_eq!(
            probe(&m.target, Duration::from_secs(30)),
            Health::NotMounted
        );
    }
}
