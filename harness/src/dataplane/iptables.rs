//! kube-proxy's iptables mode, written as kube-proxy writes it and loaded with
//! `iptables-restore` through either backend (`iptables-nft-restore`, `iptables-legacy-restore`).
//!
//! Layout (nat table): `PREROUTING`/`OUTPUT` → `KUBE-SERVICES`, one rule per Service port
//! matching its VIP, protocol and port → `KUBE-SVC-<hash>`, which marks off-node traffic for
//! masquerade and picks an endpoint with `-m statistic --mode random --probability` 1/n,
//! 1/(n-1), …, 1 → `KUBE-SEP-<hash>`, which DNATs to the endpoint. `KUBE-MARK-MASQ` sets
//! mark 0x4000 and `KUBE-POSTROUTING` masquerades marked packets. The filter table rejects
//! connections to Services without endpoints (`KUBE-SERVICES`) and accepts marked and
//! established forwarded traffic (`KUBE-FORWARD`). Chain hashes are kube-proxy's (see
//! [`super::kube_hash`]), so `iptables-save` here reads like a node's.
//!
//! `KUBE-SERVICES` is matched rule by rule, so every new connection walks it until its
//! Service's rule: the per-connection cost that grows with the number of Services. Rules go
//! in the order of the table given to `sync`, so the most recently added Service, last in
//! the table, is the worst case, as the scaling sweep wants.
//!
//! **Loading.** Every sync restores the whole nat and filter tables (no `--noflush`), one
//! kernel transaction per table. The node's namespace belongs to the lab, so these tables
//! hold nothing else. kube-proxy itself restores with `--noflush` and writes only changed
//! chains; here, on iptables 1.8.9, `--noflush` restores of large tables are many times
//! slower than full ones (4.7 s against 0.7 s for 3,000 Services), while `KUBE-SERVICES` is
//! rewritten whole either way, so a full restore is both faster and what the kernel sees.
//!
//! **Lab addition.** One rule kube-proxy does not write: `KUBE-POSTROUTING` first
//! masquerades DNATed traffic from a local pod to a local pod. Such a reply is switched on
//! the node's pod bridge and reaches the client without un-DNAT unless `br_netfilter`
//! passes bridged frames through conntrack, which a host may not do; masquerading sends the
//! reply back through the node, on every host.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::tool::Tool;
use super::{kube_hash, validate, Dataplane, DataplaneKind, NodeTarget, Protocol, ServiceRules, SyncReport};

/// kube-proxy's masquerade mark (bit 14).
pub const MASQ_MARK: &str = "0x4000";

/// Which kernel interface the iptables tools drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nf_tables, through `iptables-nft` (tables `ip nat` and `ip filter` in `nft list ruleset`).
    Nft,
    /// The legacy x_tables interface, through `iptables-legacy`.
    Legacy,
}

impl Backend {
    fn restore(self) -> Tool {
        match self {
            Backend::Nft => Tool::new("iptables-nft-restore", "iptables"),
            Backend::Legacy => Tool::new("iptables-legacy-restore", "iptables"),
        }
    }

    fn save(self) -> Tool {
        match self {
            Backend::Nft => Tool::new("iptables-nft-save", "iptables"),
            Backend::Legacy => Tool::new("iptables-legacy-save", "iptables"),
        }
    }

    fn kind(self) -> DataplaneKind {
        match self {
            Backend::Nft => DataplaneKind::Iptables,
            Backend::Legacy => DataplaneKind::IptablesLegacy,
        }
    }
}

/// `nft`, to delete the tables `iptables-nft` leaves behind (see [`IptablesDataplane::teardown`]).
const NFT: Tool = Tool::new("nft", "nftables");

/// kube-proxy's Service chain: `KUBE-SVC-` and 16 characters of the hash of the port name
/// and protocol.
pub fn service_chain(name: &str, protocol: Protocol) -> String {
    format!("KUBE-SVC-{}", &kube_hash(&format!("{name}{}", protocol.as_str()))[..16])
}

