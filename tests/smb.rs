//! The Samba share configuration docs/homes.md recommends, checked against a real smbd
//! (Debian's samba package) on loopback with smbclient. The kernel mount itself is tested
//! in the VM tier (this kernel has no CIFS); here: the service account logs in with a
//! credentials file in mount.cifs's format, reads and writes a per-user subdirectory, and
//! what the configuration forbids (a wrong password, anonymous access, SMB1, browsing the
//! share list) is refused.
//!
//! smbd runs in a process group of its own with every path (state, locks, passdb, logs)
//! in the test's temporary directory; the group is killed on drop. The Samba account lives
//! only in that private passdb and maps to the existing `nobody` Unix account: no host
//! user is created or changed.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse 42";

struct Smbd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Smbd {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // samba-dcerpcd and its rpcd_* workers start their own sessions: find them by
        // the configuration file of this run (a path unique to it) and kill those.
        let conf = self.dir.path().join("smb.conf");
        let needle = format!("--configfile={}", conf.display());
        for _ in 0..3 {
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if cmd.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The share section as docs/homes.md recommends it (`SERVICE` is the service account,
/// `PATH` the directory holding one subdirectory per user).
fn recommended_share(service: &str, path: &Path) -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/homes.md")).unwrap();
    let start = doc
        .find("```ini\n[orchestratord-homes]")
        .expect("docs/homes.md has the share");
    let rest = &doc[start + "```ini\n".len()..];
    let section = &rest[..rest.find("```").unwrap()];
    section
        .replace("orchestratord-svc", service)
        .replace("/srv/orchestratord-homes", path.to_str().unwrap())
}

impl Smbd {
    fn start() -> Smbd {
        let dir = tempfile::Builder::new()
            .prefix("orchd-smb-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let share = d.join("share");
        std::fs::create_dir(&share).unwrap();
        // The service account owns the share root (as on a NAS).
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        nix::unistd::chown(&share, Some(nobody.uid), Some(nobody.gid)).unwrap();
        std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o700)).unwrap();
        for sub in ["private", "lock", "state", "cache", "pid", "ncalrpc", "log"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        let conf = format!(
            "[global]\n\
             server role = standalone server\n\
             smb ports = {port}\n\
             interfaces = 127.0.0.1\n\
             bind interfaces only = yes\n\
             disable netbios = yes\n\
             passdb backend = tdbsam:{d}/private/passdb.tdb\n\
             private dir = {d}/private\n\
             lock directory = {d}/lock\n\
             state directory = {d}/state\n\
             cache directory = {d}/cache\n\
             pid directory = {d}/pid\n\
             ncalrpc dir = {d}/ncalrpc\n\
             log file = {d}/log/%m.log\n\
             load printers = no\n\
             printing = bsd\n\
             printcap name = /dev/null\n\
             disable spoolss = yes\n\
             server min protocol = SMB3\n\
             map to guest = Never\n\
             restrict anonymous = 2\n\
             {}\n",
            recommended_share("nobody", &share),
            d = d.display()
        );
        std::fs::write(d.join("smb.conf"), &conf).unwrap();
        let out = Command::new("testparm")
            .args(["-s", "--suppress-prompt"])
            .arg(d.join("smb.conf"))
            .output()
            .unwrap();
        assert!(out.status.success(), "testparm: {}", text(&out));
        let mut pw = Command::new("smbpasswd")
            .arg("-c")
            .arg(d.join("smb.conf"))
            .args(["-a", "-s", "nobody"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        pw.stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n{PASSWORD}\n").as_bytes())
            .unwrap();
        let out = pw.wait_with_output().unwrap();
        assert!(out.status.success(), "smbpasswd: {}", text(&out));
        let log = std::fs::File::create(d.join("log/smbd.stdout")).unwrap();
        let child = Command::new("smbd")
            .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(d.join("smb.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut s = Smbd { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("smbd exited with {st}: {}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "smbd never listened: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/smbd.stdout")).unwrap_or_default()
    }

    /// A credentials file in mount.cifs's format (the one docs/homes.md shows), 0600.
    fn credentials(&self, password: &str) -> PathBuf {
        let p = self.dir.path().join(format!("cred-{}", password.len()));
        std::fs::write(
            &p,
            format!("username=nobody\npassword={password}\ndomain=WORKGROUP\n"),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn client(&self, args: &[&str]) -> Output {
        Command::new("smbclient")
            .args([
                "-p",
                &self.port.to_string(),
                "--option=client min protocol=SMB3",
            ])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_recommended_samba_share_serves_per_user_homes_to_the_service_account_only() {
    let smbd = Smbd::start();
    let good = smbd.credentials(PASSWORD);
    let local = smbd.dir.path().join("hello.txt");
    std::fs::write(&local, "hello from alice's box").unwrap();
    let share = "//127.0.0.1/orchestratord-homes";
    let out = smbd.client(&[
        share,
        "-A",
        good.to_str().unwrap(),
        "-c",
        "mkdir alice; cd alice; put hello.txt; ls",
    ]);
    assert!(out.status.success(), "{}\nsmbd: {}", text(&out), smbd.log());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello.txt"),
        "{}",
        text(&out)
    );
    let stored = smbd.dir.path().join("share/alice/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&stored).unwrap(),
        "hello from alice's box"
    );
    let md = std::fs::metadata(&stored).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "create mask");
    let out = smbd.client(&[
        share,
        "-A",
        good.to_str().unwrap(),
        "-c",
        "get alice/hello.txt back.txt",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(smbd.dir.path().join("back.txt")).unwrap(),
        "hello from alice's box"
    );

    // A wrong password, anonymous access and SMB1 are refused; the share is not listed.
    let bad = smbd.credentials("wrong password");
    let out = smbd.client(&[share, "-A", bad.to_str().unwrap(), "-c", "ls"]);
    assert!(
        !out.status.success(),
        "wrong password accepted: {}",
        text(&out)
    );
    let out = smbd.client(&[share, "-N", "-c", "ls"]);
    assert!(!out.status.success(), "anonymous accepted: {}", text(&out));
    let out = smbd.client(&[
        share,
        "-A",
        good.to_str().unwrap(),
        "--option=client min protocol=NT1",
        "--option=client max protocol=NT1",
        "-c",
        "ls",
    ]);
    assert!(!out.status.success(), "SMB1 accepted: {}", text(&out));
    let out = smbd.client(&["-L", "127.0.0.1", "-A", good.to_str().unwrap()]);
    assert!(out.status.success(), "listing shares: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("IPC$"),
        "the listing worked: {}",
        text(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("orchestratord-homes"),
        "the share is browseable: {}",
        text(&out)
    );
}
