//! Local home quotas: each home is an ext4 filesystem image of the profile's `limits.disk`
//! size, loop-mounted (`nosuid,nodev`) on the home directory by the daemon.
//!
//! Why images rather than project quotas: project quotas need the state directory's
//! filesystem to be ext4/xfs mounted with `prjquota` (a host change the daemon cannot make
//! or check portably), while a loop image works on any host filesystem, is a hard limit
//! the kernel enforces for every writer (the box's processes, the file API, root in the
//! box), and its usage is plain `statfs`. The cost: the size is fixed when the image is
//! made (growing it is `resize2fs`, not automatic), and an image is sparse, so the host's
//! disk may still be overcommitted by the sum of all quotas.
//!
//! Order (`ensure`): the mount is serialised process-wide; an existing mount is kept; a
//! non-empty plain directory is refused (it would be hidden under the mount); the image is
//! made once (`mkfs.ext4` on a temporary name, renamed into place: a crash never leaves a
//! half-made image under the real name); a free loop device is configured with
//! `LO_FLAGS_AUTOCLEAR` (`LOOP_CONFIGURE`, retried if another process took the device
//! first), mounted, and the descriptor closed, so the device goes away by itself when the
//! filesystem is unmounted (also when the mount namespace holding it dies).

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::mount::MsFlags;

/// Serialises home mounts within the daemon: two requests must not both mount a home.
static MOUNT_LOCK: Mutex<()> = Mutex::new(());

