//! Network modes of the probe, for the firewall tests: servers for a test lab (TCP and UDP
//! echo, a DNS responder) and a client that tries many destinations at once and reports
//! what happened to each, as one JSON object.
//!
//! `net-serve SPEC...` with SPEC `tcp:ADDR:PORT`, `udp:ADDR:PORT` or `dns:ADDR:PORT`
//! (answers every A query with 203.0.113.7); prints `ready` once everything is bound and
//! serves until killed.
//!
//! `net-check [--from ADDR] [--timeout MS] SPEC...` with SPEC `tcp:HOST:PORT`,
//! `udp:HOST:PORT`, `icmp:HOST`, `dns:SERVER:NAME` or `tcp6:[ADDR]:PORT`; prints
//! `{"SPEC": "ok" | "timeout" | "refused" | "unreachable" | "error: ..."}`. `ok` means an
//! answer came back (the echo of what was sent, an ICMP echo reply, a DNS answer).

use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::time::Duration;

use serde_json::{Map, Value};

/// The address the DNS responder answers with.
pub const DNS_ANSWER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

pub fn serve(specs: &[&str]) -> i32 {
    let mut threads = Vec::new();
    for spec in specs {
        let Some((kind, addr)) = spec.split_once(':') else {
            eprintln!("net-serve: bad spec {spec:?}");
            return 2;
        };
        let addr = match parse_addr(addr) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("net-serve: {e}");
                return 2;
            }
        };
        match kind {
            "tcp" => match TcpListener::bind(addr) {
                Ok(l) => threads.push(std::thread::spawn(move || tcp_echo(l))),
                Err(e) => {
                    eprintln!("net-serve: bind {addr}: {e}");
                    return 1;
                }
            },
            "udp" | "dns" => match UdpSocket::bind(addr) {
                Ok(s) => {
                    let dns = kind == "dns";
                    threads.push(std::thread::spawn(move || udp_serve(s, dns)));
                }
                Err(e) => {
                    eprintln!("net-serve: bind {addr}: {e}");
                    return 1;
                }
            },
            _ => {
                eprintln!("net-serve: unknown kind {kind:?}");
                return 2;
            }
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    0
}

fn tcp_echo(l: TcpListener) {
    for mut s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

fn udp_serve(s: UdpSocket, dns: bool) {
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = s.recv_from(&mut buf) {
        let reply = if dns {
            match dns_answer(&buf[..n]) {
                Some(r) => r,
                None => continue,
            }
        } else {
            buf[..n].to_vec()
        };
        let _ = s.send_to(&reply, peer);
    }
}

/// A DNS query for `name`, type A, id 0x4f52.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x4f, 0x52, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Answers a query with one A record ([`DNS_ANSWER`]); `None` for anything malformed.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let end = i + 5; // root label, qtype, qclass
    let question = query.get(12..end)?;
    let mut r = query[..2].to_vec();
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    r.extend_from_slice(&DNS_ANSWER.octets());
    Some(r)
}

fn classify(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout".into(),
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        _ => match e.raw_os_error() {
            Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) | Some(libc::EADDRNOTAVAIL) => {
                "unreachable".into()
            }
            Some(libc::EPERM) | Some(libc::EACCES) => "denied".into(),
            _ => format!("error: {e}"),
        },
    }
}

/// A TCP connection from `from` (if given) to `to` via socket2-free plain libc: bind, then
/// a non-blocking connect with a timeout.
fn tcp_connect(from: Option<Ipv4Addr>, to: SocketAddr, t: Duration) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect_timeout(&to, t);
    };
    // std has no bind-before-connect: bind a listener-less socket through libc.
    let SocketAddr::V4(to4) = to else {
        return Err(std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    };
    // SAFETY: plain socket/bind/connect/poll calls on a descriptor owned here; the
    // sockaddr structs live across the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let sa = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sa(SocketAddrV4::new(from, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sa(to4);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let n = libc::poll(&mut pfd, 1, t.as_millis() as libc::c_int);
        if n == 0 {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let mut err: libc::c_int = 0;
        let mut elen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut elen,
        );
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

fn check_tcp(from: Option<Ipv4Addr>, to: SocketAddr, t: Duration) -> String {
    let mut s = match tcp_connect(from, to, t) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    if let Err(e) = s.write_all(b"ping\n") {
        return classify(&e);
    }
    let mut buf = [0u8; 5];
    let r = match s.read_exact(&mut buf) {
        Ok(()) if &buf == b"ping\n" => "ok".into(),
        Ok(()) => "error: wrong echo".into(),
        Err(e) => classify(&e),
    };
    let _ = s.shutdown(Shutdown::Both);
    r
}

fn check_udp(
    from: Option<Ipv4Addr>,
    to: SocketAddr,
    payload: &[u8],
    t: Duration,
) -> Result<Vec<u8>, String> {
    let bind = SocketAddr::new(IpAddr::V4(from.unwrap_or(Ipv4Addr::UNSPECIFIED)), 0);
    let s = UdpSocket::bind(bind).map_err(|e| classify(&e))?;
    s.set_read_timeout(Some(t)).map_err(|e| classify(&e))?;
    s.connect(to).map_err(|e| classify(&e))?;
    s.send(payload).map_err(|e| classify(&e))?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).map_err(|e| classify(&e))?;
    Ok(buf[..n].to_vec())
}

