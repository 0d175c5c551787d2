//! The eBPF service dataplane: a socket-level load balancer like Cilium's socket LB.
//!
//! BPF programs on the node's cgroup (`cgroup/connect4`, `cgroup/sendmsg4`,
//! `cgroup/recvmsg4`, source in `harness/bpf/socklb.bpf.c`) rewrite a socket's destination
//! from a Service VIP to one backend at connect/sendmsg time, chosen at random from BPF hash
//! maps: services keyed by (VIP, port, protocol) → (backend count, id), backends keyed by
//! (id, slot) → (IP, port). A lookup is a hash probe whatever the number of Services, which
//! is the point of comparing it with kube-proxy's chains. A Service without endpoints fails
//! the connect with EPERM, as Cilium does. UDP replies are shown to the application as coming
//! from the VIP (recvmsg4 with a reverse map keyed by socket cookie).
//!
//! Each node gets its own programs, links and maps (its endpoint subset differs by zone).
//! Attachments are BPF links owned by this process: dropping the dataplane, or the process
//! dying, detaches everything, and nothing is pinned, so a killed run cannot leave a node's
//! sockets redirected.
//!
//! The object is compiled by `harness/build.rs` with clang; when that could not happen,
//! [`EbpfDataplane::open`] says why and what to install. The loader is aya (pure Rust, so the
//! coordinator links no libbpf), and map keys and values are byte arrays laid out by
//! [`table`], which keeps this module free of unsafe code.

pub mod cgroup;
pub mod table;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aya::maps::{HashMap, IterableMap, MapData, MapError};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError};
use aya::{Ebpf, EbpfLoader};

use super::{Dataplane, DataplaneKind, NodeTarget, ServiceRules, SyncReport};
use table::{backend_value, Bytes8, Table, TableError, Update, MAX_BACKENDS, MAX_REVNAT, MAX_SERVICES};

/// The programs in the object, each attached to the node's cgroup.
const PROGRAMS: [&str; 3] = ["zb_connect4", "zb_sendmsg4", "zb_recvmsg4"];
const SERVICES_MAP: &str = "zb_services";
const BACKENDS_MAP: &str = "zb_backends";
const REVNAT_MAP: &str = "zb_revnat";

/// What to install when the object was not built (also in build.rs's message).
pub const INSTALL_HINT: &str = "install clang and libbpf-dev (apt-get install clang libbpf-dev) and rebuild zonebench";

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("the eBPF dataplane is not available in this build: {0}")]
    NotBuilt(String),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("loading the socket LB's BPF object (needs root: CAP_BPF, CAP_NET_ADMIN): {0}")]
    Load(#[source] aya::EbpfError),
    #[error("BPF object has no program {0} (harness/bpf/socklb.bpf.c and ebpf.rs disagree)")]
    MissingProgram(&'static str),
    #[error("BPF object has no map {0} (harness/bpf/socklb.bpf.c and ebpf.rs disagree)")]
    MissingMap(&'static str),
    #[error("BPF program {name}: {source}")]
    Program { name: &'static str, source: ProgramError },
    #[error("attaching {name} to cgroup {cgroup}: {source}")]
    Attach { name: &'static str, cgroup: PathBuf, source: ProgramError },
    #[error("BPF map {map}: {op}: {source}")]
    Map { map: &'static str, op: &'static str, source: MapError },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("the eBPF dataplane on {0} was torn down")]
    TornDown(PathBuf),
}

/// The compiled `socklb.bpf.o`, embedded by the build.
#[cfg(zonebench_bpf)]
fn object() -> Result<&'static [u8], EbpfError> {
    Ok(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socklb.bpf.o")))
}

#[cfg(not(zonebench_bpf))]
fn object() -> Result<&'static [u8], EbpfError> {
    let why = env!("ZONEBENCH_BPF_UNAVAILABLE");
    Err(EbpfError::NotBuilt(if why.is_empty() { INSTALL_HINT.to_string() } else { why.to_string() }))
}

/// Kernel ids of what one dataplane loaded, for checking that teardown released them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIds {
    pub programs: Vec<u32>,
    pub maps: Vec<u32>,
}

/// Programs, links and maps of one node.
struct Loaded {
    /// Owns the programs and their links: dropping it detaches them from the cgroup.
    bpf: Ebpf,
    services: HashMap<MapData, Bytes8, Bytes8>,
    backends: HashMap<MapData, Bytes8, Bytes8>,
    revnat: HashMap<MapData, [u8; 16], Bytes8>,
}

/// One node's eBPF socket load balancer.
pub struct EbpfDataplane {
    cgroup: PathBuf,
    loaded: Option<Loaded>,
    /// What the maps hold, as last written.
    table: Table,
    /// A write failed part-way: the maps' contents are unknown, so the next sync clears them
    /// before writing.
    dirty: bool,
}

impl std::fmt::Debug for EbpfDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfDataplane")
            .field("cgroup", &self.cgroup)
            .field("attached", &self.loaded.is_some())
            .field("services", &self.table.services.len())
            .finish()
    }
}

