//! Box networking use cases: every user's firewall rules follow the store (applied before
//! their box gets a link, changed live when their role, profile or services change,
//! removed with the user), reconciliation of the daemon's table and links with the store,
//! the drop audit, and the `net show` view.
//!
//! Fail closed everywhere: if a user's rules cannot be applied, their box does not start;
//! if a live change cannot be applied, the user's rules are removed (their box loses its
//! network, never gains access) and reconciliation retries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};

use policy::nft::{self, Context, UserNet};
use policy::service::Host;
use policy::BoxPlan;
use serde::Serialize;
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::{now, Actor, App, Result, ServiceError};
use crate::runtime::net::{Firewall, NetCommand, PacketCounts};
use crate::store::{UserFilter, UserRecord};

/// The daemon's network: the firewall and the settings every user's rules share.
#[derive(Debug)]
pub struct Network {
    fw: Arc<Firewall>,
    ctx: Context,
    transit_drop: bool,
    /// Login -> (dropped packets last seen, time of the last drop audit entry).
    drops: Mutex<HashMap<String, (u64, i64)>>,
}

/// How often one user's drops are written to the audit log, at most.
const DROP_AUDIT_INTERVAL: i64 = 60;

impl Network {
    /// Opens the firewall and turns on IPv4 forwarding (remembering whether the host had
    /// it, see `runtime::net::enable_forwarding`).
    pub fn init(config: &policy::Config) -> anyhow::Result<Network> {
        let fw = Firewall::new()?;
        let transit_drop = crate::runtime::net::enable_forwarding(
            Path::new("/proc"),
            &config.state_dir.join("net").join("forwarding"),
        )?;
        Ok(Network {
            fw: Arc::new(fw),
            ctx: Context {
                pool: config.network.pool,
                resolver: config.network.resolver,
                api_port: Some(config.listen.port()),
            },
            transit_drop,
            drops: Mutex::default(),
        })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

/// The first non-loopback IPv4 nameserver of a resolv.conf text: the default resolver for
/// boxes (a loopback stub such as systemd-resolved's 127.0.0.53 is unreachable from a box).
pub fn resolver_from_resolv_conf(text: &str) -> Option<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_unspecified())
}

/// Resolves the plan's service upstreams to IPv4 addresses (names through the host's
/// resolver; an upstream that does not resolve is left out, with a warning).
fn resolve(plan: &BoxPlan) -> Vec<nft::Upstream> {
    let mut out = Vec::new();
    for e in &plan.network.allowed {
        let port = e.upstream.port;
        match &e.upstream.host {
            Host::Ip(IpAddr::V4(a)) => out.push(nft::Upstream { addr: *a, port }),
            Host::Ip(IpAddr::V6(_)) => {
                warn!(service = %e.service, "IPv6 upstream: boxes are IPv4 only, not reachable")
            }
            Host::Name(name) => match (name.as_str(), port).to_socket_addrs() {
                Ok(addrs) => {
                    let v4: Vec<_> = addrs
                        .filter_map(|a| match a.ip() {
                            IpAddr::V4(v) => Some(v),
                            IpAddr::V6(_) => None,
                        })
                        .collect();
                    if v4.is_empty() {
                        warn!(service = %e.service, %name, "upstream has no IPv4 address");
                    }
                    out.extend(v4.into_iter().map(|addr| nft::Upstream { addr, port }));
                }
                Err(err) => warn!(service = %e.service, %name, %err, "cannot resolve upstream"),
            },
        }
    }
    out
}

/// A user's network as the API shows it (box status, `net show`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetView {
    pub subnet: String,
    pub address: String,
    pub gateway: String,
    pub interface: String,
    /// Packets the user's rules accepted and dropped since their last policy change.
    #[schema(value_type = Object)]
    pub packets: Option<PacketCounts>,
}

/// `GET /v1/users/{user}/network`: the effective policy in words and in nft syntax.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetPolicyView {
    pub user: String,
    #[serde(flatten)]
    pub net: NetView,
    pub internet: bool,
    pub lan: bool,
    pub dns: String,
    pub resolver: Option<String>,
    /// Reachable service upstreams, `addr:port`.
    pub services: Vec<String>,
    pub policy: Vec<String>,
    /// The user's chains as the daemon installs them.
    pub nft: String,
}

impl App {
    fn network(&self) -> Option<&Network> {
        self.boxes.as_ref().and_then(|m| m.network.as_ref())
    }

    fn user_net(plan: &BoxPlan) -> UserNet {
        UserNet::new(&plan.user, &plan.network, resolve(plan))
    }

