//! The cluster flags `run`, `render` and `gc` share, and the node inspector's default image.

use std::path::PathBuf;

use clap::Args;
use zonebench::platform::kube::ClusterSource;

/// Which cluster(s) to use.
#[derive(Args, Debug, Default, Clone)]
pub struct ClusterArgs {
    /// kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current one). `--context A=ctx-a --context B=ctx-b`
    /// runs the scenario on each cluster into one run, labelled A and B as the variant.
    #[arg(long = "context", value_name = "[LABEL=]CONTEXT")]
    pub contexts: Vec<String>,
}

impl ClusterArgs {
    pub fn given(&self) -> bool {
        self.kubeconfig.is_some() || !self.contexts.is_empty()
    }

    /// The one cluster of `render --discover` and `gc`.
    pub fn single(&self) -> Result<ClusterSource, String> {
        match self.targets()?.as_slice() {
            [] => Ok(ClusterSource { kubeconfig: self.kubeconfig.clone(), context: None }),
            [(None, ctx)] => Ok(ClusterSource { kubeconfig: self.kubeconfig.clone(), context: Some(ctx.clone()) }),
            _ => Err("this command takes one --context, without a label".into()),
        }
    }

    /// `(label, context)` of each `--context`; labelled all or none, labels unique.
    pub fn targets(&self) -> Result<Vec<(Option<String>, String)>, String> {
        let mut out: Vec<(Option<String>, String)> = Vec::new();
        for c in &self.contexts {
            let (label, ctx) = match c.split_once('=') {
                Some((l, ctx)) => {
                    if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                        return Err(format!("--context {c}: the label {l:?} must be letters, digits, '-', '_' or '.'"));
                    }
                    (Some(l.to_string()), ctx)
                }
                None => (None, c.as_str()),
            };
            if ctx.is_empty() {
                return Err(format!("--context {c}: no context name"));
            }
            if out.iter().any(|(l, _)| l.is_some() && *l == label) {
                return Err(format!("--context {c}: the label is used twice"));
            }
            out.push((label, ctx.to_string()));
        }
        let labelled = out.iter().filter(|(l, _)| l.is_some()).count();
        if out.len() > 1 && labelled != out.len() {
            return Err("several --context flags need a label each: --context A=ctx-a --context B=ctx-b".into());
        }
        Ok(out)
    }
}

/// The node inspector's default image: netshoot ships bash, iptables and nftables (the
/// Kubernetes debian-iptables build image has no `nft`, so nftables-mode clusters would get
/// no counts). Any image with bash and the counting tools will do (`--inspect-image`).
pub const DEFAULT_INSPECTOR_IMAGE: &str = "nicolaka/netshoot:v0.13";
