//! The pieces that make the lab a real Kubernetes cluster (etcd, kube-apiserver and
//! kube-controller-manager in a control-plane namespace of the lab, built by
//! `scripts/kube-binaries.sh`), each self-contained so the control-plane launcher only
//! composes them:
//!
//! - [`pki`]: the cluster's CA and every certificate and key the components and clients
//!   present, generated in-process (no openssl CLI at run time);
//! - [`kubeconfig`]: self-contained kubeconfig files (certificates embedded) for those
//!   clients;
//! - [`api_forwarder`]: `zonebench lab api-forwarder`, which lets a kubectl in the host's
//!   network namespace reach an apiserver that listens only inside a lab namespace.

pub mod api_forwarder;
pub mod kubeconfig;
pub mod pki;
