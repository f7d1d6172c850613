//! The daemon's end of a terminal in a box: spawning the exec helper in terminal mode and
//! receiving the master it sends back, then reading, writing and resizing that master
//! without blocking the runtime.
//!
//! The terminal itself is allocated inside the box by the helper's child, as the user, on
//! the box's own devpts (see [`super::boxes::helper`]); the daemon only ever holds the
//! master descriptor, received with `SCM_RIGHTS` over a socketpair that is the helper's
//! stdout. The helper stays the parent of the shell and exits with its status, so the
//! daemon learns the exit status by waiting for the helper.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use nix::libc;
use tokio::io::unix::AsyncFd;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("cannot create the socketpair for the terminal")]
    Socket(#[source] io::Error),
    #[error("cannot run the exec helper")]
    Spawn(#[source] io::Error),
    #[error("cannot hand the spec to the exec helper")]
    Spec(#[source] io::Error),
    #[error("the helper sent no terminal: {0}")]
    NoTerminal(String),
    #[error("cannot receive the terminal")]
    Receive(#[source] io::Error),
    #[error("cannot make the terminal non-blocking")]
    NonBlocking(#[source] io::Error),
}

/// A shell on a terminal in a box: the helper (its exit is the shell's) and the master.
#[derive(Debug)]
pub struct Spawned {
    pub helper: tokio::process::Child,
    pub master: Master,
}

/// Runs `cmd` (an `orchestratord-helper exec` prepared with a terminal) with `framed` on
/// its stdin and waits (at most `timeout`) for the terminal's master.
pub async fn spawn(
    mut cmd: std::process::Command,
    framed: Vec<u8>,
    timeout: Duration,
) -> Result<Spawned, PtyError> {
    let (ours, theirs) = UnixStream::pair().map_err(PtyError::Socket)?;
    let theirs: OwnedFd = theirs.into();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::from(theirs))
        .stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(PtyError::Spawn)?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(&framed).await.map_err(PtyError::Spec)?;
        // Dropped here: the shell's stdin is the terminal, not this pipe.
    }
    // `theirs` went into the Command and is closed in the daemon once spawned; `ours`
    // sees EOF when the helper and its child exit without sending anything.
    ours.set_read_timeout(Some(timeout))
        .map_err(PtyError::Receive)?;
    let received = tokio::task::spawn_blocking(move || receive_fd(&ours))
        .await
        .map_err(|e| PtyError::Receive(io::Error::other(e.to_string())))?;
    match received {
        Ok(fd) => Ok(Spawned {
            helper: child,
            master: Master::new(fd)?,
        }),
        Err(e) => {
            let _ = child.start_kill();
            let mut why = e.to_string();
            if let Some(mut err) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let mut s = String::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), err.read_to_string(&mut s)).await;
                if !s.trim().is_empty() {
                    why = s.trim().to_string();
                }
            }
            let _ = child.wait().await;
            Err(PtyError::NoTerminal(why))
        }
    }
}

fn receive_fd(sock: &UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: descriptors received with SCM_RIGHTS are new and ours alone.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if owned.len() == 1 {
                return Ok(owned.pop().expect("one descriptor"));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the helper exited before sending a terminal",
    ))
}

/// The master end of a terminal, non-blocking, registered with the runtime.
#[derive(Debug)]
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

impl Master {
    fn new(fd: OwnedFd) -> Result<Master, PtyError> {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| PtyError::NonBlocking(e.into()))?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| PtyError::NonBlocking(e.into()))?;
        // SAFETY: the descriptor is owned by the AsyncFd for its whole registration and is
        // closed only when it is dropped (after deregistration).
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| PtyError::NonBlocking(e.into_parts().1))?;
        Ok(Master { fd })
    }

    /// Reads what the terminal has, up to `buf.len()`. `Ok(0)` when the terminal is gone
    /// (every process holding its other end exited: the kernel answers EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_fd(fd.get_ref(), buf)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads without waiting: `Ok(None)` when nothing is there now.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match read_fd(self.fd.get_ref(), buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// Writes all of `data` to the terminal's input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| write_fd(fd.get_ref(), data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal size (the kernel sends SIGWINCH to the foreground job).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
        if unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads at most buf.len() bytes into the valid, exclusively borrowed buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn write_fd(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: writes at most data.len() bytes from the valid buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
