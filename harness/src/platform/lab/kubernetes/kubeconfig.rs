//! kubeconfig files for the kube lab's clients: the admin's kubectl, kube-controller-manager,
//! kube-proxy and the node agents each get one naming the apiserver, the lab's CA and their
//! own client certificate ([`super::pki`]). The certificates and the key are embedded
//! (`*-data`, base64), so each file stands alone: it can be copied, or handed to a process
//! in another mount or network namespace, without the PKI directory beside it. It holds a
//! private key, so it is written with mode 0600.
//!
//! Names: the cluster and the context are `zonebench-lab-<id>` (the current context), the
//! user `zonebench-lab-<id>-<user>`, so kubeconfigs of several labs merge without clashes.

use std::path::Path;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use serde::Serialize;

use super::pki::{write_file, CertKey};

/// What one kubeconfig names.
#[derive(Debug, Clone, Copy)]
pub struct KubeconfigSpec<'a> {
    /// The lab's id: the cluster and context are `zonebench-lab-<id>`.
    pub lab_id: &'a str,
    /// The apiserver's URL, e.g. `https://127.0.0.1:6443` (https only: it serves TLS).
    pub server: &'a str,
    /// The CA that signed the apiserver's certificate (the lab's `ca.crt`).
    pub ca_cert: &'a Path,
    /// The client's certificate and key.
    pub client: &'a CertKey,
    /// Who the client is, e.g. `admin`, `kube-proxy`, `node-a-1`.
    pub user: &'a str,
}

/// The cluster and context name of lab `lab_id`.
pub fn context_name(lab_id: &str) -> String {
    format!("zonebench-lab-{lab_id}")
}

/// The user entry's name for `user` of lab `lab_id`.
pub fn user_name(lab_id: &str, user: &str) -> String {
    format!("zonebench-lab-{lab_id}-{user}")
}

#[derive(Serialize)]
struct File {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    users: Vec<NamedUser>,
    #[serde(rename = "current-context")]
    current_context: String,
}

#[derive(Serialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Serialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Serialize)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Serialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Serialize)]
struct User {
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: String,
    #[serde(rename = "client-key-data")]
    client_key_data: String,
}

/// The kubeconfig YAML for `spec`, reading the PEM files it names.
pub fn render(spec: &KubeconfigSpec<'_>) -> anyhow::Result<String> {
    if !spec.server.starts_with("https://") {
        bail!("the apiserver URL {:?} is not https:// (the apiserver serves TLS only)", spec.server);
    }
    if spec.lab_id.is_empty() || spec.user.is_empty() {
        bail!("a kubeconfig needs a lab id and a user name (got {:?} and {:?})", spec.lab_id, spec.user);
    }
    let b64 = |what: &str, p: &Path| -> anyhow::Result<String> {
        let pem = std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(pem))
    };
    let context = context_name(spec.lab_id);
    let user = user_name(spec.lab_id, spec.user);
    let file = File {
        api_version: "v1",
        kind: "Config",
        clusters: vec![NamedCluster {
            name: context.clone(),
            cluster: Cluster { server: spec.server.to_string(), certificate_authority_data: b64("CA", spec.ca_cert)? },
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Context { cluster: context.clone(), user: user.clone() },
        }],
        users: vec![NamedUser {
            name: user,
            user: User {
                client_certificate_data: b64("client certificate", &spec.client.cert)?,
                client_key_data: b64("client key", &spec.client.key)?,
            },
        }],
        current_context: context,
    };
    serde_saphyr::to_string(&file).context("writing the kubeconfig as YAML")
}

/// Writes the kubeconfig for `spec` to `path`, mode 0600 (it embeds a private key).
pub fn write(path: &Path, spec: &KubeconfigSpec<'_>) -> anyhow::Result<()> {
    let yaml = render(spec).with_context(|| format!("the kubeconfig {}", path.display()))?;
    write_file(path, yaml.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::lab::kubernetes::pki::Pki;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zb-kubeconfig-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn kube_rs_reads_the_cluster_the_ca_and_the_embedded_client_certificate() {
        let dir = scratch("parse");
        let pki = Pki::generate(&dir, &[], &["a-1".into()]).unwrap();
        let path = dir.join("kube-proxy.kubeconfig");
        let spec = KubeconfigSpec {
            lab_id: "1a2b",
            server: "https://127.0.0.1:6443",
            ca_cert: &pki.ca.cert,
            client: &pki.kube_proxy,
            user: "kube-proxy",
        };
        write(&path, &spec).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("zonebench-lab-1a2b"));
        assert_eq!(kc.auth_infos[0].name, "zonebench-lab-1a2b-kube-proxy");
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        let roots = config.root_cert.clone().unwrap();
        assert_eq!(roots.len(), 1);
        let ca_pem = std::fs::read_to_string(&pki.ca.cert).unwrap();
        let ca_der = base64::engine::general_purpose::STANDARD
            .decode(ca_pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .unwrap();
        assert_eq!(roots[0], ca_der, "the root is the lab's CA");
        let cert = config.auth_info.client_certificate_data.as_deref().unwrap();
        let cert = base64::engine::general_purpose::STANDARD.decode(cert).unwrap();
        assert_eq!(cert, std::fs::read(&pki.kube_proxy.cert).unwrap());
        // Building a client parses the identity (certificate + key) and the roots for rustls.
        kube::Client::try_from(config).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_plain_http_server_or_a_missing_file_is_an_error_naming_it() {
        let dir = scratch("errors");
        let pki = Pki::generate(&dir, &[], &[]).unwrap();
        let mut spec = KubeconfigSpec {
            lab_id: "1a2b",
            server: "http://127.0.0.1:8080",
            ca_cert: &pki.ca.cert,
            client: &pki.admin,
            user: "admin",
        };
        let e = format!("{:#}", write(&dir.join("k"), &spec).unwrap_err());
        assert!(e.contains("not https://"), "{e}");
        spec.server = "https://127.0.0.1:6443";
        let missing = dir.join("nope.crt");
        spec.ca_cert = &missing;
        let e = format!("{:#}", write(&dir.join("k"), &spec).unwrap_err());
        assert!(e.contains("reading the CA") && e.contains("nope.crt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
