//! The lab's addressing plan and build steps, computed without touching the system so they
//! can be unit-tested: names of namespaces and interfaces, underlay and pod addresses, and the
//! exact `ip`/`tc`/`bridge`/`sysctl` commands that build each piece.
//!
//! Addresses come from 198.18.0.0/15, the range RFC 2544 reserves for network benchmarks, so
//! they cannot be mistaken for anything real (and the lab never routes them outside its own
//! namespaces anyway):
//! - zone `i` underlay: `198.18.i.0/24`, gateway (the router's bridge) `.1`, node `n` at `.10+n`;
//! - pods: `198.19.0.0/16`; zone `i` owns `198.19.16i.0/20`, its node `n` `198.19.(16i+n).0/24`
//!   (`.0` is the node's VXLAN endpoint, `.1` its pod bridge, pods from `.2`).
//!
//! Names: everything starts with the lab id `zb<4 hex>` followed by `-`, so leftovers are
//! recognisable; interface names stay within the kernel's 15 characters.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::model::Routing;
use crate::scenario::LabConfig;

/// Underlay (veth) MTU.
pub const UNDERLAY_MTU: u32 = 1500;
/// VXLAN over IPv4 costs 50 bytes: outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Fixed VNI and port, as flannel uses.
pub const VXLAN_ID: u32 = 1;
pub const VXLAN_PORT: u16 = 4789;
/// Policy routing table that sends inter-zone packets through the delay TUN.
pub const DELAY_TABLE: u32 = 100;
/// Most pods one node can hold (`.2` to `.254`).
pub const MAX_PODS_PER_NODE: u32 = 253;

/// A lab id: `zb` and four lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabId(String);

impl LabId {
    pub fn parse(s: &str) -> Result<LabId, String> {
        let ok = s.len() == 6
            && s.starts_with("zb")
            && s[2..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if ok {
            Ok(LabId(s.to_string()))
        } else {
            Err(format!("invalid lab id {s:?}: expected zb and 4 lowercase hex digits, e.g. zb3f2a"))
        }
    }

    /// Builds an id from 16 random bits.
    pub fn from_bits(bits: u16) -> LabId {
        LabId(format!("zb{bits:04x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The prefix of every namespace and interface of this lab (`zb3f2a-`).
    pub fn prefix(&self) -> String {
        format!("{}-", self.0)
    }

    /// The lab id a namespace name belongs to, if it has the lab naming shape.
    pub fn of_name(name: &str) -> Option<LabId> {
        let (id, rest) = name.split_at_checked(6)?;
        if !rest.starts_with('-') {
            return None;
        }
        LabId::parse(id).ok()
    }
}

impl fmt::Display for LabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub const fn new(addr: Ipv4Addr, len: u8) -> Cidr {
        Cidr { addr, len }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
        (u32::from(ip) & mask) == (u32::from(self.addr) & mask)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Every pod address of every lab lives here (the agents' `--allow-cidr`).
pub const POD_SUPERNET: Cidr = Cidr::new(Ipv4Addr::new(198, 19, 0, 0), 16);
/// Every underlay address.
pub const UNDERLAY_SUPERNET: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 16);

#[derive(Debug, Clone, PartialEq)]
pub struct ZonePlan {
    pub name: String,
    pub index: u8,
    pub subnet: Cidr,
    pub gateway: Ipv4Addr,
    /// The zone's bridge in the router namespace.
    pub bridge: String,
    /// All pod CIDRs of the zone's nodes.
    pub pod_block: Cidr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// `a-1`, `a-2`, …
    pub name: String,
    pub zone: String,
    pub zone_index: u8,
    /// 0-based index within its zone.
    pub index: u8,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    /// The node's underlay interface (in the node namespace).
    pub uplink: String,
    /// The other end of the uplink, a port of the zone bridge in the router namespace.
    pub router_port: String,
    pub pod_cidr: Cidr,
    /// The pod bridge's address: the pods' default gateway.
    pub pod_gateway: Ipv4Addr,
    pub pod_bridge: String,
    pub vxlan_dev: String,
    /// The VXLAN device's address (`.0` of the pod CIDR, as flannel does).
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    pub agent_id: String,
    pub node: String,
    pub zone: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The pod's interface (in the pod namespace).
    pub ifname: String,
    /// Its peer, a port of the node's pod bridge.
    pub host_ifname: String,
}

/// One command of the build: `program` (`ip`, `tc`, `bridge` or `sysctl`) run in `netns`
/// (`None` only for `ip netns add/del`, which act on the host's namespace list, and for a
/// Kubernetes lab's host link, [`HostLinkPlan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: &'static str,
    pub netns: Option<String>,
    pub args: Vec<String>,
}

impl Cmd {
    fn new(program: &'static str, netns: Option<&str>, args: &[&str]) -> Cmd {
        Cmd { program, netns: netns.map(str::to_string), args: args.iter().map(|s| s.to_string()).collect() }
    }

    fn ip(netns: &str, args: &[&str]) -> Cmd {
        Cmd::new("ip", Some(netns), args)
    }

    /// The full argv, with the namespace selected the way each tool supports.
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![];
        match (&self.netns, self.program) {
            (None, p) => v.push(p.to_string()),
            (Some(ns), "sysctl") => {
                v.extend(["ip", "netns", "exec", ns.as_str(), "sysctl"].map(String::from));
            }
            (Some(ns), p) => v.extend([p, "-n", ns.as_str()].map(String::from)),
        }
        v.extend(self.args.iter().cloned());
        v
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.argv().join(" "))
    }
}

/// The whole lab, derived from a validated [`LabConfig`] and an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub id: LabId,
    pub routing: Routing,
    pub zones: Vec<ZonePlan>,
    pub nodes: Vec<NodePlan>,
    pub router_netns: String,
    pub tun: String,
    pub underlay_mtu: u32,
    pub pod_mtu: u32,
    pub rate_bps: Option<u64>,
    pub delay: Option<Duration>,
    /// The Kubernetes lab's control-plane namespace (`lab.kubernetes`).
    pub control_plane: Option<ControlPlanePlan>,
    /// The Kubernetes lab's link from the host's namespace into the router (`lab.kubernetes`).
    pub host_link: Option<HostLinkPlan>,
}

/// The one thing a Kubernetes lab puts in the host's namespace: a veth into the router and a
/// route to the pod supernet through it, so a coordinator on the host reaches agents at
/// their pod IPs, as one inside a cluster does (the lab's node agents have no port-forward).
/// The router routes pod CIDRs for packets from this link only (its table
/// [`HOST_LINK_TABLE`]): pod-to-pod traffic keeps the routes of the lab's routing mode, so
/// VXLAN modes still fail loudly on unencapsulated cross-zone pod traffic. Removing the
/// router namespace removes the veth, and with it the host's route.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLinkPlan {
    /// The veth's end in the host's namespace, holding [`HOST_LINK_SUBNET`]`.1`.
    pub host_if: String,
    /// Its end in the router, holding `.2`.
    pub router_if: String,
    pub host_ip: Ipv4Addr,
    pub router_ip: Ipv4Addr,
}

