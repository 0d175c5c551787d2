//! The kube lab's certificates. A real kube-apiserver serves TLS only and authenticates its
//! clients by certificate, so the lab needs its own small PKI: a CA, the apiserver's serving
//! certificate, one client certificate per component and user, and the service-account
//! signing key pair. zonebench generates them itself with `rcgen` (pure Rust, on ring), so a
//! lab needs neither the openssl CLI nor kubeadm at run time.
//!
//! Every key is ECDSA P-256 (kube-apiserver, kube-controller-manager, kube-proxy and kubectl
//! all accept EC keys; private keys are written as PKCS#8 `PRIVATE KEY` PEM, mode 0600).
//! Certificates are valid for [`VALIDITY`] (one year, backdated an hour): a lab lives for
//! one run or one `lab up` session, and is generated afresh each time, so nothing renews.
//!
//! What each component is given (the launcher's flags):
//!
//! | file | used as |
//! |---|---|
//! | `ca.crt` | apiserver `--client-ca-file`; every kubeconfig's CA; controller-manager `--root-ca-file` |
//! | `ca.crt`, `ca.key` | controller-manager `--cluster-signing-cert-file`/`--cluster-signing-key-file` |
//! | `apiserver.crt`, `apiserver.key` | apiserver `--tls-cert-file`/`--tls-private-key-file` |
//! | `sa.pub` | apiserver `--service-account-key-file` |
//! | `sa.key` | apiserver `--service-account-signing-key-file`; controller-manager `--service-account-private-key-file` |
//! | `admin.*`, `kube-controller-manager.*`, `kube-scheduler.*`, `kube-proxy.*`, `node-<name>.*` | client certificates, in kubeconfigs ([`super::kubeconfig`]) |

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

/// How long every certificate is valid. Labs are short-lived and regenerate their PKI each
/// time they are built; a year only has to outlast the longest `lab up` session.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this long before now, so a clock a little behind does not reject them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The CA's common name.
pub const CA_CN: &str = "zonebench-lab-ca";
/// The apiserver serving certificate's common name.
pub const APISERVER_CN: &str = "kube-apiserver";
/// The admin user: in `system:masters`, which RBAC lets do anything.
pub const ADMIN_CN: &str = "zonebench-admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The names the default RBAC roles bind (system:kube-controller-manager, system:node-proxier).
pub const CONTROLLER_MANAGER_CN: &str = "system:kube-controller-manager";
pub const KUBE_PROXY_CN: &str = "system:kube-proxy";
/// The user the default RBAC role system:kube-scheduler binds.
pub const SCHEDULER_CN: &str = "system:kube-scheduler";
/// A node agent is `system:node:<name>` in `system:nodes`, which the Node authorizer knows.
pub const NODE_CN_PREFIX: &str = "system:node:";
pub const NODES_GROUP: &str = "system:nodes";
/// DNS names the apiserver answers to inside the cluster, besides `localhost`.
pub const APISERVER_DNS: [&str; 5] =
    ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"];

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The lab cluster's PKI, written to [`Pki::dir`]: the paths of every file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    pub dir: PathBuf,
    /// `ca.crt`, `ca.key`.
    pub ca: CertKey,
    /// `apiserver.crt`, `apiserver.key`: serverAuth, with the SANs given to [`Pki::generate`].
    pub apiserver: CertKey,
    /// `admin.crt`: CN [`ADMIN_CN`], O [`ADMIN_GROUP`].
    pub admin: CertKey,
    /// `kube-controller-manager.crt`: CN [`CONTROLLER_MANAGER_CN`].
    pub controller_manager: CertKey,
    /// `kube-proxy.crt`: CN [`KUBE_PROXY_CN`].
    pub kube_proxy: CertKey,
    /// `kube-scheduler.crt`: CN [`SCHEDULER_CN`].
    pub scheduler: CertKey,
    /// `node-<name>.crt` for each node: CN `system:node:<name>`, O [`NODES_GROUP`].
    pub nodes: BTreeMap<String, CertKey>,
    /// `sa.key`: the service-account token signing key (PKCS#8 PEM).
    pub service_account_key: PathBuf,
    /// `sa.pub`: its public key (PKIX `PUBLIC KEY` PEM), for verifying tokens.
    pub service_account_pub: PathBuf,
}

