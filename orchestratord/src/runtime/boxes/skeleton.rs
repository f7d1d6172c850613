//! The lower layers of a box on the host image, built by the daemon so that a start only
//! mounts them:
//!
//! - the **skeleton**, shared by every box: the top-level directories, the symlinks of a
//!   merged-/usr host (`/bin -> usr/bin`, ...), mount points for the host directories bound
//!   read-only at start, and copies of the host's /etc entries that hold no secrets
//!   (`policy::boxfs::HOST_ETC`; directories among them are mount points, bound live).
//!   It lives in `<state>/skel/<fingerprint>`, where the fingerprint covers the name, type,
//!   size, inode, mtime and link target of every host entry it copies: when the host
//!   changes one (a package upgrade), the next start builds a new skeleton, and the old
//!   one is deleted once no running box has it mounted (an overlay's lower layer must not
//!   change under it);
//! - the **generated layer**, one per box (`<state>/boxes/<user>/gen`): the box's own
//!   /etc files (passwd, group, hostname, hosts, resolv.conf), its /root, owned by
//!   box-root, and the home's mount point. It is rewritten before every start (no box
//!   process runs then).
//!
//! Building these once instead of on a staging tmpfs at every start saves about 200
//! system calls per start (bench/README.md, B1).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{remove_tree, Result, RuntimeError};

/// Directories every box root has (mount points and the usual top level); `/root` comes
/// from the generated layer.
const SKELETON_DIRS: [&str; 13] = [
    "etc", "proc", "sys", "dev", "tmp", "run", "home", "var", "var/tmp", "opt", "srv", "mnt", "usr",
];

/// Bumped when the layout built here changes, so an old skeleton is never reused.
const LAYOUT: u64 = 1;

/// Held while a skeleton is built or pruned (within one daemon; each daemon has its own
/// state directory).
static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A skeleton younger than this is never pruned: a start that built it may not have
/// mounted it yet.
const PRUNE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

fn prepare(path: &Path, source: std::io::Error) -> RuntimeError {
    RuntimeError::Prepare {
        what: "skeleton",
        path: path.into(),
        source,
    }
}

/// FNV-1a over what the skeleton copies from the host: a changed entry gives another
/// directory name.
pub fn fingerprint(binds: &[&str], etc: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ LAYOUT;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let paths = binds
        .iter()
        .map(PathBuf::from)
        .chain(etc.iter().map(|n| Path::new("/etc").join(n)));
    for p in paths {
        eat(p.as_os_str().as_encoded_bytes());
        match fs::symlink_metadata(&p) {
            Ok(md) => {
                for n in [md.mode().into(), md.len(), md.ino(), md.mtime() as u64] {
                    eat(&n.to_le_bytes());
                }
                eat(&md.mtime_nsec().to_le_bytes());
                if md.file_type().is_symlink() {
                    if let Ok(to) = fs::read_link(&p) {
                        eat(to.as_os_str().as_encoded_bytes());
                    }
                }
            }
            Err(_) => eat(b"-"),
        }
    }
    h
}

/// Where the skeleton for the host as it is now lives under `base` (built or not).
pub fn current(base: &Path, binds: &[&str], etc: &[&str]) -> PathBuf {
    base.join(format!("{:016x}", fingerprint(binds, etc)))
}

