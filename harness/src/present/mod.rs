//! What the CLI prints at the end of a run, as text: the zone matrix of any run
//! ([`matrix`]), the locality table of a topology-routing run beside each variant's hints
//! verdict ([`locality`]), and the table of a service-scaling sweep ([`sweep`]). Pure
//! functions of the results; the HTML report is `report`'s.

pub mod locality;
pub mod matrix;
pub mod sweep;