    /// Installs (or replaces) the rules of `plan`'s user. Must succeed before the box gets
    /// a link.
    pub(crate) async fn net_apply(&self, plan: &BoxPlan) -> Result<()> {
        let Some(net) = self.network() else {
            return Ok(());
        };
        let fw = net.fw.clone();
        let ctx = net.ctx.clone();
        let plan = plan.clone();
        tokio::task::spawn_blocking(move || {
            let t = nft::apply_user(&ctx, &App::user_net(&plan));
            fw.run(NetCommand::Apply { text: &t.text })
        })
        .await
        .map_err(|_| ServiceError::Internal("network task panicked"))?
        .map_err(|e| ServiceError::BoxFailed(format!("network rules: {}", super::boxes::chain(&e))))
    }

    /// Brings a user's rules in line with the store after a change of their role,
    /// profile, services or state, or of the registry. Synchronous: the caller's change
    /// is in force when it returns. On failure the user's rules are removed (fail closed).
    pub(crate) fn net_refresh(&self, u: &UserRecord) {
        let Some(net) = self.network() else {
            return;
        };
        let result = self
            .plan_for(u)
            .map_err(|e| e.to_string())
            .and_then(|plan| {
                let t = nft::apply_user(&net.ctx, &App::user_net(&plan));
                net.fw
                    .run(NetCommand::Apply { text: &t.text })
                    .map_err(|e| super::boxes::chain(&e))
            });
        if let Err(err) = result {
            error!(user = %u.login, %err, "cannot apply network rules: removing them (fail closed)");
            self.net_remove(u);
        }
    }

    /// Re-applies every user's rules (after a registry change).
    pub(crate) fn net_refresh_all(&self) {
        if self.network().is_none() {
            return;
        }
        match self.store.list_users(&UserFilter::default()) {
            Ok(users) => users.iter().for_each(|u| self.net_refresh(u)),
            Err(err) => error!(?err, "cannot list users to refresh network rules"),
        }
    }

    /// Removes a user's rules (user deletion).
    pub(crate) fn net_remove(&self, u: &UserRecord) {
        let Some(net) = self.network() else {
            return;
        };
        let Some(subnet) = net.ctx.pool.slot(u.slot) else {
            return;
        };
        let address = subnet.host(2).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let text = nft::remove_user(&u.login, &format!("ob-{}", u.login), address);
        if let Err(e) = net.fw.run(NetCommand::Apply { text: &text }) {
            error!(user = %u.login, err = %super::boxes::chain(&e), "cannot remove network rules");
        }
    }

