//! CIDR blocks for `--allow-cidr`: the only targets a test started through the control API
//! may send to. Small on purpose (parse, contains, display) so the check that keeps an agent
//! from being an open load generator is easy to read in full.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with its host bits zero, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    pub input: String,
    pub reason: String,
}

impl Cidr {
    /// `network/prefix`; refuses set host bits, which are almost always a typo for a
    /// narrower or wider block than meant.
    pub fn new(network: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let err = |reason: String| CidrError { input: format!("{network}/{prefix}"), reason };
        let max = max_prefix(network);
        if prefix > max {
            return Err(err(format!("prefix length {prefix} is above {max}")));
        }
        let masked = mask(network, prefix);
        if masked != network {
            return Err(err(format!("host bits are set; the network is {masked}/{prefix}")));
        }
        // `::ffff:10.0.0.0/104` is 10.0.0.0/8 written as IPv4-mapped IPv6: targets are
        // checked as IPv4 (see `contains`), so the block must be too, or it would match none.
        if let (IpAddr::V6(v6), 96..) = (network, prefix) {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Ok(Cidr { network: IpAddr::V4(v4), prefix: prefix - 96 });
            }
        }
        Ok(Cidr { network, prefix })
    }

    /// The loopback networks, which is what an agent may target when no `--allow-cidr` is
    /// given: safe on a laptop, useless in a cluster, so the coordinator must say what it
    /// means.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr { network: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 },
            Cidr { network: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: 128 },
        ]
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// reaches the IPv4 host, so it is checked as that IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, self.prefix) == self.network,
            _ => false,
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with every bit past `prefix` cleared; `prefix` is at most the family's width.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address for that one host.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| CidrError { input: s.to_string(), reason: reason.to_string() };
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr =
            addr.trim().parse().map_err(|_| err("expected an IPv4 or IPv6 address before the '/'"))?;
        let prefix = match prefix {
            None => max_prefix(network),
            Some(p) => p.trim().parse::<u8>().map_err(|_| err("the prefix length after '/' must be a number"))?,
        };
        Cidr::new(network, prefix).map_err(|e| CidrError { input: s.to_string(), reason: e.reason })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `a, b, c` for messages.
pub fn list(cidrs: &[Cidr]) -> String {
    cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_blocks_contain_exactly_their_addresses() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.0.0")));
        assert!(c.contains(ip("10.1.255.255")));
        assert!(!c.contains(ip("10.2.0.0")));
        assert!(!c.contains(ip("10.0.255.255")));
        assert!(!c.contains(ip("::1")));
    }

    #[test]
    fn ipv6_blocks_contain_exactly_their_addresses() {
        let c: Cidr = "fd00:abcd::/32".parse().unwrap();
        assert!(c.contains(ip("fd00:abcd::1")));
        assert!(c.contains(ip("fd00:abcd:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!c.contains(ip("fd00:abce::")));
        assert!(!c.contains(ip("10.0.0.1")));
        let one: Cidr = "::1".parse().unwrap();
        assert_eq!(one.prefix(), 128);
        assert!(one.contains(ip("::1")));
        assert!(!one.contains(ip("::2")));
    }

    #[test]
    fn zero_and_full_prefixes_are_all_and_one() {
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("0.0.0.0")));
        assert!(!all.contains(ip("::")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("ffff::1")));
        let host: Cidr = "192.168.1.7/32".parse().unwrap();
        assert!(host.contains(ip("192.168.1.7")) && !host.contains(ip("192.168.1.6")));
        assert_eq!("192.168.1.7".parse::<Cidr>().unwrap(), host);
    }

    #[test]
    fn an_ipv4_mapped_address_is_checked_as_ipv4() {
        let lo: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn an_ipv4_mapped_block_is_the_ipv4_block() {
        let c: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(c, "10.0.0.0/8".parse().unwrap());
        assert!(c.contains(ip("10.1.2.3")) && c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")) && !c.contains(ip("::ffff:11.0.0.1")));
        assert_eq!("::ffff:127.0.0.1".parse::<Cidr>().unwrap(), "127.0.0.1/32".parse().unwrap());
    }

    #[test]
    fn unspecified_addresses_are_in_no_block_but_the_ones_naming_them() {
        // 0.0.0.0 and :: reach the local host when connected to: never in a pod network or
        // loopback block by accident.
        for block in ["127.0.0.0/8", "10.0.0.0/8", "::1/128", "fd00::/8"] {
            let c: Cidr = block.parse().unwrap();
            for target in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
                assert!(!c.contains(ip(target)), "{block} contains {target}");
            }
        }
    }

    #[test]
    fn bad_blocks_are_refused_with_the_input_named() {
        for (input, why) in [
            ("10.0.0.0/33", "above 32"),
            ("::/129", "above 128"),
            ("10.0.0.1/8", "10.0.0.0/8"),
            ("fd00::1/8", "fd00::/8"),
            ("10.0.0/8", "address"),
            ("10.0.0.0/x", "number"),
            ("", "address"),
        ] {
            let e = input.parse::<Cidr>().unwrap_err();
            assert_eq!(e.input, input);
            assert!(e.to_string().contains(why), "{input}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["10.0.0.0/8", "fd00::/8", "::1/128", "0.0.0.0/0"] {
            assert_eq!(s.parse::<Cidr>().unwrap().to_string(), s);
        }
        assert_eq!(list(&Cidr::loopback()), "127.0.0.0/8, ::1/128");
    }
}
