//! Local home quotas: each home is an ext4 filesystem image of the profile's `limits.disk`
//! size, loop-mounted (`nosuid,nodev`) on the home directory by the daemon.
//!
//! Why images rather than project quotas: project quotas need the state directory's
//! filesystem to be ext4/xfs mounted with `prjquota` (a host change the daemon cannot make
//! or check portably), while a loop image works on any host filesystem, is a hard limit
//! the kernel enforces for every writer (the box's processes, the file API, root in the
//! box), and its usage is plain `statfs`. The cost: an image is sparse, so the host's disk
//! may still be overcommitted by the sum of all quotas.
//!
//! Order (`ensure`): mounts of one home are serialised; an existing mount is kept (and
//! grown online if the quota went up, see below); a non-empty plain directory is refused
//! (it would be hidden under the mount); the image is made once (`mkfs.ext4` on a
//! temporary name, renamed into place: a crash never leaves a half-made image under the
//! real name), or an existing image whose size differs from the quota is resized offline;
//! a free loop device is configured with `LO_FLAGS_AUTOCLEAR` (`LOOP_CONFIGURE`, retried if
//! another process took the device first), mounted, and the descriptor closed, so the
//! device goes away by itself when the filesystem is unmounted (also when the mount
//! namespace holding it dies).
//!
//! Resizing (the profile's `limits.disk` changed, or the user moved to another profile).
//! The filesystem's size is read from its superblock (through the loop device while
//! mounted, where the kernel's copy is current). Never losing data is the rule:
//! - mounted and growing: online, as resize2fs(8) does it: the image file is extended
//!   (sparse), the loop device told with `LOOP_SET_CAPACITY`, then `resize2fs` grows the
//!   mounted ext4 (`EXT4_IOC_RESIZE_FS`, journaled by the kernel; needs
//!   `CAP_SYS_RESOURCE`). A running box keeps working. If that fails the home keeps its
//!   size and the growth is done offline at the next mount.
//! - mounted and shrinking: ext4 cannot shrink online; the home keeps its size until it
//!   is next mounted (reported once, visible in the box status).
//! - not mounted (either way): offline, on a copy: `resize2fs -P` first says whether the
//!   data fits (it is refused if not), the image is copied (`FICLONE` where the host
//!   filesystem can, else a sparse copy of its data extents) to `<image>.resize`,
//!   checked (`e2fsck -f -p`), resized (`resize2fs`), truncated, synced and renamed over
//!   the image. Every failure before the rename leaves the original untouched (only the
//!   copy is removed), a crash leaves at worst a stale copy that the next resize deletes.
//!   The cost is one copy of the image's allocated blocks (time and temporary host disk),
//!   accepted because resizes are rare admin decisions; an image that some loop device
//!   still backs (mounted in another namespace) is left alone.
//!
//! Sizes compare in filesystem blocks: mke2fs and resize2fs drop a last block group too
//! small for its own metadata, so a filesystem may be a little smaller than its quota;
//! growth is attempted only when the gap could hold such a group.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use nix::mount::MsFlags;

/// One lock per home: two requests must not both mount (or resize) a home, while a long
/// offline resize of one home holds up no other.
static HOME_LOCKS: Mutex<BTreeMap<PathBuf, Arc<Mutex<()>>>> = Mutex::new(BTreeMap::new());

/// Mounted homes whose size was already dealt with: mountpoint -> (the mount's device, the
/// quota in bytes). A file operation on such a home costs no superblock read, and a
/// difference that cannot be resolved now (a shrink, a failed growth) is reported once per
/// mount and quota, not on every call.
static SETTLED: Mutex<BTreeMap<PathBuf, (u64, u64)>> = Mutex::new(BTreeMap::new());

const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_SET_CAPACITY: libc::Ioctl = 0x4C07;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `_IOW(0x94, 9, int)` (linux/fs.h): share the source's extents (btrfs, xfs).
const FICLONE: libc::Ioctl = 0x4004_9409;

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

impl LoopInfo64 {
    fn zeroed() -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
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
    #[error("cannot read the ext4 superblock of {path}")]
    Superblock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{mountpoint} is mounted, but not from its image {image}")]
    ForeignMount { mountpoint: PathBuf, image: PathBuf },
    #[error("cannot give {device} the new size of its image")]
    Capacity {
        device: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{tool} {path} failed: {output}")]
    Tool {
        tool: &'static str,
        path: PathBuf,
        output: String,
    },
    #[error(
        "the data in {image} needs at least {minimum} bytes, more than the quota of {wanted}: \
         the image keeps its size"
    )]
    ShrinkTooSmall {
        image: PathBuf,
        wanted: u64,
        minimum: u64,
    },
}