/// The skeleton for the host as it is now under `base` (`<state>/skel`), built if
/// missing. Returns its directory and whether it was built by this call.
pub fn ensure(base: &Path, binds: &[&str], etc: &[&str]) -> Result<(PathBuf, bool)> {
    let dir = current(base, binds, etc);
    if dir.is_dir() {
        return Ok((dir, false));
    }
    // Concurrent first starts build it once.
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if dir.is_dir() {
        return Ok((dir, false));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(base)
        .map_err(|e| prepare(base, e))?;
    let tmp = base.join(format!(".build-{}", std::process::id()));
    remove_tree(&tmp)?;
    if let Err(e) = build(&tmp, binds, etc) {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &dir) {
        Ok(()) => Ok((dir, true)),
        // Built meanwhile by another daemon process (tests): use that one.
        Err(_) if dir.is_dir() => {
            remove_tree(&tmp)?;
            Ok((dir, false))
        }
        Err(e) => {
            let _ = remove_tree(&tmp);
            Err(prepare(&dir, e))
        }
    }
}

fn build(skel: &Path, binds: &[&str], etc: &[&str]) -> Result<()> {
    let mkdir = |p: &Path, mode: u32| -> Result<()> {
        fs::DirBuilder::new()
            .mode(mode)
            .create(p)
            .map_err(|e| prepare(p, e))?;
        // The umask must not decide the mode.
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| prepare(p, e))
    };
    mkdir(skel, 0o755)?;
    for d in SKELETON_DIRS {
        let mode = if d.ends_with("tmp") { 0o1777 } else { 0o755 };
        mkdir(&skel.join(d), mode)?;
    }
    for b in binds {
        let src = Path::new(b);
        let dst = skel.join(b.trim_start_matches('/'));
        match fs::symlink_metadata(src) {
            Ok(md) if md.file_type().is_symlink() => {
                let to = fs::read_link(src).map_err(|e| prepare(src, e))?;
                symlink(&to, &dst).map_err(|e| prepare(&dst, e))?;
            }
            Ok(md) if md.is_dir() && !dst.exists() => mkdir(&dst, 0o755)?,
            _ => {}
        }
    }
    let etc_dir = skel.join("etc");
    for name in etc {
        let src = Path::new("/etc").join(name);
        let dst = etc_dir.join(name);
        match fs::symlink_metadata(&src) {
            Ok(md) if md.file_type().is_symlink() => {
                let to = fs::read_link(&src).map_err(|e| prepare(&src, e))?;
                symlink(&to, &dst).map_err(|e| prepare(&dst, e))?;
            }
            Ok(md) if md.is_file() && md.len() <= 1 << 20 => {
                fs::copy(&src, &dst).map_err(|e| prepare(&src, e))?;
            }
            Ok(md) if md.is_dir() => mkdir(&dst, 0o755)?,
            _ => {}
        }
    }
    Ok(())
}

