//! What the CLI prints at the end of a run, as text: the zone matrix of any run
//! ([`matrix`]), the locality table of a topology-routing run beside each variant's hints
//! verdict ([`locality`]), the table of a service-scaling sweep ([`sweep`]), the detailed data table of a
//! zone-matrix run ([`datatable`]), and below any of them the concurrent
//! groups ([`groups`]), the capacity searches ([`capacity`]) and the service chains ([`chains`]). Pure
//! functions of the results; the HTML report is `report`'s.

pub mod capacity;
pub mod chains;
pub mod datatable;
pub mod groups;
pub mod locality;
pub mod matrix;
pub mod sweep;
