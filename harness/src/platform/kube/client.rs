//! Connecting to a cluster: the kubeconfig from `--kubeconfig`, else `KUBECONFIG`, else
//! `~/.kube/config` (in-cluster credentials when none exists and nothing was asked for), the
//! context from `--context` or the current one. Connecting ends with one cheap call
//! (`GET /version`) under a deadline, so an unreachable or misconfigured cluster fails fast
//! with its server URL, context and cause, before the run creates anything.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::KubeError;

/// TCP connect deadline of every API call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the first call: TLS, authentication (exec plugins included) and an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find a cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSource {
    /// `--kubeconfig`; otherwise `KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`; otherwise the kubeconfig's current context.
    pub context: Option<String>,
}

/// A connected cluster and how to name it in messages.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The API server URL.
    pub server: String,
    /// The kubeconfig context (`in-cluster` inside a pod).
    pub context: String,
    /// The server's `gitVersion` (e.g. `v1.33.1`).
    pub version: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Cluster {
    /// `https://… (context c)`: how errors name the cluster.
    pub fn describe(&self) -> String {
        describe(&self.server, &self.context)
    }

    /// An error from an API call, naming the cluster and what was being done.
    pub fn api_error(&self, what: impl Into<String>, e: &kube::Error) -> KubeError {
        KubeError::Api { cluster: self.describe(), what: what.into(), cause: error_chain(e) }
    }
}

pub fn describe(server: &str, context: &str) -> String {
    format!("{server} (context {context})")
}

/// Loads the kubeconfig, builds a client and checks the API server answers.
pub async fn connect(source: &ClusterSource) -> Result<Cluster, KubeError> {
    let (mut config, context) = load_config(source).await?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string().trim_end_matches('/').to_string();
    let client = Client::try_from(config).map_err(|e| KubeError::Unreachable {
        cluster: describe(&server, &context),
        cause: format!("building the client: {}", error_chain(&e)),
    })?;
    let version = match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(info)) => info.git_version,
        // An answer that refuses us: reachable, but the credentials or RBAC are wrong.
        Ok(Err(e @ kube::Error::Api(_))) => {
            return Err(KubeError::Api {
                cluster: describe(&server, &context),
                what: "checking access (GET /version)".into(),
                cause: error_chain(&e),
            })
        }
        Ok(Err(e)) => {
            let mut cause = error_chain(&e);
            // The connector's deadline covers the TCP connect and the TLS handshake; say so
            // rather than leave hyper's bare "deadline has elapsed".
            if cause.contains("deadline has elapsed") {
                cause = format!("no connection (TCP and TLS) within {CONNECT_TIMEOUT:?}: {cause}");
            }
            return Err(KubeError::Unreachable { cluster: describe(&server, &context), cause });
        }
        Err(_) => {
            return Err(KubeError::Unreachable {
                cluster: describe(&server, &context),
                cause: format!("no answer to GET /version within {PROBE_TIMEOUT:?}"),
            })
        }
    };
    Ok(Cluster { client, server, context, version })
}

async fn load_config(source: &ClusterSource) -> Result<(Config, String), KubeError> {
    let (kubeconfig, origin) = match &source.kubeconfig {
        Some(path) => (read(path)?, path.display().to_string()),
        None => match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            Some(v) => {
                let origin = format!("KUBECONFIG={}", v.to_string_lossy());
                let kc = Kubeconfig::from_env()
                    .map_err(|e| KubeError::Kubeconfig { origin: origin.clone(), cause: error_chain(&e) })?
                    .unwrap_or_default();
                (kc, origin)
            }
            None => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                let path = home.join(".kube/config");
                if !path.exists() && source.context.is_none() {
                    return in_cluster(&path);
                }
                (read(&path)?, path.display().to_string())
            }
        },
    };
    let context = match &source.context {
        Some(c) => c.clone(),
        None => kubeconfig.current_context.clone().filter(|c| !c.is_empty()).ok_or_else(|| KubeError::Kubeconfig {
            origin: origin.clone(),
            cause: "no current-context; pass --context".into(),
        })?,
    };
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        let known: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
        return Err(KubeError::Kubeconfig {
            origin,
            cause: format!(
                "no context {context:?} (contexts: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ),
        });
    }
    let options = KubeConfigOptions { context: Some(context.clone()), ..Default::default() };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(|e| KubeError::Kubeconfig {
        origin: format!("{origin}, context {context}"),
        cause: error_chain(&e),
    })?;
    Ok((config, context))
}

fn read(path: &std::path::Path) -> Result<Kubeconfig, KubeError> {
    Kubeconfig::read_from(path)
        .map_err(|e| KubeError::Kubeconfig { origin: path.display().to_string(), cause: error_chain(&e) })
}

fn in_cluster(missing: &std::path::Path) -> Result<(Config, String), KubeError> {
    Config::incluster().map(|c| (c, "in-cluster".to_string())).map_err(|e| KubeError::Kubeconfig {
        origin: missing.display().to_string(),
        cause: format!(
            "not found, KUBECONFIG is unset, and in-cluster credentials are unusable ({}); pass --kubeconfig",
            error_chain(&e)
        ),
    })
}

/// An error and its sources on one line, each repeated part said once (hyper and kube wrap
/// the same cause several times).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.retain(|p| !s.contains(p.as_str()));
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}