/// Deletes skeletons under `base` other than `keep` that no running box has mounted
/// (`mounted` holds the mount tables of the running boxes: an overlay's options name its
/// lower layers) and that are older than a minute. Leftovers of interrupted builds go
/// too.
pub fn prune(base: &Path, keep: &Path, mounted: &[String]) -> Result<Vec<PathBuf>> {
    let _one = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let mut removed = vec![];
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(prepare(base, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == keep {
            continue;
        }
        let text = path.to_string_lossy();
        if mounted.iter().any(|m| m.contains(text.as_ref())) {
            continue;
        }
        let young = fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < PRUNE_AFTER));
        if young {
            continue;
        }
        remove_tree(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Writes the generated layer of a box: `etc/<name>` for each generated file, `/root`
/// (0700, owned by box-root) and the home's mount point `home` (relative, e.g.
/// `home/alice`: a read-only root cannot get it later).
pub fn write_generated(
    dir: &Path,
    etc: &[(String, String)],
    root_id: u32,
    home: &Path,
) -> Result<()> {
    let gen_err = |p: &Path, source| RuntimeError::Prepare {
        what: "etc",
        path: p.into(),
        source,
    };
    let etc_dir = dir.join("etc");
    let root = dir.join("root");
    for (d, mode) in [(dir, 0o755), (&etc_dir, 0o755), (&root, 0o700)] {
        match fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(gen_err(d, e)),
        }
    }
    std::os::unix::fs::chown(&root, Some(root_id), Some(root_id)).map_err(|e| gen_err(&root, e))?;
    let home = dir.join(home.strip_prefix("/").unwrap_or(home));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&home)
        .map_err(|e| gen_err(&home, e))?;
    for (name, text) in etc {
        let p = etc_dir.join(name);
        if fs::read(&p).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        fs::write(&p, text).map_err(|e| gen_err(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skeleton_is_built_once_and_holds_the_host_entries() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("skel");
        let binds = ["/usr", "/bin", "/lib64"];
        let etc = ["ld.so.cache", "localtime", "ssl", "no-such-entry"];
        let (dir, built) = ensure(&base, &binds, &etc).unwrap();
        assert!(built);
        let (again, built) = ensure(&base, &binds, &etc).unwrap();
        assert_eq!((again.as_path(), built), (dir.as_path(), false));
        assert_eq!(
            fs::read(dir.join("etc/ld.so.cache")).unwrap(),
            fs::read("/etc/ld.so.cache").unwrap()
        );
        assert_eq!(
            fs::read_link(dir.join("etc/localtime")).unwrap(),
            fs::read_link("/etc/localtime").unwrap()
        );
        assert!(
            dir.join("etc/ssl").is_dir(),
            "a mount point for the live bind"
        );
        assert!(!dir.join("etc/no-such-entry").exists());
        if fs::symlink_metadata("/bin")
            .unwrap()
            .file_type()
            .is_symlink()
        {
            assert_eq!(
                fs::read_link(dir.join("bin")).unwrap(),
                fs::read_link("/bin").unwrap()
            );
        }
        let tmp = fs::metadata(dir.join("tmp")).unwrap();
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        assert!(!dir.join("root").exists(), "/root is per box");
    }

    // Regression: concurrent first starts (bench B3) raced on one temporary directory.
    #[test]
    fn concurrent_first_starts_build_one_skeleton() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("skel");
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ensure(&base, &["/usr"], &["ld.so.cache"]).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().0).collect()
        });
        assert!(dirs.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(fs::read_dir(&base).unwrap().count(), 1, "no leftovers");
    }

    #[test]
    fn a_changed_host_entry_gives_a_new_skeleton_and_prune_keeps_mounted_ones() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("skel");
        let (a, _) = ensure(&base, &["/usr"], &["hostname-no-such"]).unwrap();
        let (b, _) = ensure(&base, &["/usr"], &["ld.so.cache"]).unwrap();
        assert_ne!(a, b, "another entry list is another fingerprint");
        let (c, _) = ensure(&base, &["/usr"], &["localtime"]).unwrap();
        fs::create_dir(base.join(".build-1")).unwrap();
        assert!(
            prune(&base, &c, &[]).unwrap().is_empty(),
            "young skeletons stay"
        );
        let old = std::time::SystemTime::now() - 2 * PRUNE_AFTER;
        for d in [&a, &b, &base.join(".build-1")] {
            fs::File::open(d).unwrap().set_modified(old).unwrap();
        }
        // `a` is the lower layer of a running box.
        let mounts = vec![format!(
            "101 90 0:50 / / rw - overlay overlay rw,lowerdir={}/gen:{}",
            t.path().display(),
            a.display()
        )];
        let removed = prune(&base, &c, &mounts).unwrap();
        assert!(a.is_dir() && c.is_dir());
        assert!(!b.exists() && !base.join(".build-1").exists());
        assert_eq!(removed.len(), 2);
    }

    #[test]
    fn the_generated_layer_holds_the_box_files_and_root() {
        let t = tempfile::tempdir().unwrap();
        let gen = t.path().join("gen");
        let files = vec![(
            "passwd".to_string(),
            "root:x:0:0::/root:/bin/sh\n".to_string(),
        )];
        write_generated(&gen, &files, 4242, Path::new("/home/alice")).unwrap();
        write_generated(&gen, &files, 4242, Path::new("/home/alice")).unwrap();
        assert!(gen.join("home/alice").is_dir());
        assert_eq!(
            fs::read_to_string(gen.join("etc/passwd")).unwrap(),
            files[0].1
        );
        let root = fs::metadata(gen.join("root")).unwrap();
        assert_eq!(
            (root.uid(), root.permissions().mode() & 0o777),
            (4242, 0o700)
        );
    }
}
