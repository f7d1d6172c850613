//! Seam tests against the real kernel, each in a network namespace of its own: the test
//! thread unshares CLONE_NEWNET (which only affects that thread), so the table and links
//! it creates vanish with the thread and never touch the host's namespace.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use policy::nft::{self, Context, Upstream, UserNet};
use policy::profile::DnsPolicy;
use policy::UserName;

use super::netlink::{self, Netlink, PeerNs};
use super::*;

/// Runs `f` on a fresh thread in a fresh, unnamed network namespace.
fn in_scratch_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare net");
        f()
    })
    .join()
    .expect("test thread panicked")
}

fn ctx() -> Context {
    Context {
        pool: "10.87.0.0/16".parse().unwrap(),
        resolver: Some(Ipv4Addr::new(192, 168, 1, 1)),
        api_port: Some(9000),
    }
}

fn user(login: &str, slot: u8, internet: bool) -> UserNet {
    UserNet {
        login: UserName::parse(login).unwrap(),
        interface: format!("ob-{login}"),
        subnet: format!("10.87.{slot}.0/24").parse().unwrap(),
        gateway: Ipv4Addr::new(10, 87, slot, 1),
        address: Ipv4Addr::new(10, 87, slot, 2),
        internet,
        lan: false,
        dns: DnsPolicy::Allow,
        services: vec![Upstream {
            addr: Ipv4Addr::new(192, 168, 1, 10),
            port: 8096,
        }],
    }
}

#[test]
fn the_base_loads_and_user_rules_apply_replace_and_remove_idempotently() {
    in_scratch_netns(|| {
        let fw = Firewall::new().unwrap();
        assert_eq!(fw.state().unwrap(), TableState::default(), "no table yet");
        let base = nft::base(&ctx(), true);
        fw.run(NetCommand::Load {
            base: &base,
            then: "",
        })
        .unwrap();
        let st = fw.state().unwrap();
        assert!(st.exists);
        assert_eq!(st.base_marker, Some(nft::base_marker(&ctx(), true)));
        assert!(st.chains.contains(&"forward".to_string()));

        let alice = user("alice", 3, true);
        let t = nft::apply_user(&ctx(), &alice);
        fw.run(NetCommand::Apply { text: &t.text }).unwrap();
        // Applying the same transaction again is fine (a retry after a crash).
        fw.run(NetCommand::Apply { text: &t.text }).unwrap();
        let st = fw.state().unwrap();
        assert_eq!(st.fingerprints.get("alice"), Some(&t.fingerprint));
        assert!(st.chains.contains(&"user_alice_fwd".to_string()));
        assert_eq!(st.packets.get("alice"), Some(&PacketCounts::default()));
        assert_eq!(
            st.sources.get("ob-alice"),
            Some(&Ipv4Addr::new(10, 87, 3, 2))
        );

        // A live change replaces the rules and the fingerprint in one transaction.
        let changed = nft::apply_user(&ctx(), &user("alice", 3, false));
        fw.run(NetCommand::Apply {
            text: &changed.text,
        })
        .unwrap();
        let st = fw.state().unwrap();
        assert_eq!(st.fingerprints.get("alice"), Some(&changed.fingerprint));
        assert_ne!(changed.fingerprint, t.fingerprint);

        // A transaction that fails half-way changes nothing.
        let broken = format!(
            "{}add rule inet orchestratord user_alice_fwd nonsense\n",
            t.text
        );
        assert!(fw.run(NetCommand::Apply { text: &broken }).is_err());
        assert_eq!(
            fw.state().unwrap().fingerprints.get("alice"),
            Some(&changed.fingerprint)
        );

        let login = UserName::parse("alice").unwrap();
        let rm = nft::remove_user(&login, "ob-alice", alice.address);
        fw.run(NetCommand::Apply { text: &rm }).unwrap();
        fw.run(NetCommand::Apply { text: &rm }).unwrap();
        let st = fw.state().unwrap();
        assert!(st.fingerprints.is_empty());
        assert!(
            !st.chains.iter().any(|c| c.starts_with("user_")),
            "{:?}",
            st.chains
        );
        assert!(st.packets.is_empty());
        assert!(st.sources.is_empty());

        // Loading the base again replaces the table atomically (rules of users go).
        fw.run(NetCommand::Apply { text: &t.text }).unwrap();
        fw.run(NetCommand::Load {
            base: &base,
            then: "",
        })
        .unwrap();
        assert!(fw.state().unwrap().fingerprints.is_empty());
    });
}

