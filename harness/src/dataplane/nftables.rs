//! kube-proxy's nftables mode, written as kube-proxy writes it and loaded with `nft -f` as
//! one atomic transaction.
//!
//! Layout (table `ip kube-proxy`): the `nat-prerouting`/`nat-output` base chains jump to
//! `services`, whose one rule looks the packet's `daddr . l4proto . dport` up in the verdict
//! map `service-ips` and goes to that Service port's chain `service-<hash>-<ns>/<name>/<proto>/<port>`.
//! That chain marks off-node traffic for masquerade and picks an endpoint with
//! `numgen random mod N vmap { 0 : goto endpoint-…, … }`; each `endpoint-<hash>-…__<ip>/<port>`
//! chain DNATs. Services without endpoints are in `no-endpoint-services`, whose verdict is
//! `goto reject-chain`, checked by the filter base chains for new connections. Names and
//! priorities are kube-proxy's (see [`super::kube_hash`]); the NodePort, firewall and
//! session-affinity parts, which the lab never uses, are left out.
//!
//! A connection costs one hash lookup in `service-ips` whatever the number of Services:
//! what the scaling sweep contrasts with iptables' linear `KUBE-SERVICES`.
//!
//! **Syncs** are kube-proxy's: the first (and the first after a failure) replaces the whole
//! table; later ones are partial, rewriting only the chains and map elements of Service
//! ports that changed and deleting those of Service ports that went, in one transaction.
//! Every sync is given the whole table; what changed is found against the table this
//! dataplane last programmed.
//!
//! **Lab addition.** `masquerading` first masquerades DNATed traffic from a local pod to a
//! local pod, for the reason given in [`super::iptables`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Instant;

use super::tool::Tool;
use super::{
    kube_hash, split_port_name, validate, Dataplane, DataplaneKind, Endpoint, NodeTarget, ServicePort, ServiceRules,
    SyncReport,
};

/// Family and name of kube-proxy's table.
pub const TABLE: &str = "ip kube-proxy";

const NFT: Tool = Tool::new("nft", "nftables");

/// `ns/name/proto/port`: the readable part of kube-proxy's chain names.
fn port_base(p: &ServicePort) -> String {
    let (svc, port) = split_port_name(&p.name);
    format!("{svc}/{}/{port}", p.protocol.as_str())
}

/// kube-proxy's `hashAndTruncate`: 8 characters of the name's own hash, a dash, the name.
fn hashed(name: &str) -> String {
    format!("{}-{name}", &kube_hash(name)[..8])
}

/// The Service port's chain, `service-ULMVA6XW-ns1/svc1/tcp/p80`.
pub fn service_chain(p: &ServicePort) -> String {
    format!("service-{}", hashed(&port_base(p)))
}

/// An endpoint's chain, `endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`.
pub fn endpoint_chain(p: &ServicePort, e: &Endpoint) -> String {
    format!("endpoint-{}", hashed(&format!("{}__{}/{}", port_base(p), e.ip, e.port)))
}

/// The key of a Service port in `service-ips` and `no-endpoint-services`.
fn key(p: &ServicePort) -> String {
    format!("{} . {} . {}", p.vip, p.protocol.as_str(), p.port)
}