/// kube-proxy's endpoint chain: `KUBE-SEP-` and 16 characters of the hash of the port name,
/// protocol and `ip:port`.
pub fn endpoint_chain(name: &str, protocol: Protocol, ip: Ipv4Addr, port: u16) -> String {
    format!("KUBE-SEP-{}", &kube_hash(&format!("{name}{}{ip}:{port}", protocol.as_str()))[..16])
}

/// `-m tcp -p tcp`: kube-proxy names the protocol match module explicitly.
fn proto_match(p: Protocol) -> String {
    format!("-m {0} -p {0}", p.as_str())
}

/// The filter and nat tables for `services` on a node whose pods live in `pod_cidr`, as
/// `iptables-restore` input replacing both tables whole.
pub fn render(services: &[ServiceRules], pod_cidr: (Ipv4Addr, u8)) -> String {
    let local = format!("{}/{}", pod_cidr.0, pod_cidr.1);
    let mut out = String::with_capacity(256 + services.len() * 900);
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let o = &mut out;

    o.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for c in ["KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"] {
        let _ = writeln!(o, ":{c} - [0:0]");
    }
    #[rustfmt::skip]
    o.push_str(concat!(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
    ));
    for s in services.iter().filter(|s| s.endpoints.is_empty()) {
        let p = &s.service;
        let _ = writeln!(
            o,
            "-A KUBE-SERVICES -m comment --comment \"{} has no endpoints\" {} -d {}/32 --dport {} -j REJECT --reject-with icmp-port-unreachable",
            p.name,
            proto_match(p.protocol),
            p.vip,
            p.port
        );
    }
    o.push_str("COMMIT\n");

    o.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    for c in ["KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"] {
        let _ = writeln!(o, ":{c} - [0:0]");
    }
    // Chain names, computed once: each is used in a declaration and in rules.
    let chains: Vec<(String, Vec<String>)> = services
        .iter()
        .filter(|s| !s.endpoints.is_empty())
        .map(|s| {
            let p = &s.service;
            let seps = s.endpoints.iter().map(|e| endpoint_chain(&p.name, p.protocol, e.ip, e.port)).collect();
            (service_chain(&p.name, p.protocol), seps)
        })
        .collect();
    for (svc, seps) in &chains {
        let _ = writeln!(o, ":{svc} - [0:0]");
        for sep in seps {
            let _ = writeln!(o, ":{sep} - [0:0]");
        }
    }
    #[rustfmt::skip]
    o.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
    ));
    let _ = writeln!(
        o,
        "-A KUBE-POSTROUTING -s {local} -d {local} -m conntrack --ctstate DNAT -m comment --comment \"zonebench lab: hairpin to a local endpoint\" -j MASQUERADE"
    );
    #[rustfmt::skip]
    o.push_str(concat!(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    ));
    let with_endpoints = services.iter().filter(|s| !s.endpoints.is_empty());
    for (s, (svc, _)) in with_endpoints.clone().zip(&chains) {
        let p = &s.service;
        let _ = writeln!(
            o,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" {} -d {}/32 --dport {} -j {svc}",
            p.name,
            proto_match(p.protocol),
            p.vip,
            p.port
        );
    }
    o.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for (s, (svc, seps)) in with_endpoints.zip(&chains) {
        let p = &s.service;
        let proto = proto_match(p.protocol);
        let _ = writeln!(
            o,
            "-A {svc} -m comment --comment \"{} cluster IP\" {proto} -d {}/32 --dport {} ! -s {local} -j KUBE-MARK-MASQ",
            p.name, p.vip, p.port
        );
        let n = s.endpoints.len();
        for (i, (e, sep)) in s.endpoints.iter().zip(seps).enumerate() {
            // kube-proxy's probabilities: endpoint i of n is taken with 1/(n-i) of what is
            // left, so each gets 1/n overall; the last takes the rest unconditionally.
            let pick = if i + 1 < n {
                format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
            } else {
                String::new()
            };
            let _ = writeln!(o, "-A {svc} -m comment --comment \"{} -> {}:{}\"{pick} -j {sep}", p.name, e.ip, e.port);
        }
        for (e, sep) in s.endpoints.iter().zip(seps) {
            let _ = writeln!(o, "-A {sep} -m comment --comment {} -s {}/32 -j KUBE-MARK-MASQ", p.name, e.ip);
            let _ = writeln!(
                o,
                "-A {sep} -m comment --comment {} {proto} -j DNAT --to-destination {}:{}",
                p.name, e.ip, e.port
            );
        }
    }
    o.push_str("COMMIT\n");
    out
}

