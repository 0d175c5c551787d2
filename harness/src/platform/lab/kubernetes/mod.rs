//! The pieces that make the lab a real Kubernetes cluster (etcd, kube-apiserver and
//! kube-controller-manager in a control-plane namespace of the lab, built by
//! `scripts/kube-binaries.sh`), each self-contained so the control-plane launcher only
//! composes them:
//!
//! - [`pki`]: the cluster's CA and every certificate and key the components and clients
//!   present, generated in-process (no openssl CLI at run time);
//! - [`kubeconfig`]: self-contained kubeconfig files (certificates embedded) for those
//!   clients.

pub mod kubeconfig;
pub mod pki;