const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "home {path} already holds files outside a quota image; move them into the image first"
    )]
    NotEmpty { path: PathBuf },
    #[error("mkfs.ext4 {image} failed: {output}")]
    Mkfs { image: PathBuf, output: String },
    #[error("cannot run {tool}")]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot attach {image} to a loop device")]
    Loop {
        image: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot mount {image} on {target}")]
    Mount {
        image: PathBuf,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// A home with a size quota.
#[derive(Debug, Clone)]
pub struct QuotaHome {
    /// The ext4 image (root-owned 0600, outside every home).
    pub image: PathBuf,
    /// The home directory the image is mounted on.
    pub mountpoint: PathBuf,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
}

/// `mkfs.ext4`, behind one small type (tests may point it elsewhere).
#[derive(Debug, Clone)]
pub struct Mkfs {
    pub program: PathBuf,
}

impl Default for Mkfs {
    fn default() -> Self {
        Mkfs {
            program: PathBuf::from("/usr/sbin/mkfs.ext4"),
        }
    }
}

impl Mkfs {
    /// The arguments that make an image for `uid:gid`: no blocks reserved for root (the
    /// user gets the whole quota), the root directory owned by the user.
    pub fn args(image: &Path, uid: u32, gid: u32) -> Vec<OsString> {
        vec![
            "-q".into(),
            "-F".into(),
            "-m".into(),
            "0".into(),
            "-E".into(),
            format!("root_owner={uid}:{gid}").into(),
            image.into(),
        ]
    }

    fn run(&self, image: &Path, uid: u32, gid: u32) -> Result<(), QuotaError> {
        let out = Command::new(&self.program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(Self::args(image, uid, gid))
            .output()
            .map_err(|source| QuotaError::Spawn {
                tool: self.program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(QuotaError::Mkfs {
                image: image.into(),
                output: format!(
                    "{}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::symlink_metadata(path)?;
    let parent = std::fs::metadata(path.join(".."))?;
    Ok(me.dev() != parent.dev() || me.ino() == parent.ino())
}

fn prepare(path: &Path) -> impl Fn(std::io::Error) -> QuotaError + '_ {
    move |source| QuotaError::Prepare {
        path: path.into(),
        source,
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), QuotaError> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(prepare(path)(e)),
    }
}

impl QuotaHome {
    /// Makes sure the home is its quota image, mounted. Idempotent.
    pub fn ensure(&self, mkfs: &Mkfs) -> Result<(), QuotaError> {
        let _guard = MOUNT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(parent) = self.mountpoint.parent() {
            mkdir(parent, 0o711)?;
        }
        mkdir(&self.mountpoint, 0o700)?;
        if is_mountpoint(&self.mountpoint).map_err(prepare(&self.mountpoint))? {
            return Ok(());
        }
        let mut entries = std::fs::read_dir(&self.mountpoint).map_err(prepare(&self.mountpoint))?;
        if entries.next().is_some() {
            return Err(QuotaError::NotEmpty {
                path: self.mountpoint.clone(),
            });
        }
        let fresh = !self.image.exists();
        if fresh {
            self.make_image(mkfs)?;
        }
        self.mount()?;
        if fresh {
            // A user's home starts empty and private.
            let _ = std::fs::remove_dir(self.mountpoint.join("lost+found"));
            std::fs::set_permissions(
                &self.mountpoint,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .map_err(prepare(&self.mountpoint))?;
        }
        Ok(())
    }

    fn make_image(&self, mkfs: &Mkfs) -> Result<(), QuotaError> {
        if let Some(dir) = self.image.parent() {
            mkdir(dir, 0o700)?;
        }
        let mut tmp = self.image.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(prepare(&tmp))?;
        f.set_len(self.size).map_err(prepare(&tmp))?;
        drop(f);
        if let Err(e) = mkfs.run(&tmp, self.uid, self.gid) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &self.image).map_err(prepare(&self.image))
    }

    fn mount(&self) -> Result<(), QuotaError> {
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.image)
            .map_err(prepare(&self.image))?;
        let loop_err = |source| QuotaError::Loop {
            image: self.image.clone(),
            source,
        };
        let ctl = File::open("/dev/loop-control")
            .map_err(|e| loop_err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let mut last = nix::Error::EBUSY;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            let n = nix::errno::Errno::result(n).map_err(loop_err)?;
            let dev = PathBuf::from(format!("/dev/loop{n}"));
            let lo = match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&dev)
            {
                Ok(f) => f,
                Err(e) => {
                    last = nix::Error::from_raw(e.raw_os_error().unwrap_or(0));
                    continue;
                }
            };
            let mut cfg = LoopConfig {
                fd: image.as_raw_fd() as u32,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: 0,
                    lo_sizelimit: 0,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: LO_FLAGS_AUTOCLEAR,
                    lo_file_name: [0; 64],
                    lo_crypt_name: [0; 64],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            let name = self.image.as_os_str().as_encoded_bytes();
            let k = name.len().min(63);
            cfg.info.lo_file_name[..k].copy_from_slice(&name[..k]);
            // SAFETY: `cfg` is a fully initialised `struct loop_config` that outlives the
            // call; the kernel only reads it. `image` is an open descriptor.
            let r =
                unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_CONFIGURE, &mut cfg as *mut LoopConfig) };
            match nix::errno::Errno::result(r) {
                Ok(_) => {
                    let mounted = nix::mount::mount(
                        Some(&dev),
                        &self.mountpoint,
                        Some("ext4"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
                        None::<&str>,
                    );
                    // Closing `lo` now: with AUTOCLEAR the device detaches on unmount, or
                    // right away if the mount failed.
                    drop(lo);
                    return mounted.map_err(|source| QuotaError::Mount {
                        image: self.image.clone(),
                        target: self.mountpoint.clone(),
                        source,
                    });
                }
                // Someone else configured this device between GET_FREE and now.
                Err(nix::Error::EBUSY) => last = nix::Error::EBUSY,
                Err(e) => return Err(loop_err(e)),
            }
        }
        Err(loop_err(last))
    }
}

/// Unmounts a quota home (lazily: a box or a file operation still using it keeps it
/// until done). The loop device detaches by itself.
pub fn unmount(mountpoint: &Path) -> nix::Result<()> {
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkfs_gets_no_reserved_blocks_and_a_user_owned_root() {
        let args = Mkfs::args(Path::new("/s/homes/.images/alice.ext4"), 1003, 1004);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            args,
            [
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "root_owner=1003:1004",
                "/s/homes/.images/alice.ext4"
            ]
        );
    }

    #[test]
    fn loop_structures_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn a_failing_mkfs_leaves_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let q = QuotaHome {
            image: dir.path().join("images/a.ext4"),
            mountpoint: dir.path().join("homes/a"),
            size: 64 << 20,
            uid: 1000,
            gid: 1000,
        };
        let err = q
            .ensure(&Mkfs {
                program: PathBuf::from("/bin/false"),
            })
            .unwrap_err();
        assert!(matches!(err, QuotaError::Mkfs { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("images"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_plain_home_with_files_is_not_hidden_under_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("homes/a");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("thesis.tex"), "years of work").unwrap();
        let q = QuotaHome {
            image: dir.path().join("images/a.ext4"),
            mountpoint: home,
            size: 64 << 20,
            uid: 1000,
            gid: 1000,
        };
        assert!(matches!(
            q.ensure(&Mkfs::default()),
            Err(QuotaError::NotEmpty { .. })
        ));
        assert!(!dir.path().join("images/a.ext4").exists());
    }
}