/// Both tables empty: what a restore leaves when this dataplane is removed.
pub fn render_empty() -> &'static str {
    concat!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
    )
}

/// One node's kube-proxy-style iptables rules.
pub struct IptablesDataplane {
    netns: String,
    pod_cidr: (Ipv4Addr, u8),
    backend: Backend,
}

impl IptablesDataplane {
    /// Checks the backend's tools are installed; programs nothing yet.
    pub fn open(node: &NodeTarget, backend: Backend) -> anyhow::Result<IptablesDataplane> {
        backend.restore().require()?;
        backend.save().require()?;
        if backend == Backend::Nft {
            NFT.require()?;
        }
        Ok(IptablesDataplane { netns: node.netns.clone(), pod_cidr: node.pod_cidr, backend })
    }

    fn restore(&self, rules: &str) -> anyhow::Result<()> {
        self.backend.restore().run(&self.netns, &[], Some(rules.as_bytes()))?;
        Ok(())
    }
}

impl Dataplane for IptablesDataplane {
    fn kind(&self) -> DataplaneKind {
        self.backend.kind()
    }

    fn sync(&mut self, services: &[ServiceRules]) -> anyhow::Result<SyncReport> {
        validate(services)?;
        // Rendering is part of programming, as it is of a kube-proxy sync.
        let start = Instant::now();
        let rules = render(services, self.pod_cidr);
        self.restore(&rules)?;
        let elapsed = start.elapsed();
        Ok(SyncReport { rules: self.rule_count()?, elapsed })
    }

    /// Lines of `iptables-save` (every table of the backend, headers included).
    /// Rules (`-A` lines) of `iptables-save`, as the node inspector counts a real
    /// kube-proxy's: chain declarations and table markers are no rules.
    fn rule_count(&self) -> anyhow::Result<u64> {
        let out = self.backend.save().run(&self.netns, &[], None)?;
        Ok(out.lines().filter(|l| l.starts_with("-A")).count() as u64)
    }

