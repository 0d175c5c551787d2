//! The eBPF dataplane's tables as bytes, and the ordered writes that move the kernel's maps
//! from one Service table to the next.
//!
//! Kept apart from the loader so the layout and the update order, which decide whether a
//! connect can ever see a half-written Service, are tested without a kernel. The layouts
//! mirror the structs in `harness/bpf/socklb.bpf.c`: addresses and ports in network byte
//! order, counts and ids in host order, explicit zero padding (the kernel hashes every byte
//! of a key).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::dataplane::{Endpoint, ServiceRules};
use crate::model::Protocol;

/// Map sizes; the loader sets them on the maps, so the capacity checks here hold.
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_REVNAT: u32 = 16_384;

/// Every key and value is 8 bytes.
pub type Bytes8 = [u8; 8];

/// `struct svc_key`: what a connect's destination is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl ServiceKey {
    pub fn to_bytes(self) -> Bytes8 {
        let [a, b, c, d] = self.vip.octets();
        let [p0, p1] = self.port.to_be_bytes();
        [a, b, c, d, p0, p1, ip_proto(self.protocol), 0]
    }
}

/// The IP protocol number the program compares with the socket's.
fn ip_proto(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }
}

/// `struct svc_val`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceValue {
    pub count: u32,
    pub id: u32,
}

impl ServiceValue {
    pub fn to_bytes(self) -> Bytes8 {
        let [c0, c1, c2, c3] = self.count.to_ne_bytes();
        let [i0, i1, i2, i3] = self.id.to_ne_bytes();
        [c0, c1, c2, c3, i0, i1, i2, i3]
    }
}

/// `struct be_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendKey {
    pub id: u32,
    pub slot: u32,
}

impl BackendKey {
    pub fn to_bytes(self) -> Bytes8 {
        let [i0, i1, i2, i3] = self.id.to_ne_bytes();
        let [s0, s1, s2, s3] = self.slot.to_ne_bytes();
        [i0, i1, i2, i3, s0, s1, s2, s3]
    }
}

/// `struct be_val`.
pub fn backend_value(endpoint: Endpoint) -> Bytes8 {
    let [a, b, c, d] = endpoint.ip.octets();
    let [p0, p1] = endpoint.port.to_be_bytes();
    [a, b, c, d, p0, p1, 0, 0]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("services {first:?} and {second:?} both claim {vip}:{port}/{protocol}", protocol = .protocol.as_str())]
    DuplicateService { first: String, second: String, vip: Ipv4Addr, port: u16, protocol: Protocol },
    #[error("{services} service ports exceed the eBPF dataplane's service map ({MAX_SERVICES} entries)")]
    TooManyServices { services: usize },
    #[error(
        "the sync needs {needed} backend entries at its peak (old and new sets of changed services \
         coexist until the switch), more than the backend map holds ({MAX_BACKENDS})"
    )]
    TooManyBackends { needed: u64 },
    #[error("service ids are exhausted (2^32 changes in one dataplane's life); reopen the dataplane")]
    IdsExhausted,
}

/// What the maps hold for one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub id: u32,
    pub endpoints: Vec<Endpoint>,
}

/// The maps' contents as the loader last wrote them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub services: BTreeMap<ServiceKey, Programmed>,
    /// The last id handed out; ids are never reused while the maps live, so a stale service
    /// value can never point at another Service's backends.
    pub last_id: u32,
}

impl Table {
    /// Service entries plus backend entries: what `SyncReport::rules` counts.
    pub fn entries(&self) -> u64 {
        self.services.values().map(|p| 1 + p.endpoints.len() as u64).sum()
    }

    fn backend_entries(&self) -> u64 {
        self.services.values().map(|p| p.endpoints.len() as u64).sum()
    }
}

/// The writes that turn the maps from one table into the next, in the order they must be
/// applied: new backend sets, then the service entries that point at them, then removals of
/// services, and only then the backend sets nothing points at any more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    pub backend_writes: Vec<(BackendKey, Endpoint)>,
    pub service_writes: Vec<(ServiceKey, ServiceValue)>,
    pub service_deletes: Vec<ServiceKey>,
    pub backend_deletes: Vec<BackendKey>,
    /// The table once every write is applied.
    pub next: Table,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.backend_writes.is_empty()
            && self.service_writes.is_empty()
            && self.service_deletes.is_empty()
            && self.backend_deletes.is_empty()
    }
}