impl Pki {
    /// Generates a fresh PKI into `dir` (created if missing, mode 0700; files there are
    /// overwritten). The apiserver's certificate names each of `apiserver_ips` (the caller
    /// passes its listen addresses and the first Service IP, e.g. 10.96.0.1), 127.0.0.1,
    /// and [`APISERVER_DNS`]. `nodes` are Kubernetes node names, one client certificate each.
    pub fn generate(dir: &Path, apiserver_ips: &[IpAddr], nodes: &[String]) -> anyhow::Result<Pki> {
        for (i, n) in nodes.iter().enumerate() {
            check_node_name(n)?;
            if nodes[..i].contains(n) {
                bail!("node {n:?} is named twice");
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the PKI directory {}", dir.display()))?;
        let now = SystemTime::now();
        let not_before = to_time(now.checked_sub(BACKDATE).unwrap_or(now))?;
        let not_after = to_time(now + VALIDITY)?;
        let validity = |mut p: CertificateParams| {
            p.not_before = not_before;
            p.not_after = not_after;
            p
        };

        let ca_key = new_key("the CA")?;
        let mut ca = validity(CertificateParams::default());
        ca.distinguished_name = name(CA_CN, None);
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).context("signing the CA certificate")?;
        let ca_files = write_pair(dir, "ca", &ca_cert.pem(), &ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |file: &str, cn: &str, org: Option<&str>, eku: ExtendedKeyUsagePurpose, sans: Vec<SanType>| {
            let key = new_key(file)?;
            let mut p = validity(CertificateParams::default());
            p.distinguished_name = name(cn, org);
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![eku];
            p.subject_alt_names = sans;
            p.use_authority_key_identifier_extension = true;
            let cert = p.signed_by(&key, &issuer).with_context(|| format!("signing the {file} certificate"))?;
            write_pair(dir, file, &cert.pem(), &key)
        };
        let client =
            |file: &str, cn: &str, org: Option<&str>| leaf(file, cn, org, ExtendedKeyUsagePurpose::ClientAuth, vec![]);

        // The caller's IPs in order, then 127.0.0.1, each once.
        let mut sans: Vec<SanType> = Vec::new();
        for ip in apiserver_ips.iter().copied().chain([IpAddr::V4(Ipv4Addr::LOCALHOST)]) {
            if !sans.contains(&SanType::IpAddress(ip)) {
                sans.push(SanType::IpAddress(ip));
            }
        }
        for dns in APISERVER_DNS {
            sans.push(SanType::DnsName(dns.try_into().with_context(|| format!("the DNS name {dns}"))?));
        }
        let apiserver = leaf("apiserver", APISERVER_CN, None, ExtendedKeyUsagePurpose::ServerAuth, sans)?;
        let admin = client("admin", ADMIN_CN, Some(ADMIN_GROUP))?;
        let controller_manager = client("kube-controller-manager", CONTROLLER_MANAGER_CN, None)?;
        let kube_proxy = client("kube-proxy", KUBE_PROXY_CN, None)?;
        let scheduler = client("kube-scheduler", SCHEDULER_CN, None)?;
        let mut node_files = BTreeMap::new();
        for n in nodes {
            let files = client(&format!("node-{n}"), &format!("{NODE_CN_PREFIX}{n}"), Some(NODES_GROUP))?;
            node_files.insert(n.clone(), files);
        }

        let sa = new_key("the service-account signing key")?;
        let service_account_key = dir.join("sa.key");
        write_file(&service_account_key, sa.serialize_pem().as_bytes(), 0o600)?;
        let service_account_pub = dir.join("sa.pub");
        write_file(&service_account_pub, sa.public_key_pem().as_bytes(), 0o644)?;

        Ok(Pki {
            dir: dir.to_path_buf(),
            ca: ca_files,
            apiserver,
            admin,
            controller_manager,
            kube_proxy,
            scheduler,
            nodes: node_files,
            service_account_key,
            service_account_pub,
        })
    }

    /// The client certificate of node `name`, if it was generated.
    pub fn node(&self, name: &str) -> Option<&CertKey> {
        self.nodes.get(name)
    }
}

/// A Kubernetes node name (a DNS-1123 subdomain), which also makes a safe file name.
fn check_node_name(n: &str) -> anyhow::Result<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if n.len() > 253 || !n.chars().all(ok_char) || !ok_end(n.chars().next()) || !ok_end(n.chars().last()) {
        bail!("{n:?} is not a Kubernetes node name (lowercase letters, digits, '-' and '.', at most 253)");
    }
    Ok(())
}

fn new_key(what: &str) -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).with_context(|| format!("generating the key of {what}"))
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn to_time(t: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let secs = i64::try_from(secs).context("the clock is out of range")?;
    time::OffsetDateTime::from_unix_timestamp(secs).context("the clock is out of range")
}

/// Writes `<stem>.crt` (0644) and `<stem>.key` (0600) into `dir`.
fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) -> anyhow::Result<CertKey> {
    let files = CertKey { cert: dir.join(format!("{stem}.crt")), key: dir.join(format!("{stem}.key")) };
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert_pem.as_bytes(), 0o644)?;
    Ok(files)
}

