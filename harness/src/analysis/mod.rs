//! Judging runs: which measurements are "the same" across runs ([`metrics`]), how noisy a
//! run's repeats are ([`noise`]), the statistics a verdict rests on ([`stats`]), the
//! comparison of a candidate with a baseline ([`compare`]) and its output formats
//! ([`output`]).

pub mod capacity;
pub mod chain;
pub mod compare;
pub mod datatable;
pub mod group;
pub mod locality;
pub mod metrics;
pub mod noise;
pub mod output;
pub mod stats;