/// The table skeleton kube-proxy's `setupNFTables` writes: base chains at kube-proxy's
/// priorities (dstnat -100, srcnat 100, filter at dstnat ∓ 10), the jump chains, the
/// masquerade chains, and the empty sets and maps.
fn render_skeleton(o: &mut String, local: &str) {
    let t = TABLE;
    let _ = writeln!(o, "add table {t} {{ comment \"rules for kube-proxy\" ; }}");
    for (name, kind, hook, prio) in [
        ("filter-input", "filter", "input", -110),
        ("filter-forward", "filter", "forward", -110),
        ("filter-output", "filter", "output", -110),
        ("filter-output-post-dnat", "filter", "output", -90),
        ("nat-prerouting", "nat", "prerouting", -100),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
    ] {
        let _ = writeln!(o, "add chain {t} {name} {{ type {kind} hook {hook} priority {prio} ; }}");
    }
    for c in [
        "service-endpoints-check",
        "cluster-ips-check",
        "services",
        "masquerading",
        "mark-for-masquerade",
        "reject-chain",
    ] {
        let _ = writeln!(o, "add chain {t} {c}");
    }
    for (chain, rule) in [
        ("filter-input", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump service-endpoints-check"),
        ("filter-output", "ct state new jump service-endpoints-check"),
        ("filter-forward", "ct state new jump cluster-ips-check"),
        ("filter-output-post-dnat", "ct state new jump cluster-ips-check"),
        ("nat-output", "jump services"),
        ("nat-prerouting", "jump services"),
        ("nat-postrouting", "jump masquerading"),
        ("mark-for-masquerade", "mark set mark or 0x4000"),
    ] {
        let _ = writeln!(o, "add rule {t} {chain} {rule}");
    }
    let _ = writeln!(
        o,
        "add rule {t} masquerading ip saddr {local} ip daddr {local} ct status dnat masquerade comment \"zonebench lab: hairpin to a local endpoint\""
    );
    for rule in ["mark and 0x4000 == 0 return", "mark set mark xor 0x4000", "masquerade fully-random"] {
        let _ = writeln!(o, "add rule {t} masquerading {rule}");
    }
    let _ = writeln!(o, "add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}");
    let _ = writeln!(
        o,
        "add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
    );
    let _ = writeln!(
        o,
        "add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    );
    let _ = writeln!(o, "add rule {t} reject-chain reject");
    let _ = writeln!(
        o,
        "add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
    );
    let _ = writeln!(
        o,
        "add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    );
    let _ = writeln!(o, "add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips");
}

/// A Service port's chains and rules (endpoint chains first: the vmap refers to them).
/// Chains are added and flushed, so rewriting one that exists replaces its rules.
fn render_service_chains(o: &mut String, s: &ServiceRules, local: &str) {
    let t = TABLE;
    let p = &s.service;
    let proto = p.protocol.as_str();
    let mut targets = Vec::with_capacity(s.endpoints.len());
    for e in &s.endpoints {
        let c = endpoint_chain(p, e);
        let _ = writeln!(o, "add chain {t} {c}\nflush chain {t} {c}");
        let _ = writeln!(o, "add rule {t} {c} ip saddr {} jump mark-for-masquerade", e.ip);
        let _ = writeln!(o, "add rule {t} {c} meta l4proto {proto} dnat to {}:{}", e.ip, e.port);
        targets.push(c);
    }
    let c = service_chain(p);
    let _ = writeln!(o, "add chain {t} {c}\nflush chain {t} {c}");
    let _ = writeln!(
        o,
        "add rule {t} {c} ip daddr {} {proto} dport {} ip saddr != {local} jump mark-for-masquerade",
        p.vip, p.port
    );
    let vmap: Vec<String> = targets.iter().enumerate().map(|(i, e)| format!("{i} : goto {e}")).collect();
    let _ = writeln!(o, "add rule {t} {c} numgen random mod {} vmap {{ {} }}", targets.len(), vmap.join(" , "));
}

/// The map element routing a Service port: to its chain, or to `reject-chain` when it has
/// no endpoints.
fn render_element(o: &mut String, s: &ServiceRules) {
    let t = TABLE;
    let p = &s.service;
    if s.endpoints.is_empty() {
        let _ = writeln!(
            o,
            "add element {t} no-endpoint-services {{ {} comment \"{}\" : goto reject-chain }}",
            key(p),
            p.name
        );
    } else {
        let _ = writeln!(o, "add element {t} service-ips {{ {} : goto {} }}", key(p), service_chain(p));
    }
}

fn render_unroute(o: &mut String, s: &ServiceRules) {
    let map = if s.endpoints.is_empty() { "no-endpoint-services" } else { "service-ips" };
    let _ = writeln!(o, "delete element {TABLE} {map} {{ {} }}", key(&s.service));
}

fn drop_chain(o: &mut String, c: &str) {
    let _ = writeln!(o, "flush chain {TABLE} {c}\ndelete chain {TABLE} {c}");
}

/// A whole-table sync: the table is created if absent, deleted and created again, all in
/// one transaction, so the kernel never shows a half-written table.
pub fn render_full(services: &[ServiceRules], pod_cidr: (Ipv4Addr, u8)) -> String {
    let local = format!("{}/{}", pod_cidr.0, pod_cidr.1);
    let mut o = String::with_capacity(2048 + services.len() * 1200);
    let _ = writeln!(o, "add table {TABLE}\ndelete table {TABLE}");
    render_skeleton(&mut o, &local);
    let vips: BTreeSet<Ipv4Addr> = services.iter().map(|s| s.service.vip).collect();
    for v in vips {
        let _ = writeln!(o, "add element {TABLE} cluster-ips {{ {v} }}");
    }
    for s in services {
        if !s.endpoints.is_empty() {
            render_service_chains(&mut o, s, &local);
        }
        render_element(&mut o, s);
    }
    o
}

/// A partial sync from the table `old` (as last programmed, by port name) to `new`: only
/// Service ports that changed are rewritten; those that went lose their elements and chains.
/// Returns an empty string when nothing changed.
pub fn render_update(old: &BTreeMap<String, ServiceRules>, new: &[ServiceRules], pod_cidr: (Ipv4Addr, u8)) -> String {
    let local = format!("{}/{}", pod_cidr.0, pod_cidr.1);
    let t = TABLE;
    let mut o = String::new();
    let new_by_name: BTreeMap<&str, &ServiceRules> = new.iter().map(|s| (s.service.name.as_str(), s)).collect();
    // 1. Map elements that no longer route the same way.
    for (name, was) in old {
        let now = new_by_name.get(name.as_str());
        let same_route = now.is_some_and(|n| {
            key(&n.service) == key(&was.service)
                && n.endpoints.is_empty() == was.endpoints.is_empty()
                && service_chain(&n.service) == service_chain(&was.service)
        });
        if !same_route {
            render_unroute(&mut o, was);
        }
    }
    let old_vips: BTreeSet<Ipv4Addr> = old.values().map(|s| s.service.vip).collect();
    let new_vips: BTreeSet<Ipv4Addr> = new.iter().map(|s| s.service.vip).collect();
    for v in old_vips.difference(&new_vips) {
        let _ = writeln!(o, "delete element {t} cluster-ips {{ {v} }}");
    }
    for v in new_vips.difference(&old_vips) {
        let _ = writeln!(o, "add element {t} cluster-ips {{ {v} }}");
    }
    // 2. New and changed Service ports: chains rewritten, elements added where missing.
    for s in new {
        let was = old.get(&s.service.name);
        if was == Some(s) {
            continue;
        }
        if !s.endpoints.is_empty() {
            render_service_chains(&mut o, s, &local);
        }
        let routed = was.is_some_and(|w| {
            key(&w.service) == key(&s.service)
                && w.endpoints.is_empty() == s.endpoints.is_empty()
                && service_chain(&w.service) == service_chain(&s.service)
        });
        if !routed {
            render_element(&mut o, s);
        }
    }
    // 3. Chains nothing refers to any more, now that the rules and elements that did are gone.
    let mut live: BTreeSet<String> = BTreeSet::new();
    for s in new.iter().filter(|s| !s.endpoints.is_empty()) {
        live.insert(service_chain(&s.service));
        live.extend(s.endpoints.iter().map(|e| endpoint_chain(&s.service, e)));
    }
    for was in old.values().filter(|w| new_by_name.get(w.service.name.as_str()) != Some(w)) {
        if was.endpoints.is_empty() {
            continue;
        }
        // Endpoint chains before the service chain would leave its vmap dangling within
        // the transaction; the service chain goes first.
        let svc = service_chain(&was.service);
        if !live.contains(&svc) {
            drop_chain(&mut o, &svc);
        }
        for e in &was.endpoints {
            let c = endpoint_chain(&was.service, e);
            if !live.contains(&c) {
                drop_chain(&mut o, &c);
            }
        }
    }
    o
}

/// One node's kube-proxy-style nftables table.
pub struct NftablesDataplane {
    netns: String,
    pod_cidr: (Ipv4Addr, u8),
    /// What the kernel holds after the last successful sync; `None` when unknown (never
    /// synced, torn down, or a sync failed), which makes the next sync a full one.
    programmed: Option<BTreeMap<String, ServiceRules>>,
}

impl NftablesDataplane {
    /// Checks `nft` is installed; programs nothing yet.
    pub fn open(node: &NodeTarget) -> anyhow::Result<NftablesDataplane> {
        NFT.require()?;
        Ok(NftablesDataplane { netns: node.netns.clone(), pod_cidr: node.pod_cidr, programmed: None })
    }

    fn load(&self, transaction: &str) -> anyhow::Result<()> {
        NFT.run(&self.netns, &["-f", "-"], Some(transaction.as_bytes()))?;
        Ok(())
    }

    fn table_exists(&self) -> anyhow::Result<bool> {
        let tables = NFT.run(&self.netns, &["list", "tables"], None)?;
        Ok(tables.lines().any(|l| l.trim() == format!("table {TABLE}")))
    }
}

impl Dataplane for NftablesDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Nftables
    }

    fn sync(&mut self, services: &[ServiceRules]) -> anyhow::Result<SyncReport> {
        validate(services)?;
        let start = Instant::now();
        let transaction = match self.programmed.take() {
            Some(old) => render_update(&old, services, self.pod_cidr),
            None => render_full(services, self.pod_cidr),
        };
        if !transaction.is_empty() {
            // On failure `programmed` stays None: the next sync starts over with a full one.
            self.load(&transaction)?;
        }
        let elapsed = start.elapsed();
        self.programmed = Some(services.iter().map(|s| (s.service.name.clone(), s.clone())).collect());
        Ok(SyncReport { rules: self.rule_count()?, elapsed })
    }

    /// The rules of the kube-proxy table, counted as the node inspector counts a real
    /// kube-proxy's (each rule has a handle; tables, chains, sets and maps, and map elements,
    /// are no rules), so the emulation's figure and the real one can be set side by side.
    fn rule_count(&self) -> anyhow::Result<u64> {
        if !self.table_exists()? {
            return Ok(0);
        }
        let listing = NFT.run(&self.netns, &["-a", "list", "table", "ip", "kube-proxy"], None)?;
        Ok(count_rules(&listing))
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        self.programmed = None;
        if self.table_exists()? {
            NFT.run(&self.netns, &["delete", "table", "ip", "kube-proxy"], None)?;
        }
        Ok(())
    }
}

/// Rules in an `nft -a list` listing: lines with a handle that declare no table, chain,
/// set, map or flowtable (the node inspector's `count_nft`).
pub fn count_rules(listing: &str) -> u64 {
    const DECLARATIONS: [&str; 5] = ["table ", "chain ", "set ", "map ", "flowtable "];
    listing
        .lines()
        .map(str::trim_start)
        .filter(|l| l.contains("# handle") && !DECLARATIONS.iter().any(|d| l.starts_with(d)))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::super::test_support::svc;
    use super::super::Protocol;
    use super::*;

    #[test]
    fn rules_are_counted_as_the_node_inspector_counts_them() {
        let listing = "table ip kube-proxy { # handle 5
\tcomment \"rules for kube-proxy\"
\tmap service-ips { # handle 12
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 198.18.128.1 . tcp . 443 : goto service-x }
\t}
\tchain services { # handle 20
\t\tip daddr . meta l4proto . th dport vmap @service-ips # handle 21
\t}
\tchain service-x { # handle 22
\t\tip saddr != 198.19.0.0/16 jump mark-for-masquerade # handle 23
\t\tnumgen random mod 2 vmap { 0 : goto endpoint-a, 1 : goto endpoint-b } # handle 24
\t}
}
";
        assert_eq!(count_rules(listing), 3, "map elements, chains and the table are no rules");
    }

    const CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 1, 0), 24);

    fn by_name(services: &[ServiceRules]) -> BTreeMap<String, ServiceRules> {
        services.iter().map(|s| (s.service.name.clone(), s.clone())).collect()
    }

    #[test]
    fn chains_are_named_as_kube_proxy_names_them() {
        let s = svc("ns1/svc1:p80", [172, 30, 0, 41], 80, &[([10, 180, 0, 1], 80)]);
        assert_eq!(service_chain(&s.service), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(endpoint_chain(&s.service, &s.endpoints[0]), "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
    }

    #[test]
    fn a_full_sync_replaces_the_table_and_routes_each_port_through_the_verdict_map() {
        let eps = [([198, 19, 0, 2], 7101), ([198, 19, 0, 3], 7101)];
        let s = svc("zonebench/echo:tcp", [198, 18, 128, 1], 7101, &eps);
        let t = render_full(std::slice::from_ref(&s), CIDR);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "add table ip kube-proxy",
                "delete table ip kube-proxy",
                "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }"
            ]
        );
        let sc = service_chain(&s.service);
        let e0 = endpoint_chain(&s.service, &s.endpoints[0]);
        let e1 = endpoint_chain(&s.service, &s.endpoints[1]);
        assert!(t.contains("add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n"));
        assert!(t.contains("add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n"));
        assert!(
            t.contains(&format!("add element ip kube-proxy service-ips {{ 198.18.128.1 . tcp . 7101 : goto {sc} }}\n"))
        );
        assert!(t.contains(&format!(
            "add rule ip kube-proxy {sc} numgen random mod 2 vmap {{ 0 : goto {e0} , 1 : goto {e1} }}\n"
        )));
        assert!(t.contains(&format!(
            "add rule ip kube-proxy {sc} ip daddr 198.18.128.1 tcp dport 7101 ip saddr != 198.19.1.0/24 jump mark-for-masquerade\n"
        )));
        assert!(t.contains(&format!("add rule ip kube-proxy {e1} meta l4proto tcp dnat to 198.19.0.3:7101\n")));
        assert!(t.contains(&format!("add rule ip kube-proxy {e1} ip saddr 198.19.0.3 jump mark-for-masquerade\n")));
        assert!(t.contains("add element ip kube-proxy cluster-ips { 198.18.128.1 }\n"));
        // Endpoint chains exist before the rule that refers to them.
        let at = |needle: &str| t.find(needle).unwrap();
        assert!(at(&format!("add chain ip kube-proxy {e1}")) < at("numgen random"));
        assert!(at("numgen random") < at("add element ip kube-proxy service-ips"));
    }

    #[test]
    fn a_port_without_endpoints_goes_to_the_reject_chain() {
        let mut s = svc("zonebench/empty:udp", [198, 18, 128, 7], 7102, &[]);
        s.service.protocol = Protocol::Udp;
        let t = render_full(&[s], CIDR);
        assert!(t.contains(
            "add element ip kube-proxy no-endpoint-services { 198.18.128.7 . udp . 7102 comment \"zonebench/empty:udp\" : goto reject-chain }\n"
        ));
        assert!(!t.contains("numgen") && !t.contains("dnat to"), "no chains for a port without endpoints:\n{t}");
    }

    #[test]
    fn an_unchanged_table_needs_no_transaction() {
        let s = [svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101)])];
        assert_eq!(render_update(&by_name(&s), &s, CIDR), "");
    }

    #[test]
    fn a_new_service_adds_only_its_own_chains_and_element() {
        let a = svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101)]);
        let b = svc("zonebench/b:tcp", [198, 18, 128, 2], 7101, &[([198, 19, 0, 2], 7101)]);
        let t = render_update(&by_name(std::slice::from_ref(&a)), &[a.clone(), b.clone()], CIDR);
        assert!(!t.contains("zonebench/a"), "unchanged a is not touched:\n{t}");
        assert!(t.contains(&format!("add chain ip kube-proxy {}\n", service_chain(&b.service))));
        assert!(t.contains("add element ip kube-proxy service-ips { 198.18.128.2 . tcp . 7101 : goto service-"));
        assert!(t.contains("add element ip kube-proxy cluster-ips { 198.18.128.2 }\n"));
        assert!(!t.contains("delete"), "{t}");
    }

    #[test]
    fn a_removed_service_loses_its_element_before_its_chains() {
        let a = svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101)]);
        let t = render_update(&by_name(std::slice::from_ref(&a)), &[], CIDR);
        let sc = service_chain(&a.service);
        let ec = endpoint_chain(&a.service, &a.endpoints[0]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "delete element ip kube-proxy service-ips { 198.18.128.1 . tcp . 7101 }".to_string(),
                "delete element ip kube-proxy cluster-ips { 198.18.128.1 }".to_string(),
                format!("flush chain ip kube-proxy {sc}"),
                format!("delete chain ip kube-proxy {sc}"),
                format!("flush chain ip kube-proxy {ec}"),
                format!("delete chain ip kube-proxy {ec}"),
            ]
        );
    }

    #[test]
    fn changing_endpoints_rewrites_the_service_chain_and_drops_stale_endpoint_chains() {
        let before =
            svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101), ([198, 19, 0, 3], 7101)]);
        let after = svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 3], 7101)]);
        let t = render_update(&by_name(std::slice::from_ref(&before)), std::slice::from_ref(&after), CIDR);
        let gone = endpoint_chain(&before.service, &before.endpoints[0]);
        let kept = endpoint_chain(&after.service, &after.endpoints[0]);
        assert!(t.contains(&format!("flush chain ip kube-proxy {}\n", service_chain(&after.service))));
        assert!(t.contains(&format!("numgen random mod 1 vmap {{ 0 : goto {kept} }}")));
        assert!(t.contains(&format!("delete chain ip kube-proxy {gone}\n")));
        assert!(!t.contains(&format!("delete chain ip kube-proxy {kept}")));
        assert!(!t.contains("element"), "the map element still routes to the same chain:\n{t}");
    }

    #[test]
    fn losing_every_endpoint_moves_the_port_to_the_reject_map() {
        let before = svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[([198, 19, 0, 2], 7101)]);
        let after = svc("zonebench/a:tcp", [198, 18, 128, 1], 7101, &[]);
        let t = render_update(&by_name(std::slice::from_ref(&before)), std::slice::from_ref(&after), CIDR);
        assert!(t.contains("delete element ip kube-proxy service-ips { 198.18.128.1 . tcp . 7101 }\n"));
        assert!(t.contains("add element ip kube-proxy no-endpoint-services { 198.18.128.1 . tcp . 7101"));
        assert!(t.contains(&format!("delete chain ip kube-proxy {}\n", service_chain(&before.service))));
    }
}