/// A home with a size quota.
#[derive(Debug, Clone)]
pub struct QuotaHome {
    /// The ext4 image (root-owned 0600, outside every home).
    pub image: PathBuf,
    /// The home directory the image is mounted on.
    pub mountpoint: PathBuf,
    /// The quota in bytes (the profile's `limits.disk`).
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
}

/// What [`QuotaHome::ensure`] did about the filesystem's size.
#[derive(Debug)]
pub enum Resize {
    /// Nothing: the image is new or has the quota's size, or the difference was reported
    /// before (for this mount and this quota).
    None,
    /// Grown or shrunk to the quota (sizes of the filesystem in bytes).
    Done { from: u64, to: u64 },
    /// Not now: a mounted filesystem shrinks only offline, or some loop device still backs
    /// the image. The home keeps `size` until it is next mounted.
    Pending { size: u64, wanted: u64 },
    /// Failed or refused (`error`); the image is as it was and the home stays usable.
    Failed { wanted: u64, error: QuotaError },
}

/// The e2fsprogs tools, behind one small type (tests may point them elsewhere).
#[derive(Debug, Clone)]
pub struct Tools {
    pub mkfs: Mkfs,
    pub e2fsck: PathBuf,
    pub resize2fs: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            mkfs: Mkfs::default(),
            e2fsck: PathBuf::from("/usr/sbin/e2fsck"),
            resize2fs: PathBuf::from("/usr/sbin/resize2fs"),
        }
    }
}

/// Runs a tool with an empty environment; its status and output.
fn run(program: &Path, args: &[&OsStr]) -> Result<(std::process::ExitStatus, String), QuotaError> {
    let out = Command::new(program)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(args)
        .output()
        .map_err(|source| QuotaError::Spawn {
            tool: program.into(),
            source,
        })?;
    let text = format!(
        "{}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok((out.status, text))
}

impl Tools {
    /// `e2fsck -f -p`: a full check that fixes only what is safe without a human
    /// (exit 0: clean, 1: fixed; anything else refuses).
    fn check(&self, path: &Path) -> Result<(), QuotaError> {
        let (st, text) = run(&self.e2fsck, &["-f".as_ref(), "-p".as_ref(), path.as_ref()])?;
        match st.code() {
            Some(0 | 1) => Ok(()),
            _ => Err(QuotaError::Tool {
                tool: "e2fsck",
                path: path.into(),
                output: text,
            }),
        }
    }

    /// `resize2fs -P`: the smallest size in blocks the filesystem's data fits in (an
    /// estimate that errs on the large side). Reads only.
    fn minimum_blocks(&self, path: &Path) -> Result<u64, QuotaError> {
        let (st, text) = run(&self.resize2fs, &["-P".as_ref(), path.as_ref()])?;
        let n = text
            .lines()
            .find_map(|l| l.split_once("Estimated minimum size of the filesystem:"))
            .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok());
        match n {
            Some(n) if st.success() => Ok(n),
            _ => Err(QuotaError::Tool {
                tool: "resize2fs -P",
                path: path.into(),
                output: text,
            }),
        }
    }

    /// `resize2fs <path> <blocks>`: offline on an image, online on a mounted device.
    fn resize(&self, path: &Path, blocks: u64) -> Result<(), QuotaError> {
        let blocks = blocks.to_string();
        let (st, text) = run(&self.resize2fs, &[path.as_ref(), blocks.as_ref()])?;
        if st.success() {
            Ok(())
        } else {
            Err(QuotaError::Tool {
                tool: "resize2fs",
                path: path.into(),
                output: text,
            })
        }
    }
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
        let args = Self::args(image, uid, gid);
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (st, output) = run(&self.program, &args)?;
        if st.success() {
            Ok(())
        } else {
            Err(QuotaError::Mkfs {
                image: image.into(),
                output,
            })
        }
    }
}

/// The size of an ext4 filesystem, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Size {
    pub blocks: u64,
    pub block_size: u64,
    /// Metadata blocks of a block group with a superblock backup, plus the 50 blocks
    /// mke2fs and resize2fs want beyond them: a last group smaller than this is dropped.
    group_overhead: u64,
    blocks_per_group: u64,
    first_data_block: u64,
    desc_size: u64,
}

/// Which way a filesystem has to go to match its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    Grow(u64),
    Shrink(u64),
}