impl EbpfDataplane {
    /// Loads the programs and maps and attaches them to `target.cgroup` (a cgroup v2
    /// directory). Sockets created afterwards by processes in that cgroup (or below it) are
    /// load-balanced; the Service table starts empty.
    pub fn open(target: &NodeTarget) -> anyhow::Result<EbpfDataplane> {
        Ok(Self::open_cgroup(&target.cgroup)?)
    }

    fn open_cgroup(cgroup_dir: &Path) -> Result<EbpfDataplane, EbpfError> {
        let object = object()?;
        cgroup::check_cgroup2_dir(cgroup_dir)?;
        let cgroup_fd = File::open(cgroup_dir)
            .map_err(|source| cgroup::CgroupError::Io { path: cgroup_dir.to_path_buf(), source })?;
        let mut bpf = EbpfLoader::new()
            // The program reads only the stable UAPI context (no CO-RE relocations), so skip
            // parsing the kernel's BTF, which is most of the load time.
            .btf(None)
            .map_max_entries(SERVICES_MAP, MAX_SERVICES)
            .map_max_entries(BACKENDS_MAP, MAX_BACKENDS)
            .map_max_entries(REVNAT_MAP, MAX_REVNAT)
            .load(object)
            .map_err(EbpfError::Load)?;
        for name in PROGRAMS {
            let program: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            program.load().map_err(|source| EbpfError::Program { name, source })?;
            // A BPF link: the kernel detaches it when its last fd closes, so the attachment
            // cannot outlive this process.
            program.attach(&cgroup_fd, CgroupAttachMode::Single).map_err(|source| EbpfError::Attach {
                name,
                cgroup: cgroup_dir.to_path_buf(),
                source,
            })?;
        }
        let services = take_hash_map(&mut bpf, SERVICES_MAP)?;
        let backends = take_hash_map(&mut bpf, BACKENDS_MAP)?;
        let revnat = take_hash_map(&mut bpf, REVNAT_MAP)?;
        tracing::debug!(cgroup = %cgroup_dir.display(), "eBPF socket LB attached");
        Ok(EbpfDataplane {
            cgroup: cgroup_dir.to_path_buf(),
            loaded: Some(Loaded { bpf, services, backends, revnat }),
            table: Table::default(),
            dirty: false,
        })
    }

    /// The cgroup this dataplane attaches to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// Ids of the loaded programs and maps (None after teardown).
    pub fn kernel_ids(&self) -> Result<Option<KernelIds>, EbpfError> {
        let Some(loaded) = &self.loaded else { return Ok(None) };
        let mut programs = Vec::new();
        for name in PROGRAMS {
            let program = loaded.bpf.program(name).ok_or(EbpfError::MissingProgram(name))?;
            programs.push(program.info().map_err(|source| EbpfError::Program { name, source })?.id());
        }
        let map_id = |map: &'static str, data: &MapData| {
            data.info().map(|i| i.id()).map_err(|source| EbpfError::Map { map, op: "info", source })
        };
        let maps = vec![
            map_id(SERVICES_MAP, loaded.services.map())?,
            map_id(BACKENDS_MAP, loaded.backends.map())?,
            map_id(REVNAT_MAP, loaded.revnat.map())?,
        ];
        Ok(Some(KernelIds { programs, maps }))
    }

    fn loaded_mut(&mut self) -> Result<&mut Loaded, EbpfError> {
        self.loaded.as_mut().ok_or_else(|| EbpfError::TornDown(self.cgroup.clone()))
    }

    fn sync_table(&mut self, services: &[ServiceRules]) -> Result<u64, EbpfError> {
        // Plan first: bad input or an over-full table is refused before any map changes.
        let unknown;
        let current = if self.dirty {
            unknown = Table { services: Default::default(), last_id: self.table.last_id };
            &unknown
        } else {
            &self.table
        };
        let update = table::plan(current, services)?;
        let dirty = self.dirty;
        let loaded = self.loaded_mut()?;
        let result = (|| {
            if dirty {
                clear(&mut loaded.services, SERVICES_MAP)?;
                clear(&mut loaded.backends, BACKENDS_MAP)?;
            }
            apply(loaded, &update)
        })();
        match result {
            Ok(()) => {
                self.table = update.next;
                self.dirty = false;
                Ok(self.table.entries())
            }
            Err(e) => {
                // Ids handed out by the failed plan may be in the maps: never hand them out again.
                self.table.last_id = update.next.last_id;
                self.dirty = true;
                Err(e)
            }
        }
    }
}

