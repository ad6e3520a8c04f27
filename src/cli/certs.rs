//! `agora certs`: a cluster's own CA and the certificates it signs, so that
//! TLS is one command away. The CA is made on first use and kept in the
//! output directory; later calls sign with it.

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The CA's name: the issuer of every certificate it signs is rebuilt from
/// it and its key, so no certificate parser is needed to sign again.
const CA_NAME: &str = "Agora cluster CA";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Makes (or reuses) `out/ca.pem` and signs `out/NAME.pem` for `hosts`
/// (names or IP addresses), good for serving and as a client certificate.
/// Returns the certificate's SHA-256 (for an auth file's
/// `certificate_sha256`).
pub fn issue(out: &Path, name: &str, hosts: &[String]) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "--name `{name}`: use letters, digits, `-`, `_` and `.`"
    );
    anyhow::ensure!(
        !hosts.is_empty(),
        "--hosts: name at least one host or address"
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (ca_pem, ca_key_pem) = (out.join("ca.pem"), out.join("ca-key.pem"));
    if !ca_key_pem.exists() {
        let key = KeyPair::generate().context("generating the CA key")?;
        let certificate = ca_params().self_signed(&key).context("signing the CA")?;
        write_private(&ca_key_pem, &key.serialize_pem())?;
        std::fs::write(&ca_pem, certificate.pem())
            .with_context(|| format!("writing {}", ca_pem.display()))?;
        eprintln!("agora certs: made a new CA in {}", ca_pem.display());
    }
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(&ca_key_pem)
            .with_context(|| format!("reading {}", ca_key_pem.display()))?,
    )
    .context("the CA key")?;
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .with_context(|| format!("--hosts: `{h}` is not a host name or address")),
        })
        .collect::<anyhow::Result<_>>()?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().context("generating a key")?;
    let certificate = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    let (cert_path, key_path) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}-key.pem")),
    );
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, certificate.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(agora_proto::tls::certificate_sha256_hex(certificate.der()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_signed_by_one_ca_load_as_a_server_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = issue(
            dir.path(),
            "master",
            &["127.0.0.1".into(), "localhost".into()],
        )
        .expect("issued");
        let ca_before = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        let second = issue(dir.path(), "ops", &["ops".into()]).expect("issued again");
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).expect("ca"),
            ca_before,
            "the CA is kept"
        );
        let files = agora_proto::tls::ServerTlsFiles {
            certificate: dir.path().join("master.pem"),
            key: dir.path().join("master-key.pem"),
            client_ca: Some(dir.path().join("ca.pem")),
        };
        files.config().expect("a usable server configuration");
        assert!(issue(dir.path(), "bad name", &["h".into()]).is_err());
        assert!(issue(dir.path(), "x", &[]).is_err());
    }
}