    /// Compares the daemon's table with the store and repairs it: the base ruleset is
    /// (re)loaded if missing or outdated, together with every user's rules, in one
    /// transaction; otherwise users whose fingerprint differs are re-applied and rules of
    /// users that no longer exist are removed. Host-side links of boxes that are not
    /// running and keep no network namespace are deleted. Audits users whose rules dropped packets (at most once a
    /// minute per user).
    pub async fn reconcile_network(self: &Arc<Self>) -> Result<()> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.reconcile_network_blocking())
            .await
            .map_err(|_| ServiceError::Internal("network task panicked"))?
    }

    fn reconcile_network_blocking(&self) -> Result<()> {
        let Some(net) = self.network() else {
            return Ok(());
        };
        let net_err = |e: crate::runtime::net::NetError| {
            error!(err = %super::boxes::chain(&e), "network reconciliation");
            ServiceError::Internal("network reconciliation failed")
        };
        let users = self.store.list_users(&UserFilter::default())?;
        let mut wanted = BTreeMap::new();
        for u in &users {
            match self.plan_for(u) {
                Ok(plan) => {
                    wanted.insert(
                        u.login.to_string(),
                        nft::apply_user(&net.ctx, &App::user_net(&plan)),
                    );
                }
                Err(err) => warn!(user = %u.login, %err, "no plan: no network rules"),
            }
        }
        let state = net.fw.state().map_err(net_err)?;
        if state.base_marker != Some(nft::base_marker(&net.ctx, net.transit_drop)) {
            let all: String = wanted.values().map(|t| t.text.as_str()).collect();
            let base = nft::base(&net.ctx, net.transit_drop);
            net.fw
                .run(NetCommand::Load {
                    base: &base,
                    then: &all,
                })
                .map_err(net_err)?;
            info!(users = wanted.len(), "loaded the firewall table");
        } else {
            for (login, t) in &wanted {
                if state.fingerprints.get(login) != Some(&t.fingerprint) {
                    net.fw
                        .run(NetCommand::Apply { text: &t.text })
                        .map_err(net_err)?;
                    info!(user = %login, "repaired network rules");
                }
            }
            let present: BTreeSet<&str> = state
                .chains
                .iter()
                .filter_map(|c| nft::Names::login_of(c))
                .chain(state.fingerprints.keys().map(String::as_str))
                .collect();
            for login in present.into_iter().filter(|l| !wanted.contains_key(*l)) {
                let Ok(name) = policy::UserName::parse(login) else {
                    continue;
                };
                let address = state
                    .sources
                    .get(&format!("ob-{login}"))
                    .copied()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                let text = nft::remove_user(&name, &format!("ob-{login}"), address);
                net.fw
                    .run(NetCommand::Apply { text: &text })
                    .map_err(net_err)?;
                info!(user = %login, "removed network rules of a deleted user");
            }
        }
        // Links of boxes that do not run and keep no network namespace.
        let rt = self.manager().ok().map(|m| m.runtime().clone());
        let running: BTreeSet<String> = users
            .iter()
            .filter(|u| {
                matches!(self.store.box_of(u.id), Ok(Some(b)) if b.observed == "running" || b.observed == "starting" || b.observed == "stopping")
                    || rt.as_ref().is_some_and(|rt| rt.keeps_netns(u.login.as_str()))
            })
            .map(|u| format!("ob-{}", u.login))
            .collect();
        let stray: Vec<String> = net
            .fw
            .box_links()
            .map_err(net_err)?
            .into_iter()
            .filter(|l| !running.contains(l))
            .collect();
        if !stray.is_empty() {
            info!(links = ?stray, "deleting stray box links");
            net.fw
                .run(NetCommand::DeleteLinks { names: &stray })
                .map_err(net_err)?;
        }
        self.audit_drops(net, &state.packets);
        Ok(())
    }

    fn audit_drops(&self, net: &Network, packets: &BTreeMap<String, PacketCounts>) {
        let t = now();
        let mut seen = net.drops.lock().unwrap_or_else(|p| p.into_inner());
        for (login, c) in packets {
            let entry = seen.entry(login.clone()).or_insert((0, 0));
            // Counters restart at 0 when the user's policy changes.
            let new = if c.dropped_packets >= entry.0 {
                c.dropped_packets - entry.0
            } else {
                c.dropped_packets
            };
            if new > 0 && t - entry.1 >= DROP_AUDIT_INTERVAL {
                self.write_audit(
                    "orchestratord".into(),
                    None,
                    "kernel",
                    "net.dropped",
                    login,
                    "denied",
                    Some(format!("{new} packet(s) dropped by the box firewall")),
                );
                *entry = (c.dropped_packets, t);
            } else if new == 0 || t - entry.1 >= DROP_AUDIT_INTERVAL {
                entry.0 = c.dropped_packets;
            }
        }
    }

    /// The network part of a box's status.
    pub(crate) fn net_view(&self, plan: &BoxPlan, with_packets: bool) -> Option<NetView> {
        let net = self.network()?;
        let packets = if with_packets {
            net.fw.user_packets(plan.user.as_str()).ok()
        } else {
            None
        };
        Some(NetView {
            subnet: plan.network.subnet.to_string(),
            address: plan.network.address.to_string(),
            gateway: plan.network.gateway.to_string(),
            interface: plan.network.host_interface.clone(),
            packets,
        })
    }

    /// `net show USER`: the effective policy of a user, in words and nft syntax.
    pub fn net_policy(&self, actor: &Actor, user: &str) -> Result<NetPolicyView> {
        let u = self.user_for(actor, user)?;
        let plan = self.plan_for(&u)?;
        let net = self
            .network()
            .ok_or(ServiceError::Unavailable("box networking is disabled"))?;
        let un = App::user_net(&plan);
        let (fwd, inp) = nft::user_rules(&net.ctx, &un);
        let names = nft::Names::of(u.login.as_str());
        let mut text = String::new();
        for (chain, rules) in [(&names.forward, &fwd), (&names.input, &inp)] {
            text.push_str(&format!("chain {chain} {{\n"));
            for r in rules {
                text.push_str(&format!("\t{r}\n"));
            }
            text.push_str("}\n");
        }
        Ok(NetPolicyView {
            user: u.login.to_string(),
            net: self
                .net_view(&plan, true)
                .ok_or(ServiceError::Internal("no network"))?,
            internet: un.internet,
            lan: un.lan,
            dns: match un.dns {
                policy::profile::DnsPolicy::Allow => "allow".into(),
                policy::profile::DnsPolicy::Block => "block".into(),
            },
            resolver: net.ctx.resolver.map(|r| r.to_string()),
            services: un
                .services
                .iter()
                .map(|s| format!("{}:{}", s.addr, s.port))
                .collect(),
            policy: nft::describe(&net.ctx, &un),
            nft: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_resolver_skips_loopback_stubs_and_ipv6() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 192.168.1.1\nnameserver 9.9.9.9\n";
        assert_eq!(
            resolver_from_resolv_conf(text),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        assert_eq!(resolver_from_resolv_conf("nameserver 127.0.0.1\n"), None);
        assert_eq!(resolver_from_resolv_conf(""), None);
    }
}