impl Ext4Size {
    /// Parses the 1024-byte superblock (at byte 1024 of the device).
    fn parse(sb: &[u8; 1024]) -> Option<Ext4Size> {
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([sb[o], sb[o + 1]]));
        let u32_at = |o: usize| u64::from(u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()));
        if u16_at(0x38) != 0xEF53 {
            return None;
        }
        let log = u32_at(0x18);
        if log > 6 {
            return None;
        }
        let block_size = 1024u64 << log;
        let is_64bit = u32_at(0x60) & 0x80 != 0;
        let mut blocks = u32_at(0x04);
        if is_64bit {
            blocks |= u32_at(0x150) << 32;
        }
        let blocks_per_group = u32_at(0x20);
        let inode_size = match u16_at(0x58) {
            0 => 128,
            n => n,
        };
        let desc_size = if is_64bit { u16_at(0xFE).max(32) } else { 32 };
        if blocks_per_group == 0 || blocks == 0 {
            return None;
        }
        let inode_blocks = (u32_at(0x28) * inode_size).div_ceil(block_size);
        Some(Ext4Size {
            blocks,
            block_size,
            group_overhead: 3 + inode_blocks + u16_at(0xCE) + 50,
            blocks_per_group,
            first_data_block: u32_at(0x14),
            desc_size,
        })
    }

    fn read(f: &File, path: &Path) -> Result<Ext4Size, QuotaError> {
        let mut sb = [0u8; 1024];
        f.read_exact_at(&mut sb, 1024)
            .map_err(|source| QuotaError::Superblock {
                path: path.into(),
                source,
            })?;
        Ext4Size::parse(&sb).ok_or_else(|| QuotaError::Superblock {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not ext4"),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }

    fn change(&self, wanted: u64) -> Change {
        let want = wanted / self.block_size;
        if want < self.blocks {
            return Change::Shrink(want);
        }
        // A gap smaller than one group's metadata (descriptor blocks included) may be
        // exactly what mke2fs/resize2fs dropped: growing into it would do nothing.
        let groups = (want - self.first_data_block).div_ceil(self.blocks_per_group);
        let desc_blocks = (groups * self.desc_size).div_ceil(self.block_size);
        if want - self.blocks >= self.group_overhead + desc_blocks {
            Change::Grow(want)
        } else {
            Change::None
        }
    }

    /// Whether the filesystem is smaller (`Less`: it should grow) or larger (`Greater`:
    /// it should shrink) than a quota of `wanted` bytes; `Equal` when it matches.
    pub fn compared_to(&self, wanted: u64) -> std::cmp::Ordering {
        match self.change(wanted) {
            Change::None => std::cmp::Ordering::Equal,
            Change::Grow(_) => std::cmp::Ordering::Less,
            Change::Shrink(_) => std::cmp::Ordering::Greater,
        }
    }
}

/// The loop device a home is mounted from, checked to be backed by the home's image.
struct LoopDev {
    path: PathBuf,
    file: File,
}

impl LoopDev {
    /// The loop device of the filesystem on `mountpoint` (device number `dev`), if its
    /// backing file is `image`.
    fn of_mount(mountpoint: &Path, dev: u64, image: &Path) -> Result<LoopDev, QuotaError> {
        let foreign = || QuotaError::ForeignMount {
            mountpoint: mountpoint.into(),
            image: image.into(),
        };
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        if !sys.join("loop").exists() {
            return Err(foreign());
        }
        let uevent = std::fs::read_to_string(sys.join("uevent")).map_err(prepare(&sys))?;
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .filter(|n| !n.is_empty() && !n.contains('/') && !n.contains(".."))
            .ok_or_else(foreign)?;
        let path = Path::new("/dev").join(name);
        // Read-only: enough for the superblock, and for LOOP_SET_CAPACITY with
        // CAP_SYS_ADMIN (a mounted block device may refuse writers).
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(prepare(&path))?;
        let md = file.metadata().map_err(prepare(&path))?;
        if md.rdev() != dev {
            return Err(foreign());
        }
        let mut info = LoopInfo64::zeroed();
        // SAFETY: LOOP_GET_STATUS64 fills a `struct loop_info64`, which `info` is and
        // outlives the call.
        let r = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                LOOP_GET_STATUS64,
                &mut info as *mut LoopInfo64,
            )
        };
        if r < 0 {
            return Err(foreign());
        }
        let img = std::fs::metadata(image).map_err(prepare(image))?;
        // The kernel encodes the backing file's device as new_encode_dev.
        let (lo_major, lo_minor) = (
            (info.lo_device & 0xfff00) >> 8,
            (info.lo_device & 0xff) | ((info.lo_device >> 12) & 0xfff00),
        );
        if info.lo_inode != img.ino()
            || lo_major != u64::from(libc::major(img.dev()))
            || lo_minor != u64::from(libc::minor(img.dev()))
        {
            return Err(foreign());
        }
        Ok(LoopDev { path, file })
    }

    fn size(&self) -> Result<Ext4Size, QuotaError> {
        Ext4Size::read(&self.file, &self.path)
    }
}