    /// Empties both tables; with the nft backend also deletes the `ip nat` and `ip filter`
    /// tables iptables-nft created, since their hooks (and the conntrack they enable) would
    /// otherwise stay on every packet of the node. Legacy tables cannot be unregistered
    /// from a live namespace; they stay empty.
    fn teardown(&mut self) -> anyhow::Result<()> {
        self.restore(render_empty())?;
        if self.backend == Backend::Nft {
            let tables = NFT.run(&self.netns, &["list", "tables"], None)?;
            for t in ["nat", "filter"] {
                if tables.lines().any(|l| l.trim() == format!("table ip {t}")) {
                    NFT.run(&self.netns, &["delete", "table", "ip", t], None)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::svc;
    use super::*;

    const CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 1, 0), 24);

    fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn chains_are_named_as_kube_proxy_names_them() {
        assert_eq!(service_chain("ns1/svc1:p80", Protocol::Tcp), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(
            endpoint_chain("ns1/svc1:p80", Protocol::Tcp, Ipv4Addr::new(10, 180, 0, 1), 80),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn a_service_jumps_from_kube_services_to_its_endpoints_with_falling_probabilities() {
        let eps = [([198, 19, 0, 2], 7101), ([198, 19, 0, 3], 7101), ([198, 19, 16, 2], 7101)];
        let t = render(&[svc("zonebench/echo:tcp", [198, 18, 128, 1], 7101, &eps)], CIDR);
        let svc = service_chain("zonebench/echo:tcp", Protocol::Tcp);
        assert!(t.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"zonebench/echo:tcp cluster IP\" -m tcp -p tcp -d 198.18.128.1/32 --dport 7101 -j {svc}\n"
        )));
        let picks = lines_with(&t, &format!("-A {svc} -m comment --comment \"zonebench/echo:tcp ->"));
        assert_eq!(picks.len(), 3);
        assert!(picks[0].contains("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-"));
        assert!(picks[1].contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"));
        assert!(!picks[2].contains("statistic"), "the last endpoint takes what is left: {}", picks[2]);
        let sep = endpoint_chain("zonebench/echo:tcp", Protocol::Tcp, Ipv4Addr::new(198, 19, 16, 2), 7101);
        assert!(picks[2].ends_with(&format!("-j {sep}")));
        assert!(t.contains(&format!(
            "-A {sep} -m comment --comment zonebench/echo:tcp -m tcp -p tcp -j DNAT --to-destination 198.19.16.2:7101\n"
        )));
        assert!(t.contains(&format!(
            "-A {sep} -m comment --comment zonebench/echo:tcp -s 198.19.16.2/32 -j KUBE-MARK-MASQ\n"
        )));
        assert!(t.contains(&format!(":{sep} - [0:0]\n")));
        // Off-node clients are masqueraded; local pods keep their address.
        assert!(t.contains("--dport 7101 ! -s 198.19.1.0/24 -j KUBE-MARK-MASQ\n"));
    }

    #[test]
    fn services_keep_the_table_order_and_the_nodeports_rule_comes_last() {
        let a = svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101)]);
        let b = svc("zonebench/b:tcp", [198, 18, 128, 2], 7101, &[([198, 19, 0, 2], 7101)]);
        let t = render(&[b, a], CIDR);
        let jumps = lines_with(&t, "-A KUBE-SERVICES");
        assert_eq!(jumps.len(), 3);
        assert!(jumps[0].contains("zonebench/b:tcp"));
        assert!(jumps[1].contains("zonebench/a:tcp"));
        assert!(jumps[2].contains("-j KUBE-NODEPORTS"));
    }

    #[test]
    fn a_service_without_endpoints_is_rejected_in_the_filter_table_and_has_no_nat_chains() {
        let t = render(&[svc("zonebench/empty:tcp", [198, 18, 128, 9], 7101, &[])], CIDR);
        let (filter, nat) = t.split_once("*nat\n").unwrap();
        assert!(filter.contains(
            "-A KUBE-SERVICES -m comment --comment \"zonebench/empty:tcp has no endpoints\" -m tcp -p tcp -d 198.18.128.9/32 --dport 7101 -j REJECT"
        ));
        assert!(!nat.contains("KUBE-SVC-") && !nat.contains("zonebench/empty"));
    }

    #[test]
    fn udp_services_match_udp() {
        let mut s = svc("zonebench/echo:udp", [198, 18, 128, 1], 7102, &[([198, 19, 0, 2], 7102)]);
        s.service.protocol = Protocol::Udp;
        let t = render(&[s], CIDR);
        assert!(t.contains("-m udp -p udp -d 198.18.128.1/32 --dport 7102 -j KUBE-SVC-"));
        assert_eq!(service_chain("zonebench/echo:udp", Protocol::Udp).len(), "KUBE-SVC-".len() + 16);
    }

    #[test]
    fn masquerading_follows_kube_proxy_and_masquerades_local_hairpins() {
        let t = render(&[], CIDR);
        let post = lines_with(&t, "-A KUBE-POSTROUTING");
        assert_eq!(post.len(), 4);
        assert!(
            post[0].starts_with("-A KUBE-POSTROUTING -s 198.19.1.0/24 -d 198.19.1.0/24 -m conntrack --ctstate DNAT")
        );
        assert!(post[0].ends_with("-j MASQUERADE"));
        assert_eq!(post[1], "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
        assert!(t.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
        assert!(
            t.contains("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n")
        );
        assert_eq!(t.matches("COMMIT\n").count(), 2);
    }

    #[test]
    fn the_empty_tables_declare_only_builtin_chains() {
        let t = render_empty();
        assert!(!t.contains("KUBE-") && !t.contains("-A "));
        assert_eq!(t.matches("COMMIT\n").count(), 2);
    }
}