fn take_hash_map<K: aya::Pod>(bpf: &mut Ebpf, name: &'static str) -> Result<HashMap<MapData, K, Bytes8>, EbpfError> {
    let map = bpf.take_map(name).ok_or(EbpfError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| EbpfError::Map { map: name, op: "open", source })
}

/// Applies an update in the order that keeps every lookup consistent (see [`table::plan`]).
fn apply(loaded: &mut Loaded, update: &Update) -> Result<(), EbpfError> {
    let err = |map, op| move |source| EbpfError::Map { map, op, source };
    for (key, endpoint) in &update.backend_writes {
        loaded.backends.insert(key.to_bytes(), backend_value(*endpoint), 0).map_err(err(BACKENDS_MAP, "insert"))?;
    }
    for (key, value) in &update.service_writes {
        loaded.services.insert(key.to_bytes(), value.to_bytes(), 0).map_err(err(SERVICES_MAP, "insert"))?;
    }
    for key in &update.service_deletes {
        remove(&mut loaded.services, &key.to_bytes()).map_err(err(SERVICES_MAP, "delete"))?;
    }
    for key in &update.backend_deletes {
        remove(&mut loaded.backends, &key.to_bytes()).map_err(err(BACKENDS_MAP, "delete"))?;
    }
    Ok(())
}

/// Deletes a key; one that is already gone is what we wanted.
fn remove(map: &mut HashMap<MapData, Bytes8, Bytes8>, key: &Bytes8) -> Result<(), MapError> {
    match map.remove(key) {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// Deletes every entry the kernel holds in `map`.
fn clear(map: &mut HashMap<MapData, Bytes8, Bytes8>, name: &'static str) -> Result<(), EbpfError> {
    let keys = map.keys().collect::<Result<Vec<_>, _>>().map_err(|source| EbpfError::Map {
        map: name,
        op: "list keys",
        source,
    })?;
    for key in keys {
        remove(map, &key).map_err(|source| EbpfError::Map { map: name, op: "delete", source })?;
    }
    Ok(())
}

fn count_entries<K: aya::Pod>(map: &HashMap<MapData, K, Bytes8>, name: &'static str) -> Result<u64, EbpfError> {
    let mut n = 0;
    for key in map.keys() {
        key.map_err(|source| EbpfError::Map { map: name, op: "list keys", source })?;
        n += 1;
    }
    Ok(n)
}

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> DataplaneKind {
        DataplaneKind::Ebpf
    }

    fn sync(&mut self, services: &[ServiceRules]) -> anyhow::Result<SyncReport> {
        let start = Instant::now();
        let rules = self.sync_table(services)?;
        Ok(SyncReport { rules, elapsed: start.elapsed() })
    }

    /// Service and backend entries as the kernel lists them (the UDP reverse map is
    /// connection state, like conntrack, not rules).
    fn rule_count(&self) -> anyhow::Result<u64> {
        let Some(loaded) = &self.loaded else { return Ok(0) };
        Ok(count_entries(&loaded.services, SERVICES_MAP)? + count_entries(&loaded.backends, BACKENDS_MAP)?)
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if let Some(loaded) = self.loaded.take() {
            // Dropping the object detaches its links and closes every program and map fd; with
            // nothing pinned, the kernel frees them all.
            drop(loaded);
            tracing::debug!(cgroup = %self.cgroup.display(), "eBPF socket LB detached");
        }
        self.table = Table { services: Default::default(), last_id: self.table.last_id };
        self.dirty = false;
        Ok(())
    }
}