/// The host link's subnet: beside the control plane's, below the Service range.
pub const HOST_LINK_SUBNET: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 101, 0), 30);
/// The router's routing table for packets from the host link.
pub const HOST_LINK_TABLE: u32 = 101;

/// The control-plane namespace: on its own subnet behind the router, as a zone of one
/// host, so every node reaches the apiserver through the router like any other address.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlanePlan {
    pub netns: String,
    pub subnet: Cidr,
    /// The router's side of the link.
    pub gateway: Ipv4Addr,
    /// The apiserver's address.
    pub ip: Ipv4Addr,
    /// The veth: `uplink` in the namespace, `router_port` in the router.
    pub uplink: String,
    pub router_port: String,
}

/// The control plane's subnet: below the Service range (198.18.128.0/17), above the zones.
pub const CONTROL_PLANE_SUBNET: Cidr = Cidr::new(Ipv4Addr::new(198, 18, 100, 0), 24);

impl Plan {
    pub fn new(id: LabId, config: &LabConfig) -> Result<Plan, String> {
        config.validate().map_err(|(field, msg)| format!("{field}: {msg}"))?;
        let rate_bps = match &config.inter_zone_rate {
            Some(r) => Some(zonebench_agent::units::parse_rate_bps(r)?),
            None => None,
        };
        let delay = match &config.inter_zone_delay {
            Some(d) => Some(zonebench_agent::units::parse_duration(d)?).filter(|d| !d.is_zero()),
            None => None,
        };
        if rate_bps == Some(0) {
            return Err("lab.inter_zone_rate: must be above 0 (leave it out for an unshaped link)".into());
        }
        let p = id.prefix();
        let mut zones = vec![];
        let mut nodes = vec![];
        for (zi, zname) in config.zones.iter().enumerate() {
            // validate() caps zones and nodes at 16, so the indices fit the address plan.
            let zi = zi as u8;
            zones.push(ZonePlan {
                name: zname.clone(),
                index: zi,
                subnet: Cidr::new(Ipv4Addr::new(198, 18, zi, 0), 24),
                gateway: Ipv4Addr::new(198, 18, zi, 1),
                bridge: format!("{p}br{zi}"),
                pod_block: Cidr::new(Ipv4Addr::new(198, 19, zi * 16, 0), 20),
            });
            for n in 0..config.nodes_per_zone as u8 {
                let name = format!("{zname}-{}", n + 1);
                let third = zi * 16 + n;
                nodes.push(NodePlan {
                    netns: format!("{p}{name}"),
                    name,
                    zone: zname.clone(),
                    zone_index: zi,
                    index: n,
                    underlay_ip: Ipv4Addr::new(198, 18, zi, 10 + n),
                    uplink: format!("{p}up"),
                    router_port: format!("{p}z{zi}n{n}"),
                    pod_cidr: Cidr::new(Ipv4Addr::new(198, 19, third, 0), 24),
                    pod_gateway: Ipv4Addr::new(198, 19, third, 1),
                    pod_bridge: format!("{p}cni"),
                    vxlan_dev: format!("{p}vx"),
                    vtep_ip: Ipv4Addr::new(198, 19, third, 0),
                    // Locally administered unicast, unique per node within the lab.
                    vtep_mac: [0x02, 0x5a, 0x62, zi, n, 0x01],
                });
            }
        }
        let pod_mtu = match config.routing {
            Routing::Native => UNDERLAY_MTU,
            Routing::Vxlan | Routing::VxlanCrosssubnet => UNDERLAY_MTU - VXLAN_OVERHEAD,
        };
        Ok(Plan {
            router_netns: format!("{p}router"),
            tun: format!("{p}dly"),
            id,
            routing: config.routing,
            zones,
            nodes,
            underlay_mtu: UNDERLAY_MTU,
            pod_mtu,
            rate_bps,
            delay,
            control_plane: config.kubernetes.then(|| ControlPlanePlan {
                netns: format!("{p}cp"),
                subnet: CONTROL_PLANE_SUBNET,
                gateway: Ipv4Addr::new(198, 18, 100, 1),
                ip: Ipv4Addr::new(198, 18, 100, 10),
                uplink: format!("{p}up"),
                router_port: format!("{p}cp"),
            }),
            host_link: config.kubernetes.then(|| HostLinkPlan {
                host_if: format!("{p}host"),
                router_if: format!("{p}hostr"),
                host_ip: Ipv4Addr::new(198, 18, 101, 1),
                router_ip: Ipv4Addr::new(198, 18, 101, 2),
            }),
        })
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every namespace the base lab (without pods) has: the router first, then the nodes.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.router_netns.clone()];
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v.extend(self.control_plane.iter().map(|c| c.netns.clone()));
        v
    }

    /// Whether `from` reaches `to`'s pods through the VXLAN device.
    pub fn encapsulates(&self, from: &NodePlan, to: &NodePlan) -> bool {
        match self.routing {
            Routing::Native => false,
            Routing::Vxlan => from.name != to.name,
            Routing::VxlanCrosssubnet => from.zone_index != to.zone_index,
        }
    }

    /// The commands that build the lab, in order: namespaces, the router and its zone
    /// bridges, each node, pod routing, inter-zone shaping and the delay TUN. The delay
    /// forwarder itself is a process and is started after these.
    pub fn build_commands(&self) -> Vec<Cmd> {
        let mut c = vec![];
        for ns in self.namespaces() {
            c.push(Cmd::new("ip", None, &["netns", "add", &ns]));
            c.push(sysctls(&ns));
            c.push(Cmd::ip(&ns, &["link", "set", "lo", "up"]));
        }
        let r = self.router_netns.as_str();
        for z in &self.zones {
            let gw = format!("{}/{}", z.gateway, z.subnet.len);
            c.push(Cmd::ip(r, &["link", "add", &z.bridge, "type", "bridge"]));
            c.push(Cmd::ip(r, &["addr", "add", &gw, "dev", &z.bridge]));
            c.push(Cmd::ip(r, &["link", "set", &z.bridge, "up"]));
        }
        for n in &self.nodes {
            c.extend(self.node_commands(n));
        }
        for n in &self.nodes {
            c.extend(self.pod_route_commands(n));
        }
        if let Some(cp) = &self.control_plane {
            c.extend(self.control_plane_commands(cp));
        }
        if let Some(h) = &self.host_link {
            c.extend(self.host_link_commands(h));
        }
        c.extend(self.router_route_commands());
        c.extend(self.shaping_commands());
        c.extend(self.delay_commands());
        c
    }

    fn node_commands(&self, n: &NodePlan) -> Vec<Cmd> {
        let ns = n.netns.as_str();
        let r = self.router_netns.as_str();
        let zone = &self.zones[n.zone_index as usize];
        let mtu = self.underlay_mtu.to_string();
        let pod_mtu = self.pod_mtu.to_string();
        let underlay = format!("{}/{}", n.underlay_ip, zone.subnet.len);
        let gw_addr = format!("{}/{}", n.pod_gateway, n.pod_cidr.len);
        let gw = zone.gateway.to_string();
        #[rustfmt::skip]
        let mut c = vec![
            Cmd::ip(ns, &["link", "add", &n.uplink, "mtu", &mtu, "type", "veth", "peer", "name", &n.router_port,
                "mtu", &mtu, "netns", r]),
            Cmd::ip(ns, &["addr", "add", &underlay, "dev", &n.uplink]),
            Cmd::ip(ns, &["link", "set", &n.uplink, "up"]),
            Cmd::ip(r, &["link", "set", &n.router_port, "master", &zone.bridge, "up"]),
            Cmd::ip(ns, &["route", "add", "default", "via", &gw, "dev", &n.uplink]),
            Cmd::ip(ns, &["link", "add", &n.pod_bridge, "mtu", &pod_mtu, "type", "bridge"]),
            Cmd::ip(ns, &["addr", "add", &gw_addr, "dev", &n.pod_bridge]),
            Cmd::ip(ns, &["link", "set", &n.pod_bridge, "up"]),
        ];
        if self.routing != Routing::Native {
            let vni = VXLAN_ID.to_string();
            let port = VXLAN_PORT.to_string();
            let local = n.underlay_ip.to_string();
            let vtep = format!("{}/32", n.vtep_ip);
            #[rustfmt::skip]
            c.extend([
                Cmd::ip(ns, &["link", "add", &n.vxlan_dev, "mtu", &pod_mtu, "address", &mac(n.vtep_mac), "type", "vxlan",
                    "id", &vni, "local", &local, "dev", &n.uplink, "dstport", &port, "nolearning"]),
                Cmd::ip(ns, &["addr", "add", &vtep, "dev", &n.vxlan_dev]),
                Cmd::ip(ns, &["link", "set", &n.vxlan_dev, "up"]),
            ]);
        }
        c
    }

    /// The control plane's link to the router and its default route back through it.
    fn control_plane_commands(&self, cp: &ControlPlanePlan) -> Vec<Cmd> {
        let (ns, r) = (cp.netns.as_str(), self.router_netns.as_str());
        let mtu = self.underlay_mtu.to_string();
        let gw = format!("{}/{}", cp.gateway, cp.subnet.len);
        let addr = format!("{}/{}", cp.ip, cp.subnet.len);
        let via = cp.gateway.to_string();
        #[rustfmt::skip]
        let c = vec![
            Cmd::ip(ns, &["link", "add", &cp.uplink, "mtu", &mtu, "type", "veth", "peer", "name", &cp.router_port,
                "mtu", &mtu, "netns", r]),
            Cmd::ip(ns, &["addr", "add", &addr, "dev", &cp.uplink]),
            Cmd::ip(ns, &["link", "set", &cp.uplink, "up"]),
            Cmd::ip(r, &["addr", "add", &gw, "dev", &cp.router_port]),
            Cmd::ip(r, &["link", "set", &cp.router_port, "up"]),
            Cmd::ip(ns, &["route", "add", "default", "via", &via, "dev", &cp.uplink]),
        ];
        c
    }

    /// The host link (see [`HostLinkPlan`]): the only commands run in the host's namespace
    /// besides `ip netns add`.
    fn host_link_commands(&self, h: &HostLinkPlan) -> Vec<Cmd> {
        let r = self.router_netns.as_str();
        let len = HOST_LINK_SUBNET.len;
        let (host_addr, router_addr) = (format!("{}/{len}", h.host_ip), format!("{}/{len}", h.router_ip));
        let table = HOST_LINK_TABLE.to_string();
        let (via, supernet) = (h.router_ip.to_string(), POD_SUPERNET.to_string());
        #[rustfmt::skip]
        let mut c = vec![
            Cmd::new("ip", None, &["link", "add", &h.host_if, "type", "veth", "peer", "name", &h.router_if, "netns", r]),
            Cmd::new("ip", None, &["addr", "add", &host_addr, "dev", &h.host_if]),
            Cmd::new("ip", None, &["link", "set", &h.host_if, "up"]),
            Cmd::ip(r, &["addr", "add", &router_addr, "dev", &h.router_if]),
            Cmd::ip(r, &["link", "set", &h.router_if, "up"]),
            Cmd::ip(r, &["rule", "add", "iif", &h.router_if, "lookup", &table, "pref", "90"]),
        ];
        for n in &self.nodes {
            let (dst, via) = (n.pod_cidr.to_string(), n.underlay_ip.to_string());
            c.push(Cmd::ip(r, &["route", "add", &dst, "via", &via, "table", &table]));
        }
        c.push(Cmd::new("ip", None, &["route", "add", &supernet, "via", &via, "dev", &h.host_if]));
        c
    }

    /// Routes from `n` to every other node's pod CIDR: directly via the peer's underlay IP
    /// within a zone (native), through the VXLAN device where the mode encapsulates, and by
    /// the default route (the router) otherwise.
    fn pod_route_commands(&self, n: &NodePlan) -> Vec<Cmd> {
        let ns = n.netns.as_str();
        let mut c = vec![];
        for m in self.nodes.iter().filter(|m| m.name != n.name) {
            let dst = m.pod_cidr.to_string();
            if self.encapsulates(n, m) {
                let vtep = m.vtep_ip.to_string();
                let mac = mac(m.vtep_mac);
                let under = m.underlay_ip.to_string();
                #[rustfmt::skip]
                c.extend([
                    Cmd::ip(ns, &["neigh", "add", &vtep, "lladdr", &mac, "dev", &n.vxlan_dev, "nud", "permanent"]),
                    Cmd::new("bridge", Some(ns), &["fdb", "append", &mac, "dev", &n.vxlan_dev, "dst", &under]),
                    Cmd::ip(ns, &["route", "add", &dst, "via", &vtep, "dev", &n.vxlan_dev, "onlink"]),
                ]);
            } else if m.zone_index == n.zone_index {
                let via = m.underlay_ip.to_string();
                c.push(Cmd::ip(ns, &["route", "add", &dst, "via", &via, "dev", &n.uplink]));
            }
        }
        c
    }

    /// Native routing needs the router to know every pod CIDR; VXLAN modes must not give it
    /// any, so cross-zone pod traffic that escaped encapsulation would fail loudly.
    fn router_route_commands(&self) -> Vec<Cmd> {
        if self.routing != Routing::Native {
            return vec![];
        }
        let r = self.router_netns.as_str();
        self.nodes
            .iter()
            .map(|n| {
                let dst = n.pod_cidr.to_string();
                let via = n.underlay_ip.to_string();
                Cmd::ip(r, &["route", "add", &dst, "via", &via])
            })
            .collect()
    }

    /// Each directed zone pair is its own link of `rate_bps`: an HTB class per source zone on
    /// the destination zone's bridge (whose egress sees only routed, i.e. inter-zone, traffic:
    /// same-zone frames are bridged port to port). Packets match by source prefix, underlay
    /// or pod, so VXLAN and native traffic are both shaped.
    pub fn shaping_commands(&self) -> Vec<Cmd> {
        let Some(rate) = self.rate_bps else { return vec![] };
        let r = self.router_netns.as_str();
        let rate_s = format!("{rate}bit");
        // HTB needs a burst of at least one GSO packet and about a millisecond of traffic,
        // or it cannot reach its rate at high speeds.
        let burst = (rate / 8 / 1000).max(128 * 1024).to_string();
        let mut c = vec![];
        for dst in &self.zones {
            let dev = dst.bridge.as_str();
            c.push(Cmd::new("tc", Some(r), &["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb"]));
            for src in self.zones.iter().filter(|z| z.index != dst.index) {
                let minor = 0x10 + u32::from(src.index);
                let class = format!("1:{minor:x}");
                let leaf = format!("{minor:x}:");
                #[rustfmt::skip]
                c.extend([
                    Cmd::new("tc", Some(r), &["class", "add", "dev", dev, "parent", "1:", "classid", &class, "htb",
                        "rate", &rate_s, "ceil", &rate_s, "burst", &burst, "cburst", &burst, "quantum", "65536"]),
                    // The bridge's txqueuelen is 0, which would give HTB's default leaf a
                    // one-packet queue.
                    Cmd::new("tc", Some(r), &["qdisc", "add", "dev", dev, "parent", &class, "handle", &leaf,
                        "pfifo", "limit", "1000"]),
                ]);
                for prefix in [src.subnet, src.pod_block] {
                    let p = prefix.to_string();
                    #[rustfmt::skip]
                    c.push(Cmd::new("tc", Some(r), &["filter", "add", "dev", dev, "parent", "1:", "protocol", "ip",
                        "prio", "1", "u32", "match", "ip", "src", &p, "flowid", &class]));
                }
            }
        }
        c
    }

    /// The delay path: a persistent TUN in the router and a rule per zone bridge that sends
    /// every packet routed in from a zone to it (table [`DELAY_TABLE`]); what the forwarder
    /// writes back enters from the TUN and takes the main table to its zone. Packets to the
    /// router itself still hit the local table first.
    pub fn delay_commands(&self) -> Vec<Cmd> {
        if self.delay.is_none() {
            return vec![];
        }
        let r = self.router_netns.as_str();
        let table = DELAY_TABLE.to_string();
        let mtu = self.underlay_mtu.to_string();
        let mut c = vec![
            Cmd::ip(r, &["tuntap", "add", "dev", &self.tun, "mode", "tun"]),
            Cmd::ip(r, &["link", "set", &self.tun, "mtu", &mtu, "txqueuelen", "1000", "up"]),
            Cmd::ip(r, &["route", "add", "default", "dev", &self.tun, "table", &table]),
        ];
        for z in &self.zones {
            c.push(Cmd::ip(r, &["rule", "add", "iif", &z.bridge, "lookup", &table, "pref", "100"]));
        }
        c
    }

    /// The pod of agent `agent_id`, the `slot`-th pod on `node` (0-based).
    pub fn pod(&self, agent_id: &str, node: &NodePlan, slot: u32, global_index: u32) -> Result<PodPlan, String> {
        if slot >= MAX_PODS_PER_NODE {
            return Err(format!("node {} already holds {MAX_PODS_PER_NODE} pods", node.name));
        }
        let o = node.pod_cidr.addr.octets();
        let p = self.id.prefix();
        Ok(PodPlan {
            agent_id: agent_id.to_string(),
            node: node.name.clone(),
            zone: node.zone.clone(),
            netns: format!("{p}pod{global_index}"),
            // slot < 253, so the host part stays within .2 ..= .254.
            ip: Ipv4Addr::new(o[0], o[1], o[2], 2 + slot as u8),
            ifname: format!("{p}eth"),
            host_ifname: format!("{p}v{slot}"),
        })
    }

    /// The commands that create a pod namespace and wire it to its node's pod bridge.
    pub fn pod_commands(&self, pod: &PodPlan) -> Vec<Cmd> {
        let Some(node) = self.node(&pod.node) else { return vec![] };
        let ns = pod.netns.as_str();
        let mtu = self.pod_mtu.to_string();
        let addr = format!("{}/{}", pod.ip, node.pod_cidr.len);
        let gw = node.pod_gateway.to_string();
        #[rustfmt::skip]
        let c = vec![
            Cmd::new("ip", None, &["netns", "add", ns]),
            sysctls(ns),
            pod_sysctls(ns),
            Cmd::ip(ns, &["link", "set", "lo", "up"]),
            Cmd::ip(&node.netns, &["link", "add", &pod.host_ifname, "mtu", &mtu, "type", "veth",
                "peer", "name", &pod.ifname, "mtu", &mtu, "netns", ns]),
            Cmd::ip(&node.netns, &["link", "set", &pod.host_ifname, "master", &node.pod_bridge, "up"]),
            // Hairpin, as kubelet's default hairpin-veth and the CNI bridge plugin's
            // hairpinMode: a pod reaching itself through a Service VIP has its frame DNATed on
            // the bridge (br_netfilter) and sent back out the port it came in on, which a
            // bridge does only for a hairpin port.
            Cmd::ip(&node.netns, &["link", "set", &pod.host_ifname, "type", "bridge_slave", "hairpin", "on"]),
            Cmd::ip(ns, &["addr", "add", &addr, "dev", &pod.ifname]),
            Cmd::ip(ns, &["link", "set", &pod.ifname, "up"]),
            Cmd::ip(ns, &["route", "add", "default", "via", &gw, "dev", &pod.ifname]),
        ];
        c
    }
}