/// Whether some loop device is backed by `image` (attached, mounted here or in another
/// mount namespace, or still detaching).
pub fn loop_backs(image: &Path) -> bool {
    let Ok(me) = std::fs::metadata(image) else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("loop/backing_file"))
            .ok()
            .and_then(|p| std::fs::metadata(p.trim_end_matches('\n')).ok())
            .is_some_and(|m| m.dev() == me.dev() && m.ino() == me.ino())
    })
}

/// The size of the filesystem mounted on `mountpoint` from `image` (what a quota home
/// really has, whatever its profile now says).
pub fn mounted_size(mountpoint: &Path, image: &Path) -> Result<Ext4Size, QuotaError> {
    let dev = std::fs::metadata(mountpoint)
        .map_err(prepare(mountpoint))?
        .dev();
    LoopDev::of_mount(mountpoint, dev, image)?.size()
}

/// Copies `src` (`len` bytes) into the empty `dst`: shared extents where the host
/// filesystem can (`FICLONE`), else only the data extents (`SEEK_DATA`/`SEEK_HOLE`,
/// `copy_file_range`), so a sparse image stays sparse.
fn copy_image(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(());
    }
    dst.set_len(len)?;
    let (fd_in, fd_out) = (src.as_raw_fd(), dst.as_raw_fd());
    let end = len as libc::off_t;
    let mut pos: libc::off_t = 0;
    while pos < end {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd_in, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd_in, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let chunk = ((hole - off_in) as u64).min(1 << 30) as usize;
            // SAFETY: both descriptors are open; the offsets are ours and outlive the call.
            let n = unsafe {
                libc::copy_file_range(fd_in, &mut off_in, fd_out, &mut off_out, chunk, 0)
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        pos = hole;
    }
    Ok(())
}