/// Writes `path` with `mode`, also when it existed with another (the mode is set before
/// anything is written, so a key is never readable by others, not even briefly).
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    f.write_all(contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zb-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).output().expect(
            "running openssl (the tests check the certificates with it; install it: apt-get install -y openssl)",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "openssl {args:?}: {text}");
        text
    }

    fn text(cert: &Path) -> String {
        openssl(&["x509", "-noout", "-text", "-nameopt", "RFC2253", "-in", cert.to_str().unwrap()])
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn every_certificate_verifies_against_the_ca_with_its_subject_usage_and_sans() {
        let dir = scratch("gen");
        let ips: Vec<IpAddr> =
            vec!["10.250.0.2".parse().unwrap(), "10.96.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let pki = Pki::generate(&dir, &ips, &["a-1".into(), "b-1".into()]).unwrap();
        assert_eq!(pki.ca.cert, dir.join("ca.crt"));
        assert_eq!(pki.node("b-1").unwrap().cert, dir.join("node-b-1.crt"));
        assert_eq!(mode(&dir), 0o700);

        let ca = pki.ca.cert.to_str().unwrap();
        let ca_text = text(&pki.ca.cert);
        assert!(ca_text.contains("Subject: CN=zonebench-lab-ca"), "{ca_text}");
        assert!(ca_text.contains("CA:TRUE"), "{ca_text}");

        let mut leaves = vec![
            (&pki.apiserver, "CN=kube-apiserver", "TLS Web Server Authentication"),
            (&pki.admin, "O=system:masters,CN=zonebench-admin", "TLS Web Client Authentication"),
            (&pki.controller_manager, "CN=system:kube-controller-manager", "TLS Web Client Authentication"),
            (&pki.kube_proxy, "CN=system:kube-proxy", "TLS Web Client Authentication"),
            (&pki.scheduler, "CN=system:kube-scheduler", "TLS Web Client Authentication"),
        ];
        let a1 = pki.node("a-1").unwrap();
        leaves.push((a1, "O=system:nodes,CN=system:node:a-1", "TLS Web Client Authentication"));
        for (files, subject, usage) in &leaves {
            let cert = files.cert.to_str().unwrap();
            let verified = openssl(&["verify", "-CAfile", ca, cert]);
            assert!(verified.contains(": OK"), "{verified}");
            let t = text(&files.cert);
            // RFC 2253 lists the most specific part first: CN=…,O=….
            let rfc2253: Vec<&str> = subject.split(',').rev().collect();
            assert!(t.contains(&format!("Subject: {}", rfc2253.join(","))), "{subject}: {t}");
            assert!(t.contains("Issuer: CN=zonebench-lab-ca"), "{t}");
            assert!(t.contains(usage), "{subject}: {t}");
            assert!(t.contains("CA:FALSE"), "{t}");
            assert!(t.contains("ASN1 OID: prime256v1"), "{t}");
            assert_eq!(mode(&files.key), 0o600, "{}", files.key.display());
            let key = std::fs::read_to_string(&files.key).unwrap();
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
            // The key is the certificate's: their public keys agree.
            let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", cert]);
            let from_key = openssl(&["pkey", "-pubout", "-in", files.key.to_str().unwrap()]);
            assert_eq!(from_cert, from_key, "{}", files.key.display());
        }
        for other in [&pki.admin, &pki.kube_proxy, a1] {
            assert!(!text(&other.cert).contains("Server Authentication"));
        }

        let api = text(&pki.apiserver.cert);
        let sans = api.lines().skip_while(|l| !l.contains("Subject Alternative Name")).nth(1).unwrap().trim();
        assert_eq!(
            sans,
            "IP Address:10.250.0.2, IP Address:10.96.0.1, IP Address:127.0.0.1, DNS:kubernetes, \
             DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, \
             DNS:localhost"
        );
        let dates = openssl(&["x509", "-noout", "-checkend", &(VALIDITY.as_secs() - 86400).to_string(), "-in", ca]);
        assert!(dates.contains("will not expire"), "{dates}");

        assert_eq!(mode(&pki.service_account_key), 0o600);
        let sa = std::fs::read_to_string(&pki.service_account_key).unwrap();
        assert!(sa.starts_with("-----BEGIN PRIVATE KEY-----"), "{sa}");
        let sa_pub = std::fs::read_to_string(&pki.service_account_pub).unwrap();
        assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"), "{sa_pub}");
        let derived = openssl(&["pkey", "-pubout", "-in", pki.service_account_key.to_str().unwrap()]);
        assert_eq!(derived.trim(), sa_pub.trim());

        // A second generation replaces the first: a new CA the old leaves do not verify against.
        let old_admin = std::fs::read(&pki.admin.cert).unwrap();
        let again = Pki::generate(&dir, &ips, &[]).unwrap();
        assert!(again.nodes.is_empty());
        assert_ne!(std::fs::read(&again.admin.cert).unwrap(), old_admin);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_node_name_that_is_no_kubernetes_name_or_is_repeated_is_refused() {
        let dir = scratch("names");
        for bad in ["", "A-1", "../x", "a/b", "-a", "a-"] {
            let e = Pki::generate(&dir, &[], &[bad.into()]).unwrap_err();
            assert!(format!("{e:#}").contains("not a Kubernetes node name"), "{bad:?}: {e:#}");
        }
        let e = Pki::generate(&dir, &[], &["a-1".into(), "a-1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("named twice"), "{e:#}");
        assert!(!dir.exists(), "nothing is written before the names are checked");
    }
}