/// Plans the move from `current` to `services`. Unchanged Services keep their entries (so a
/// resync of a big, mostly unchanged table writes little, as Cilium's agent does); a Service
/// whose endpoints changed gets a new id and a complete new backend set.
pub fn plan(current: &Table, services: &[ServiceRules]) -> Result<Update, TableError> {
    let mut wanted: BTreeMap<ServiceKey, (&str, &[Endpoint])> = BTreeMap::new();
    for rules in services {
        let s = &rules.service;
        let key = ServiceKey { vip: s.vip, port: s.port, protocol: s.protocol };
        if let Some((first, _)) = wanted.insert(key, (&s.name, &rules.endpoints)) {
            return Err(TableError::DuplicateService {
                first: first.to_string(),
                second: s.name.clone(),
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
            });
        }
    }
    if wanted.len() > MAX_SERVICES as usize {
        return Err(TableError::TooManyServices { services: wanted.len() });
    }

    let mut update = Update::default();
    let mut next = Table { services: BTreeMap::new(), last_id: current.last_id };
    for (key, (_, endpoints)) in &wanted {
        if let Some(old) = current.services.get(key) {
            if old.endpoints == *endpoints {
                next.services.insert(*key, old.clone());
                continue;
            }
        }
        let id = next.last_id.checked_add(1).ok_or(TableError::IdsExhausted)?;
        next.last_id = id;
        for (slot, endpoint) in (0u32..).zip(endpoints.iter()) {
            update.backend_writes.push((BackendKey { id, slot }, *endpoint));
        }
        let count = u32::try_from(endpoints.len())
            .map_err(|_| TableError::TooManyBackends { needed: endpoints.len() as u64 })?;
        update.service_writes.push((*key, ServiceValue { count, id }));
        next.services.insert(*key, Programmed { id, endpoints: endpoints.to_vec() });
    }
    let kept: BTreeSet<u32> = next.services.values().map(|p| p.id).collect();
    for (key, old) in &current.services {
        if !wanted.contains_key(key) {
            update.service_deletes.push(*key);
        }
        if !kept.contains(&old.id) {
            update
                .backend_deletes
                .extend((0u32..).zip(old.endpoints.iter()).map(|(slot, _)| BackendKey { id: old.id, slot }));
        }
    }
    let peak = current.backend_entries() + update.backend_writes.len() as u64;
    if peak > u64::from(MAX_BACKENDS) {
        return Err(TableError::TooManyBackends { needed: peak });
    }
    update.next = next;
    Ok(update)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::dataplane::ServicePort;

    fn svc(name: &str, vip: [u8; 4], port: u16, protocol: Protocol, eps: &[([u8; 4], u16)]) -> ServiceRules {
        ServiceRules {
            service: ServicePort { name: name.into(), vip: Ipv4Addr::from(vip), port, protocol },
            endpoints: eps.iter().map(|(ip, port)| Endpoint { ip: Ipv4Addr::from(*ip), port: *port }).collect(),
        }
    }

    #[test]
    fn keys_and_values_are_laid_out_as_the_c_structs() {
        let key = ServiceKey { vip: Ipv4Addr::new(10, 96, 0, 1), port: 0x1f90, protocol: Protocol::Udp };
        assert_eq!(key.to_bytes(), [10, 96, 0, 1, 0x1f, 0x90, 17, 0]);
        let ep = Endpoint { ip: Ipv4Addr::new(10, 244, 1, 7), port: 7101 };
        assert_eq!(backend_value(ep), [10, 244, 1, 7, 0x1b, 0xbd, 0, 0]);
        let v = ServiceValue { count: 3, id: 0x0102_0304 };
        assert_eq!(&v.to_bytes()[..4], &3u32.to_ne_bytes());
        assert_eq!(&v.to_bytes()[4..], &0x0102_0304u32.to_ne_bytes());
        let k = BackendKey { id: 9, slot: 2 };
        assert_eq!(k.to_bytes(), [9u32.to_ne_bytes(), 2u32.to_ne_bytes()].concat().as_slice());
    }

    #[test]
    fn a_first_sync_writes_backends_then_services() {
        let services = [
            svc("a", [10, 96, 0, 1], 80, Protocol::Tcp, &[([10, 0, 0, 1], 8080), ([10, 0, 0, 2], 8080)]),
            svc("b", [10, 96, 0, 2], 53, Protocol::Udp, &[]),
        ];
        let u = plan(&Table::default(), &services).unwrap();
        assert_eq!(u.backend_writes.len(), 2);
        assert_eq!(u.service_writes.len(), 2);
        let counts: Vec<u32> = u.service_writes.iter().map(|(_, v)| v.count).collect();
        assert_eq!(counts, [2, 0]);
        assert!(u.service_deletes.is_empty() && u.backend_deletes.is_empty());
        assert_eq!(u.next.entries(), 4);
        let ids: BTreeSet<u32> = u.service_writes.iter().map(|(_, v)| v.id).collect();
        assert_eq!(ids.len(), 2, "each service gets its own id");
    }

    #[test]
    fn an_unchanged_table_plans_no_writes() {
        let services = [svc("a", [10, 96, 0, 1], 80, Protocol::Tcp, &[([10, 0, 0, 1], 8080)])];
        let first = plan(&Table::default(), &services).unwrap();
        let again = plan(&first.next, &services).unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(again.next, first.next);
    }

    #[test]
    fn a_changed_service_gets_a_new_id_and_its_old_backends_are_deleted_last() {
        let before = [svc("a", [10, 96, 0, 1], 80, Protocol::Tcp, &[([10, 0, 0, 1], 8080), ([10, 0, 0, 2], 8080)])];
        let after = [svc("a", [10, 96, 0, 1], 80, Protocol::Tcp, &[([10, 0, 0, 3], 8080)])];
        let first = plan(&Table::default(), &before).unwrap();
        let old_id = first.service_writes[0].1.id;
        let u = plan(&first.next, &after).unwrap();
        let new_id = u.service_writes[0].1.id;
        assert_ne!(new_id, old_id);
        assert_eq!(u.backend_writes, [(BackendKey { id: new_id, slot: 0 }, after[0].endpoints[0])]);
        assert!(u.service_deletes.is_empty());
        assert_eq!(u.backend_deletes, [BackendKey { id: old_id, slot: 0 }, BackendKey { id: old_id, slot: 1 }]);
        assert_eq!(u.next.entries(), 2);
    }

    #[test]
    fn a_removed_service_loses_its_entry_and_its_backends() {
        let two = [
            svc("a", [10, 96, 0, 1], 80, Protocol::Tcp, &[([10, 0, 0, 1], 8080)]),
            svc("b", [10, 96, 0, 1], 80, Protocol::Udp, &[([10, 0, 0, 1], 8080)]),
        ];
        let first = plan(&Table::default(), &two).unwrap();
        let u = plan(&first.next, &two[..1]).unwrap();
        assert!(u.backend_writes.is_empty() && u.service_writes.is_empty());
        assert_eq!(
            u.service_deletes,
            [ServiceKey { vip: Ipv4Addr::new(10, 96, 0, 1), port: 80, protocol: Protocol::Udp }]
        );
        assert_eq!(u.backend_deletes.len(), 1);
        assert_eq!(u.next.entries(), 2);
    }

    #[test]
    fn two_services_on_one_vip_port_and_protocol_are_rejected_by_name() {
        let dup = [
            svc("ns/a:http", [10, 96, 0, 1], 80, Protocol::Tcp, &[]),
            svc("ns/b:http", [10, 96, 0, 1], 80, Protocol::Tcp, &[]),
        ];
        let err = plan(&Table::default(), &dup).unwrap_err();
        assert!(err.to_string().contains("ns/a:http") && err.to_string().contains("10.96.0.1:80/tcp"), "{err}");
    }

    #[test]
    fn a_table_larger_than_the_backend_map_is_refused_before_any_write() {
        let eps: Vec<([u8; 4], u16)> =
            (0..=MAX_BACKENDS).map(|i| ([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80)).collect();
        let err = plan(&Table::default(), &[svc("big", [10, 96, 0, 1], 80, Protocol::Tcp, &eps)]).unwrap_err();
        assert!(matches!(err, TableError::TooManyBackends { .. }), "{err}");
    }
}