/// Whether `path` is the root of a mount (its device differs from its parent's).
pub fn is_mountpoint(path: &Path) -> std::io::Result<bool> {
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

fn home_lock(mountpoint: &Path) -> Arc<Mutex<()>> {
    let mut locks = HOME_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(mountpoint.into()).or_default().clone()
}

fn settled() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, (u64, u64)>> {
    SETTLED.lock().unwrap_or_else(|p| p.into_inner())
}

impl QuotaHome {
    /// Makes sure the home is its quota image, mounted, and of the quota's size as far as
    /// that can be done now (see the module doc). Idempotent. A resize that fails or has
    /// to wait leaves the home usable and is reported in the returned [`Resize`], not as
    /// an error.
    pub fn ensure(&self, tools: &Tools) -> Result<Resize, QuotaError> {
        let lock = home_lock(&self.mountpoint);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(parent) = self.mountpoint.parent() {
            mkdir(parent, 0o711)?;
        }
        mkdir(&self.mountpoint, 0o700)?;
        if is_mountpoint(&self.mountpoint).map_err(prepare(&self.mountpoint))? {
            return Ok(self.resize_mounted(tools));
        }
        let mut entries = std::fs::read_dir(&self.mountpoint).map_err(prepare(&self.mountpoint))?;
        if entries.next().is_some() {
            return Err(QuotaError::NotEmpty {
                path: self.mountpoint.clone(),
            });
        }
        let fresh = !self.image.exists();
        let resize = if fresh {
            self.make_image(&tools.mkfs)?;
            Resize::None
        } else {
            self.resize_unmounted(tools)
        };
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
        // This mount's size was decided above (and reported if it could not be changed).
        if let Ok(md) = std::fs::metadata(&self.mountpoint) {
            settled().insert(self.mountpoint.clone(), (md.dev(), self.size));
        }
        Ok(resize)
    }

    /// An already mounted home: grown online if its quota went up; a shrink waits.
    fn resize_mounted(&self, tools: &Tools) -> Resize {
        let Ok(md) = std::fs::metadata(&self.mountpoint) else {
            return Resize::None;
        };
        let key = (md.dev(), self.size);
        if settled().get(&self.mountpoint) == Some(&key) {
            return Resize::None;
        }
        let r = (|| {
            let lo = LoopDev::of_mount(&self.mountpoint, md.dev(), &self.image)?;
            let fs = lo.size()?;
            Ok(match fs.change(self.size) {
                Change::None => Resize::None,
                Change::Shrink(_) => Resize::Pending {
                    size: fs.bytes(),
                    wanted: self.size,
                },
                Change::Grow(blocks) => match self.grow_online(tools, &lo, fs, blocks) {
                    Ok(()) => Resize::Done {
                        from: fs.bytes(),
                        to: blocks * fs.block_size,
                    },
                    Err(error) => Resize::Failed {
                        wanted: self.size,
                        error,
                    },
                },
            })
        })();
        settled().insert(self.mountpoint.clone(), key);
        r.unwrap_or_else(|error| Resize::Failed {
            wanted: self.size,
            error,
        })
    }

    /// Extends the image (sparse), tells the loop device, and has resize2fs grow the
    /// mounted filesystem (the kernel's online resize).
    fn grow_online(
        &self,
        tools: &Tools,
        lo: &LoopDev,
        fs: Ext4Size,
        blocks: u64,
    ) -> Result<(), QuotaError> {
        let bytes = blocks * fs.block_size;
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.image)
            .map_err(prepare(&self.image))?;
        if f.metadata().map_err(prepare(&self.image))?.len() < bytes {
            f.set_len(bytes).map_err(prepare(&self.image))?;
        }
        drop(f);
        // SAFETY: LOOP_SET_CAPACITY takes no argument; `lo.file` is an open loop device.
        let r = unsafe { libc::ioctl(lo.file.as_raw_fd(), LOOP_SET_CAPACITY, 0) };
        nix::errno::Errno::result(r).map_err(|source| QuotaError::Capacity {
            device: lo.path.clone(),
            source,
        })?;
        tools.resize(&lo.path, blocks)
    }

    /// An image that is not mounted here: resized offline if its size differs.
    fn resize_unmounted(&self, tools: &Tools) -> Resize {
        let fs = match File::open(&self.image)
            .map_err(prepare(&self.image))
            .and_then(|f| Ext4Size::read(&f, &self.image))
        {
            Ok(fs) => fs,
            Err(error) => {
                return Resize::Failed {
                    wanted: self.size,
                    error,
                }
            }
        };
        let blocks = match fs.change(self.size) {
            Change::None => return Resize::None,
            Change::Grow(b) | Change::Shrink(b) => b,
        };
        if loop_backs(&self.image) {
            return Resize::Pending {
                size: fs.bytes(),
                wanted: self.size,
            };
        }
        match self.resize_offline(tools, fs, blocks) {
            Ok(()) => Resize::Done {
                from: fs.bytes(),
                to: blocks * fs.block_size,
            },
            Err(error) => Resize::Failed {
                wanted: self.size,
                error,
            },
        }
    }

    /// Resizes a copy of the image and renames it over the image: the original is never
    /// written, so every failure leaves it as it was.
    fn resize_offline(&self, tools: &Tools, fs: Ext4Size, blocks: u64) -> Result<(), QuotaError> {
        if blocks < fs.blocks {
            let minimum = tools.minimum_blocks(&self.image)?;
            if blocks < minimum {
                return Err(QuotaError::ShrinkTooSmall {
                    image: self.image.clone(),
                    wanted: self.size,
                    minimum: minimum * fs.block_size,
                });
            }
        }
        let mut tmp = self.image.clone().into_os_string();
        tmp.push(".resize");
        let tmp = PathBuf::from(tmp);
        // A copy left by a crash: the image is still the authority.
        let _ = std::fs::remove_file(&tmp);
        let r = self.resize_copy(tools, &tmp, blocks * fs.block_size, blocks);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn resize_copy(
        &self,
        tools: &Tools,
        tmp: &Path,
        bytes: u64,
        blocks: u64,
    ) -> Result<(), QuotaError> {
        let src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&self.image)
            .map_err(prepare(&self.image))?;
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(tmp)
            .map_err(prepare(tmp))?;
        let len = src.metadata().map_err(prepare(&self.image))?.len();
        copy_image(&src, &dst, len).map_err(prepare(tmp))?;
        drop(src);
        if len < bytes {
            dst.set_len(bytes).map_err(prepare(tmp))?;
        }
        tools.check(tmp)?;
        tools.resize(tmp, blocks)?;
        dst.set_len(bytes).map_err(prepare(tmp))?;
        dst.sync_all().map_err(prepare(tmp))?;
        let got = Ext4Size::read(&dst, tmp)?;
        if got.blocks > blocks {
            return Err(QuotaError::Tool {
                tool: "resize2fs",
                path: tmp.into(),
                output: format!("left {} blocks, wanted {blocks}", got.blocks),
            });
        }
        drop(dst);
        std::fs::rename(tmp, &self.image).map_err(prepare(&self.image))?;
        if let Some(dir) = self.image.parent() {
            // The rename is done; this only makes it durable sooner.
            let _ = File::open(dir).and_then(|d| d.sync_all());
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
                    lo_flags: LO_FLAGS_AUTOCLEAR,
                    ..LoopInfo64::zeroed()
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
            .ensure(&Tools {
                mkfs: Mkfs {
                    program: PathBuf::from("/bin/false"),
                },
                ..Tools::default()
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
            q.ensure(&Tools::default()),
            Err(QuotaError::NotEmpty { .. })
        ));
        assert!(!dir.path().join("images/a.ext4").exists());
    }

    #[test]
    fn superblock_sizes_match_dumpe2fs_and_a_fresh_image_needs_no_resize() {
        let dir = tempfile::tempdir().unwrap();
        // Sizes whose last block group mke2fs keeps, and some whose small last group it
        // drops (the image is then a little smaller than its quota), 1k and 4k blocks.
        for size in [
            64 << 20,
            (64 << 20) + 300 * 1024,
            (100 << 20) + 3000,
            600 << 20,
        ] {
            let q = QuotaHome {
                image: dir.path().join(format!("{size}.ext4")),
                mountpoint: dir.path().join("unused"),
                size,
                uid: 1000,
                gid: 1000,
            };
            q.make_image(&Mkfs::default()).unwrap();
            let fs = Ext4Size::read(&File::open(&q.image).unwrap(), &q.image).unwrap();
            let out = Command::new("/usr/sbin/dumpe2fs")
                .arg("-h")
                .arg(&q.image)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {text}"))
            };
            assert_eq!(fs.blocks, field("Block count:"), "{size}");
            assert_eq!(fs.block_size, field("Block size:"), "{size}");
            assert_eq!(fs.change(size), Change::None, "{size}: {fs:?}");
            assert_eq!(fs.change(size * 2), Change::Grow(size * 2 / fs.block_size));
            assert_eq!(
                fs.change(size / 2),
                Change::Shrink(size / 2 / fs.block_size)
            );
        }
    }

    /// Root-only tests on real loop devices and ext4. Each runs on a thread of its own in
    /// a private mount namespace (`unshare(CLONE_NEWNS)` changes only that thread), so
    /// every mount it makes dies with the thread, also when it panics; the loop devices
    /// (autoclear) detach with their mounts, and the images are in a temporary directory
    /// unique to the test and run, removed once no loop device backs them.
    mod real {
        use super::*;
        use std::io::Write;

        const MIB: u64 = 1 << 20;

        fn in_scratch_mountns(f: impl FnOnce(&Path) + Send + 'static) {
            let dir = tempfile::Builder::new()
                .prefix("orchd-quota-")
                .tempdir()
                .unwrap();
            let root = dir.path().to_path_buf();
            let r = std::thread::spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare");
                nix::mount::mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .expect("make / private");
                f(&root)
            })
            .join();
            wait_detached(&dir.path().join("images/a.ext4"));
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }

        fn home(root: &Path, size: u64) -> QuotaHome {
            QuotaHome {
                image: root.join("images/a.ext4"),
                mountpoint: root.join("homes/a"),
                size,
                uid: 1000,
                gid: 1000,
            }
        }

        fn wait_detached(image: &Path) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while loop_backs(image) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the loop device of {image:?} never detached"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }

        fn unmount(q: &QuotaHome) {
            nix::mount::umount(&q.mountpoint).unwrap();
            wait_detached(&q.image);
        }

        /// `mib` MiB of a pattern that differs per MiB, synced.
        fn write(path: &Path, mib: u64) -> std::io::Result<()> {
            let mut f = File::create(path)?;
            for i in 0..mib {
                f.write_all(&pattern(i))?;
            }
            f.sync_all()
        }

        fn pattern(i: u64) -> Vec<u8> {
            (0..MIB).map(|j| ((i * 7 + j) % 251) as u8).collect()
        }

        fn assert_intact(path: &Path, mib: u64) {
            let data = std::fs::read(path).unwrap();
            assert_eq!(data.len() as u64, mib * MIB, "{path:?}");
            for (i, chunk) in data.chunks(MIB as usize).enumerate() {
                assert!(chunk == pattern(i as u64), "{path:?}: MiB {i} changed");
            }
        }

        /// The filesystem's size as df sees it.
        fn df_size(q: &QuotaHome) -> u64 {
            let st = nix::sys::statvfs::statvfs(&q.mountpoint).unwrap();
            st.blocks() * st.fragment_size()
        }

        fn digest(path: &Path) -> u64 {
            use std::hash::Hasher;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(&std::fs::read(path).unwrap());
            h.finish()
        }

        fn done(r: Resize) -> (u64, u64) {
            match r {
                Resize::Done { from, to } => (from, to),
                other => panic!("expected a resize, got {other:?}"),
            }
        }

        fn has_cap_sys_resource() -> bool {
            caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_SYS_RESOURCE,
            )
            .unwrap_or(false)
        }

        #[test]
        fn growing_a_mounted_home_keeps_its_data_and_takes_writes_past_the_old_limit() {
            if !has_cap_sys_resource() {
                // Online ext4 growth is EXT4_IOC_RESIZE_FS, which needs CAP_SYS_RESOURCE;
                // the next test covers a daemon without it on every machine.
                crate::testing::skip(
                    "growing_a_mounted_home_keeps_its_data_and_takes_writes_past_the_old_limit",
                    "quota: root lacks CAP_SYS_RESOURCE (online ext4 resize)",
                );
                return;
            }
            in_scratch_mountns(|root| {
                let tools = Tools::default();
                assert!(matches!(
                    home(root, 64 * MIB).ensure(&tools).unwrap(),
                    Resize::None
                ));
                let q = home(root, 128 * MIB);
                write(&q.mountpoint.join("before"), 40).unwrap();
                let old = df_size(&q);
                assert_eq!(done(q.ensure(&tools).unwrap()), (64 * MIB, 128 * MIB));
                assert!(is_mountpoint(&q.mountpoint).unwrap(), "still mounted");
                assert_intact(&q.mountpoint.join("before"), 40);
                let new = df_size(&q);
                assert!(
                    new > old + 50 * MIB,
                    "df shows the new size: {old} -> {new}"
                );
                assert_eq!(
                    mounted_size(&q.mountpoint, &q.image).unwrap().bytes(),
                    128 * MIB
                );
                write(&q.mountpoint.join("after"), 60).expect("room past the old 64M");
                assert_intact(&q.mountpoint.join("before"), 40);
                assert!(matches!(q.ensure(&tools).unwrap(), Resize::None));
                unmount(&q);
            });
        }

        #[test]
        fn a_mounted_home_that_cannot_grow_online_grows_when_next_mounted() {
            in_scratch_mountns(|root| {
                // As on a host whose daemon lacks CAP_SYS_RESOURCE: the bounding set of
                // this thread (and so of resize2fs) loses it.
                caps::drop(
                    None,
                    caps::CapSet::Bounding,
                    caps::Capability::CAP_SYS_RESOURCE,
                )
                .unwrap();
                let tools = Tools::default();
                home(root, 64 * MIB).ensure(&tools).unwrap();
                let q = home(root, 128 * MIB);
                write(&q.mountpoint.join("before"), 40).unwrap();
                let old = df_size(&q);
                match q.ensure(&tools).unwrap() {
                    Resize::Failed { wanted, error } => {
                        assert_eq!(wanted, 128 * MIB);
                        assert!(
                            matches!(
                                error,
                                QuotaError::Tool {
                                    tool: "resize2fs",
                                    ..
                                }
                            ),
                            "{error}"
                        );
                    }
                    other => panic!("expected a failed online growth, got {other:?}"),
                }
                assert!(
                    matches!(q.ensure(&tools).unwrap(), Resize::None),
                    "reported once"
                );
                assert_eq!(df_size(&q), old);
                assert_intact(&q.mountpoint.join("before"), 40);
                assert!(write(&q.mountpoint.join("more"), 40).is_err(), "still 64M");
                std::fs::remove_file(q.mountpoint.join("more")).unwrap();
                unmount(&q);

                assert_eq!(done(q.ensure(&tools).unwrap()), (64 * MIB, 128 * MIB));
                assert_intact(&q.mountpoint.join("before"), 40);
                let new = df_size(&q);
                assert!(
                    new > old + 50 * MIB,
                    "df shows the new size: {old} -> {new}"
                );
                write(&q.mountpoint.join("after"), 60).expect("room past the old 64M");
                assert!(!root.join("images/a.ext4.resize").exists());
                unmount(&q);
            });
        }

        #[test]
        fn shrinking_an_unmounted_home_keeps_its_data() {
            in_scratch_mountns(|root| {
                let tools = Tools::default();
                let big = home(root, 128 * MIB);
                big.ensure(&tools).unwrap();
                write(&big.mountpoint.join("data"), 20).unwrap();
                unmount(&big);

                let q = home(root, 80 * MIB);
                assert_eq!(done(q.ensure(&tools).unwrap()), (128 * MIB, 80 * MIB));
                assert_intact(&q.mountpoint.join("data"), 20);
                assert!(df_size(&q) <= 80 * MIB);
                assert_eq!(std::fs::metadata(&q.image).unwrap().len(), 80 * MIB);
                assert!(!root.join("images/a.ext4.resize").exists());
                assert!(write(&q.mountpoint.join("more"), 70).is_err(), "now 80M");
                assert!(matches!(q.ensure(&tools).unwrap(), Resize::None));
                unmount(&q);
            });
        }

        #[test]
        fn a_shrink_the_data_does_not_fit_is_refused_and_the_home_stays_usable() {
            in_scratch_mountns(|root| {
                let tools = Tools::default();
                let big = home(root, 128 * MIB);
                big.ensure(&tools).unwrap();
                write(&big.mountpoint.join("data"), 70).unwrap();
                unmount(&big);
                let before = digest(&big.image);

                let q = home(root, 64 * MIB);
                // The offline step on its own: refused, the image not written to.
                match q.resize_unmounted(&tools) {
                    Resize::Failed {
                        error: QuotaError::ShrinkTooSmall { minimum, .. },
                        ..
                    } => assert!(minimum > 64 * MIB),
                    other => panic!("expected a refused shrink, got {other:?}"),
                }
                assert_eq!(digest(&q.image), before, "the image was not touched");
                assert_eq!(std::fs::metadata(&q.image).unwrap().len(), 128 * MIB);
                assert!(!root.join("images/a.ext4.resize").exists());
                // And through ensure: refused, and the home mounted as it was.
                match q.ensure(&tools).unwrap() {
                    Resize::Failed {
                        error: e @ QuotaError::ShrinkTooSmall { .. },
                        ..
                    } => assert!(e.to_string().contains("the image keeps its size"), "{e}"),
                    other => panic!("expected a refused shrink, got {other:?}"),
                }
                assert!(
                    is_mountpoint(&q.mountpoint).unwrap(),
                    "mounted all the same"
                );
                assert_intact(&q.mountpoint.join("data"), 70);
                assert!(df_size(&q) > 100 * MIB);
                assert!(!root.join("images/a.ext4.resize").exists());
                unmount(&q);
                assert_eq!(std::fs::metadata(&q.image).unwrap().len(), 128 * MIB);
            });
        }

        #[test]
        fn shrinking_a_mounted_home_waits_until_it_is_unmounted() {
            in_scratch_mountns(|root| {
                let tools = Tools::default();
                home(root, 128 * MIB).ensure(&tools).unwrap();
                let q = home(root, 80 * MIB);
                write(&q.mountpoint.join("data"), 10).unwrap();
                let old = df_size(&q);
                match q.ensure(&tools).unwrap() {
                    Resize::Pending { size, wanted } => {
                        assert_eq!((size, wanted), (128 * MIB, 80 * MIB))
                    }
                    other => panic!("expected a pending shrink, got {other:?}"),
                }
                assert!(
                    matches!(q.ensure(&tools).unwrap(), Resize::None),
                    "reported once"
                );
                assert_eq!(df_size(&q), old);
                let fs = mounted_size(&q.mountpoint, &q.image).unwrap();
                assert_eq!(fs.bytes(), 128 * MIB);
                assert_eq!(fs.compared_to(80 * MIB), std::cmp::Ordering::Greater);
                assert_intact(&q.mountpoint.join("data"), 10);
                unmount(&q);

                assert_eq!(done(q.ensure(&tools).unwrap()), (128 * MIB, 80 * MIB));
                assert_intact(&q.mountpoint.join("data"), 10);
                let fs = mounted_size(&q.mountpoint, &q.image).unwrap();
                assert_eq!(fs.compared_to(80 * MIB), std::cmp::Ordering::Equal);
                unmount(&q);
            });
        }
    }
}