/// Per-namespace settings, applied before any interface exists so `default` covers them all:
/// forwarding on; reverse-path filtering off (delayed packets re-enter the router from the
/// TUN, and IPv4 `conf` values are inherited from the host's, which may filter); no IPv6
/// (its autoconfiguration chatter would be the only unasked-for traffic in the lab).
fn sysctls(ns: &str) -> Cmd {
    #[rustfmt::skip]
    let c = Cmd::new("sysctl", Some(ns), &["-qw", "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0",
        "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]);
    c
}

/// Pods reuse their own TIME_WAIT ports for new connections to the same address once the
/// old connection is a second old (`tcp_tw_reuse=1`; the default 2 allows it on loopback
/// only). Without it a connect-per-transaction test (tcp-crr, thousands of connections a
/// second to one address) fills the ephemeral range with TIME_WAIT sockets within a few
/// seconds, after which every connect() searches the whole range: connect times jump from
/// tens of microseconds to milliseconds, a cost of the client's port allocator that would
/// swamp the network and dataplane costs being measured.
fn pod_sysctls(ns: &str) -> Cmd {
    Cmd::new("sysctl", Some(ns), &["-qw", "net.ipv4.tcp_tw_reuse=1"])
}

pub fn mac(m: [u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(routing: Routing, zones: &[&str], nodes: u32) -> Plan {
        let config = LabConfig {
            zones: zones.iter().map(|z| z.to_string()).collect(),
            nodes_per_zone: nodes,
            routing,
            inter_zone_rate: Some("1gbit".into()),
            inter_zone_delay: Some("250us".into()),
            ..LabConfig::default()
        };
        Plan::new(LabId::from_bits(0x3f2a), &config).unwrap()
    }

    fn has(cmds: &[Cmd], ns: &str, args: &str) -> bool {
        cmds.iter().any(|c| c.netns.as_deref() == Some(ns) && c.args.join(" ") == args)
    }

    #[test]
    fn only_a_kubernetes_lab_links_the_host_and_its_router_routes_pods_for_the_host_alone() {
        let p = plan(Routing::Vxlan, &["a", "b"], 1);
        assert!(p.host_link.is_none());
        assert!(p.build_commands().iter().all(|c| c.netns.is_some() || c.args[0] == "netns"));

        let config = LabConfig {
            zones: vec!["a".into(), "b".into()],
            kubernetes: true,
            routing: Routing::Vxlan,
            ..LabConfig::default()
        };
        let p = Plan::new(LabId::from_bits(0x3f2a), &config).unwrap();
        let h = p.host_link.clone().unwrap();
        let cmds = p.build_commands();
        let host: Vec<String> =
            cmds.iter().filter(|c| c.netns.is_none() && c.args[0] != "netns").map(|c| c.args.join(" ")).collect();
        assert_eq!(host.last().unwrap(), &format!("route add 198.19.0.0/16 via 198.18.101.2 dev {}", h.host_if));
        let r = p.router_netns.as_str();
        assert!(has(&cmds, r, &format!("rule add iif {} lookup 101 pref 90", h.router_if)));
        assert!(has(&cmds, r, "route add 198.19.16.0/24 via 198.18.1.10 table 101"));
        // VXLAN: the main table of the router still knows no pod CIDR.
        assert!(!cmds
            .iter()
            .any(|c| c.netns.as_deref() == Some(r) && c.args.join(" ") == "route add 198.19.16.0/24 via 198.18.1.10"));
    }

    #[test]
    fn lab_ids_are_zb_and_four_hex_digits() {
        assert_eq!(LabId::from_bits(0xab).as_str(), "zb00ab");
        assert!(LabId::parse("zb3f2a").is_ok());
        for bad in ["zb3F2a", "zb3f2", "xx3f2a", "zb3f2ag", "zbzzzz"] {
            assert!(LabId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(LabId::of_name("zb3f2a-router"), Some(LabId::from_bits(0x3f2a)));
        assert_eq!(LabId::of_name("zb3f2arouter"), None);
        assert_eq!(LabId::of_name("zb3f"), None);
        assert_eq!(LabId::of_name("docker-1"), None);
    }

    #[test]
    fn nodes_get_zone_subnets_and_disjoint_pod_cidrs() {
        let p = plan(Routing::Native, &["a", "b", "c"], 2);
        let names: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a-1", "a-2", "b-1", "b-2", "c-1", "c-2"]);
        let b2 = p.node("b-2").unwrap();
        assert_eq!(b2.netns, "zb3f2a-b-2");
        assert_eq!(b2.underlay_ip, Ipv4Addr::new(198, 18, 1, 11));
        assert_eq!(b2.pod_cidr.to_string(), "198.19.17.0/24");
        assert_eq!(b2.pod_gateway, Ipv4Addr::new(198, 19, 17, 1));
        assert!(p.zones[1].subnet.contains(b2.underlay_ip));
        assert!(p.zones[1].pod_block.contains(b2.pod_gateway));
        assert!(!p.zones[0].pod_block.contains(b2.pod_gateway));
        for (i, n) in p.nodes.iter().enumerate() {
            assert!(POD_SUPERNET.contains(n.pod_cidr.addr));
            assert!(UNDERLAY_SUPERNET.contains(n.underlay_ip));
            for m in &p.nodes[i + 1..] {
                assert_ne!(n.pod_cidr, m.pod_cidr);
                assert_ne!(n.underlay_ip, m.underlay_ip);
                assert_ne!(n.vtep_mac, m.vtep_mac);
            }
        }
    }

    #[test]
    fn the_largest_lab_keeps_names_short_and_addresses_in_range() {
        let zones: Vec<String> = (0..16).map(|i| format!("zone{i}")).collect();
        let config = LabConfig { zones, nodes_per_zone: 16, ..LabConfig::default() };
        let p = Plan::new(LabId::from_bits(0xffff), &config).unwrap();
        assert_eq!(p.nodes.len(), 256);
        let last = p.nodes.last().unwrap();
        assert_eq!(last.pod_cidr.to_string(), "198.19.255.0/24");
        assert_eq!(last.underlay_ip, Ipv4Addr::new(198, 18, 15, 25));
        let pod = p.pod("x", last, MAX_PODS_PER_NODE - 1, 9999).unwrap();
        assert_eq!(pod.ip, Ipv4Addr::new(198, 19, 255, 254));
        assert!(p.pod("x", last, MAX_PODS_PER_NODE, 0).is_err());
        for n in &p.nodes {
            for name in [&n.uplink, &n.router_port, &n.pod_bridge, &n.vxlan_dev] {
                assert!(name.len() <= 15, "{name} is too long for an interface name");
            }
        }
        for name in [&pod.ifname, &pod.host_ifname, &p.tun, &p.zones[15].bridge] {
            assert!(name.len() <= 15, "{name} is too long for an interface name");
        }
    }

    #[test]
    fn vxlan_modes_leave_room_for_the_encapsulation() {
        assert_eq!(plan(Routing::Native, &["a", "b"], 1).pod_mtu, 1500);
        assert_eq!(plan(Routing::Vxlan, &["a", "b"], 1).pod_mtu, 1450);
        assert_eq!(plan(Routing::VxlanCrosssubnet, &["a", "b"], 1).pod_mtu, 1450);
    }

    #[test]
    fn native_routing_goes_direct_within_a_zone_and_via_the_router_across() {
        let p = plan(Routing::Native, &["a", "b"], 2);
        let c = p.build_commands();
        assert!(has(&c, "zb3f2a-a-1", "route add 198.19.1.0/24 via 198.18.0.11 dev zb3f2a-up"));
        assert!(has(&c, "zb3f2a-a-1", "route add default via 198.18.0.1 dev zb3f2a-up"));
        assert!(!c
            .iter()
            .any(|c| c.netns.as_deref() == Some("zb3f2a-a-1") && c.args.contains(&"198.19.16.0/24".into())));
        assert!(has(&c, "zb3f2a-router", "route add 198.19.16.0/24 via 198.18.1.10"));
        assert!(!c.iter().any(|c| c.args.iter().any(|a| a.contains("vxlan"))));
    }

    #[test]
    fn vxlan_encapsulates_between_every_pair_of_nodes() {
        let p = plan(Routing::Vxlan, &["a", "b"], 2);
        let c = p.build_commands();
        assert!(has(&c, "zb3f2a-a-1", "route add 198.19.1.0/24 via 198.19.1.0 dev zb3f2a-vx onlink"));
        assert!(has(&c, "zb3f2a-a-1", "route add 198.19.16.0/24 via 198.19.16.0 dev zb3f2a-vx onlink"));
        assert!(has(&c, "zb3f2a-a-1", "fdb append 02:5a:62:01:00:01 dev zb3f2a-vx dst 198.18.1.10"));
        assert!(has(&c, "zb3f2a-a-1", "neigh add 198.19.16.0 lladdr 02:5a:62:01:00:01 dev zb3f2a-vx nud permanent"));
        // The router must not know pod routes, so unencapsulated pod traffic cannot pass.
        assert!(!c.iter().any(|c| c.netns.as_deref() == Some("zb3f2a-router")
            && c.args.join(" ").contains("198.19.")
            && c.args[0] == "route"));
    }

    #[test]
    fn crosssubnet_encapsulates_only_across_zones() {
        let p = plan(Routing::VxlanCrosssubnet, &["a", "b"], 2);
        let c = p.build_commands();
        assert!(has(&c, "zb3f2a-a-1", "route add 198.19.1.0/24 via 198.18.0.11 dev zb3f2a-up"));
        assert!(has(&c, "zb3f2a-a-1", "route add 198.19.16.0/24 via 198.19.16.0 dev zb3f2a-vx onlink"));
        assert!(!has(&c, "zb3f2a-a-1", "route add 198.19.1.0/24 via 198.19.1.0 dev zb3f2a-vx onlink"));
    }

    #[test]
    fn each_directed_zone_pair_gets_its_own_shaped_class() {
        let p = plan(Routing::Native, &["a", "b", "c"], 1);
        let c = p.shaping_commands();
        let classes: Vec<&Cmd> = c.iter().filter(|c| c.args[0] == "class").collect();
        assert_eq!(classes.len(), 6);
        let into_b = "class add dev zb3f2a-br1 parent 1: classid 1:12 htb rate 1000000000bit ceil 1000000000bit \
                      burst 131072 cburst 131072 quantum 65536";
        assert!(has(&c, "zb3f2a-router", into_b));
        assert!(has(
            &c,
            "zb3f2a-router",
            "filter add dev zb3f2a-br1 parent 1: protocol ip prio 1 u32 match ip src 198.19.32.0/20 flowid 1:12"
        ));
        assert!(has(
            &c,
            "zb3f2a-router",
            "filter add dev zb3f2a-br1 parent 1: protocol ip prio 1 u32 match ip src 198.18.2.0/24 flowid 1:12"
        ));
        let unshaped = LabConfig { zones: vec!["a".into(), "b".into()], ..LabConfig::default() };
        assert!(Plan::new(LabId::from_bits(1), &unshaped).unwrap().shaping_commands().is_empty());
    }

    #[test]
    fn the_delay_path_diverts_packets_arriving_from_each_zone_into_the_tun() {
        let p = plan(Routing::Native, &["a", "b"], 1);
        let c = p.delay_commands();
        assert!(has(&c, "zb3f2a-router", "tuntap add dev zb3f2a-dly mode tun"));
        assert!(has(&c, "zb3f2a-router", "route add default dev zb3f2a-dly table 100"));
        assert!(has(&c, "zb3f2a-router", "rule add iif zb3f2a-br0 lookup 100 pref 100"));
        assert!(has(&c, "zb3f2a-router", "rule add iif zb3f2a-br1 lookup 100 pref 100"));
        let zero = LabConfig { inter_zone_delay: Some("0s".into()), ..LabConfig::default() };
        assert!(Plan::new(LabId::from_bits(1), &zero).unwrap().delay_commands().is_empty());
    }

    #[test]
    fn commands_select_the_namespace_as_each_tool_expects() {
        let ip = Cmd::ip("ns1", &["link", "show"]);
        assert_eq!(ip.to_string(), "ip -n ns1 link show");
        assert_eq!(sysctls("ns1").argv()[..5], ["ip", "netns", "exec", "ns1", "sysctl"]);
        assert_eq!(Cmd::new("ip", None, &["netns", "add", "x"]).to_string(), "ip netns add x");
    }

    #[test]
    fn pods_take_addresses_from_their_node_and_wire_to_its_bridge() {
        let p = plan(Routing::Vxlan, &["a", "b"], 1);
        let node = p.node("b-1").unwrap();
        let pod = p.pod("srv-b-0", node, 0, 3).unwrap();
        assert_eq!(pod.ip, Ipv4Addr::new(198, 19, 16, 2));
        assert_eq!(pod.netns, "zb3f2a-pod3");
        let c = p.pod_commands(&pod);
        assert!(has(
            &c,
            "zb3f2a-b-1",
            "link add zb3f2a-v0 mtu 1450 type veth peer name zb3f2a-eth mtu 1450 netns zb3f2a-pod3"
        ));
        assert!(has(&c, "zb3f2a-pod3", "addr add 198.19.16.2/24 dev zb3f2a-eth"));
        assert!(has(&c, "zb3f2a-pod3", "route add default via 198.19.16.1 dev zb3f2a-eth"));
        assert!(has(&c, "zb3f2a-b-1", "link set zb3f2a-v0 type bridge_slave hairpin on"));
        assert!(c.iter().any(|c| c.program == "sysctl" && c.args.contains(&"net.ipv4.tcp_tw_reuse=1".to_string())));
    }
}