/// An ICMP echo through an unprivileged ICMP datagram socket (net.ipv4.ping_group_range).
fn check_icmp(to: Ipv4Addr, t: Duration) -> String {
    // SAFETY: socket, sendto, poll and recv on a descriptor owned here with local buffers.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        );
        if fd < 0 {
            return classify(&std::io::Error::last_os_error());
        }
        let _guard = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        // type 8 (echo request), code 0, checksum (the kernel fills it), id, seq 1.
        let pkt: [u8; 12] = [8, 0, 0, 0, 0, 0, 0, 1, b'p', b'i', b'n', b'g'];
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            len,
        ) < 0
        {
            return classify(&std::io::Error::last_os_error());
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut pfd, 1, t.as_millis() as libc::c_int) <= 0 {
            return "timeout".into();
        }
        let mut buf = [0u8; 256];
        let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return classify(&std::io::Error::last_os_error());
        }
        if n >= 1 && buf[0] == 0 {
            "ok".into()
        } else {
            format!("error: icmp type {}", buf[0])
        }
    }
}

fn check_one(spec: &str, from: Option<Ipv4Addr>, t: Duration) -> String {
    let Some((kind, rest)) = spec.split_once(':') else {
        return "error: bad spec".into();
    };
    match kind {
        "tcp" | "tcp6" => match parse_addr(rest) {
            Ok(a) => check_tcp(from, a, t),
            Err(e) => format!("error: {e}"),
        },
        "udp" => match parse_addr(rest) {
            Ok(a) => match check_udp(from, a, b"ping\n", t) {
                Ok(r) if r == b"ping\n" => "ok".into(),
                Ok(_) => "error: wrong echo".into(),
                Err(e) => e,
            },
            Err(e) => format!("error: {e}"),
        },
        "icmp" => match rest.parse() {
            Ok(a) => check_icmp(a, t),
            Err(e) => format!("error: {e}"),
        },
        "dns" => {
            let Some((server, name)) = rest.split_once(':') else {
                return "error: dns:SERVER:NAME".into();
            };
            let Ok(server) = server.parse::<Ipv4Addr>() else {
                return "error: bad server".into();
            };
            match check_udp(from, SocketAddr::from((server, 53)), &dns_query(name), t) {
                Ok(r) if r.len() >= 4 && r.ends_with(&DNS_ANSWER.octets()) => "ok".into(),
                Ok(_) => "error: unexpected answer".into(),
                Err(e) => e,
            }
        }
        _ => "error: unknown kind".into(),
    }
}

pub fn check(args: &[&str]) -> i32 {
    let mut from = None;
    let mut timeout = Duration::from_millis(1000);
    let mut specs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--from" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => from = Some(v),
                None => {
                    eprintln!("net-check: --from needs an IPv4 address");
                    return 2;
                }
            },
            "--timeout" => match it.next().and_then(|v| v.parse().ok()) {
                Some(ms) => timeout = Duration::from_millis(ms),
                None => {
                    eprintln!("net-check: --timeout needs milliseconds");
                    return 2;
                }
            },
            s => specs.push(s.to_string()),
        }
    }
    // All at once: a dropped packet costs a full timeout, so checks run in parallel.
    let handles: Vec<_> = specs
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let r = check_one(&s, from, timeout);
                (s, r)
            })
        })
        .collect();
    let mut out = Map::new();
    for h in handles {
        if let Ok((s, r)) = h.join() {
            out.insert(s, Value::String(r));
        }
    }
    println!("{}", Value::Object(out));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_responder_answers_a_query_with_one_a_record() {
        let q = dns_query("example.lan");
        let r = dns_answer(&q).unwrap();
        assert_eq!(&r[..2], &q[..2], "same id");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert!(r.ends_with(&DNS_ANSWER.octets()));
        assert_eq!(dns_answer(&q[..10]), None);
        assert_eq!(dns_answer(&[0u8; 12][..]), None, "no question");
    }
}
