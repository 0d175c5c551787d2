//! Kubernetes topology: which zone serves whom, and what crossing zones costs.

pub mod locality;