#[test]
fn one_transaction_holds_many_users_and_each_removal_leaves_the_others() {
    in_scratch_netns(|| {
        let fw = Firewall::new().unwrap();
        let users: Vec<UserNet> = (0..20)
            .map(|i| user(&format!("u{i}"), i, i % 2 == 0))
            .collect();
        let all: String = users
            .iter()
            .map(|u| nft::apply_user(&ctx(), u).text)
            .collect();
        fw.run(NetCommand::Load {
            base: &nft::base(&ctx(), false),
            then: &all,
        })
        .unwrap();
        assert_eq!(fw.state().unwrap().fingerprints.len(), 20);
        let u7 = &users[7];
        fw.run(NetCommand::Apply {
            text: &nft::remove_user(&u7.login, &u7.interface, u7.address),
        })
        .unwrap();
        let st = fw.state().unwrap();
        assert_eq!(st.fingerprints.len(), 19);
        assert!(!st.fingerprints.contains_key("u7"));
        assert!(st.fingerprints.contains_key("u8"));
    });
}

/// A process in a network namespace of its own, killed and reaped on drop.
struct NsProcess(Child);

impl NsProcess {
    fn spawn() -> NsProcess {
        let mut cmd = Command::new("sleep");
        cmd.arg("600").stdin(Stdio::null());
        // SAFETY: unshare is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        NsProcess(cmd.spawn().expect("spawn sleep"))
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_veth_peer_is_created_directly_in_the_target_namespace_and_deleted_by_name() {
    in_scratch_netns(|| {
        let target = NsProcess::spawn();
        let mut nl = Netlink::open().unwrap();
        nl.create_veth("ob-vethtest", "eth0", PeerNs::Pid(target.0.id() as i32))
            .unwrap();
        let names = nl.link_names().unwrap();
        assert!(names.contains(&"ob-vethtest".to_string()), "{names:?}");
        assert!(
            !names.contains(&"eth0".to_string()),
            "the peer is not in our namespace: {names:?}"
        );
        let idx = netlink::index("ob-vethtest").unwrap();
        nl.add_address(idx, Ipv4Addr::new(10, 87, 9, 1), 24)
            .unwrap();
        nl.set_up(idx).unwrap();
        // Creating it again is refused (EEXIST), not silently merged.
        let again = nl.create_veth("ob-vethtest", "eth0", PeerNs::Pid(target.0.id() as i32));
        assert_eq!(again.unwrap_err().raw_os_error(), Some(libc::EEXIST));

        let fw = Firewall::new().unwrap();
        assert_eq!(fw.box_links().unwrap(), ["ob-vethtest"]);
        fw.run(NetCommand::DeleteLinks {
            names: &["ob-vethtest".to_string(), "lo".to_string()],
        })
        .unwrap();
        assert!(fw.box_links().unwrap().is_empty());
        assert!(
            nl.link_names().unwrap().contains(&"lo".to_string()),
            "only ob-* names are ever deleted"
        );
        assert!(!nl.delete_link("ob-vethtest").unwrap(), "already gone");
    });
}

#[test]
fn forwarding_remembers_what_the_host_had_before_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = dir.path().join("proc");
    fs::create_dir_all(proc_root.join("sys/net/ipv4")).unwrap();
    let sysctl = proc_root.join("sys/net/ipv4/ip_forward");
    fs::write(&sysctl, "0\n").unwrap();
    let marker = dir.path().join("state/net/forwarding");
    assert!(enable_forwarding(&proc_root, &marker).unwrap());
    assert_eq!(fs::read_to_string(&sysctl).unwrap(), "1\n");
    // After a restart the sysctl reads 1, but the marker still says it was off.
    assert!(enable_forwarding(&proc_root, &marker).unwrap());

    let other = dir.path().join("state/net/other");
    assert!(!enable_forwarding(&proc_root, &other).unwrap());
}
