//! The allowed-CN / allowed-hostname client verifier, with certificates
//! issued by an rcgen CA.

use super::*;
use oxcd_raft::tls_error::{self, Side, CLIENT_CERT_AUTH_FAILED};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
struct Leaf {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Self {
        Self::named("test ca")
    }

    fn named(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { ca }
    }

    fn leaf(&self, cn: &str, sans: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn verifier(&self, allowed: AllowedClient) -> CheckedClientVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        CheckedClientVerifier {
            inner,
            trusted: vec![self.ca.der().clone()],
            allowed: Some(allowed),
            revoked: None,
        }
    }
}

#[test]
fn a_trusted_ca_certificate_is_accepted_as_its_own_client_certificate() {
    // As Go does (etcd's CommonName-root fixture is its own CA); another
    // self-signed CA is not trusted.
    let pki = Pki::named("root");
    let now = UnixTime::now();
    let ca = pki.ca.der().clone();
    assert_eq!(leaf_cn(&ca).as_deref(), Some("root"));
    let v = pki.verifier(AllowedClient::CommonName("root".into()));
    assert!(v.verify_client_cert(&ca, &[], now).is_ok());
    let other = Pki::named("root");
    assert!(v.verify_client_cert(other.ca.der(), &[], now).is_err());
    // The allowed-CN rule still applies to it.
    let v = pki.verifier(AllowedClient::CommonName("someone else".into()));
    assert_eq!(
        v.verify_client_cert(&ca, &[], now).unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
    );
}

fn verify(v: &CheckedClientVerifier, leaf: &Leaf) -> Result<ClientCertVerified, rustls::Error> {
    v.verify_client_cert(&leaf.der, &[], UnixTime::now())
}

#[test]
fn common_name_must_match_exactly() {
    let pki = Pki::new();
    let v = pki.verifier(AllowedClient::CommonName("example.com".into()));
    assert!(verify(&v, &pki.leaf("example.com", &["localhost"])).is_ok());
    let err = verify(&v, &pki.leaf("example2.com", &["example.com"])).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
    );
    assert_eq!(
        tls_error::describe(&err, Side::Server),
        CLIENT_CERT_AUTH_FAILED
    );
    // Case matters for the CN, as in Go.
    assert!(verify(&v, &pki.leaf("Example.com", &[])).is_err());
}

#[test]
fn hostname_matches_dns_and_ip_sans() {
    let pki = Pki::new();
    let leaf = pki.leaf("example2.com", &["localhost", "*.peers.test", "127.0.0.1"]);
    for ok in [
        "localhost",
        "LOCALHOST.",
        "a.peers.test",
        "127.0.0.1",
        "::ffff:127.0.0.1",
    ] {
        let v = pki.verifier(AllowedClient::Hostname(ok.into()));
        assert!(verify(&v, &leaf).is_ok(), "{ok} should match");
    }
    // The CN is not a host name (no legacy CN fallback), the wildcard covers
    // one label only, IPs match IP SANs only.
    for bad in [
        "example2.com",
        "a.b.peers.test",
        "peers.test",
        "127.0.0.2",
        "[::1]",
    ] {
        let v = pki.verifier(AllowedClient::Hostname(bad.into()));
        assert!(verify(&v, &leaf).is_err(), "{bad} should not match");
    }
}

#[test]
fn chain_is_still_verified() {
    let pki = Pki::new();
    let other = Pki::named("another ca");
    let v = pki.verifier(AllowedClient::CommonName("example.com".into()));
    let err = verify(&v, &other.leaf("example.com", &[])).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn cn_and_hostname_are_mutually_exclusive() {
    let s = TlsSettings {
        allowed_cn: Some("a".into()),
        allowed_hostname: Some("b".into()),
        ..TlsSettings::default()
    };
    let err = s.allowed_client().unwrap_err().to_string();
    assert!(err.contains("mutually exclusive"), "{err}");
    let s = TlsSettings {
        allowed_cn: Some(String::new()),
        allowed_hostname: Some("b".into()),
        ..TlsSettings::default()
    };
    assert_eq!(
        s.allowed_client().unwrap(),
        Some(AllowedClient::Hostname("b".into()))
    );
}

/// A full handshake against `server_config`: a refused client reads etcd's
/// `remote error: tls: bad certificate`, the server sees
/// `client certificate authentication failed`.
#[tokio::test]
async fn refused_client_gets_bad_certificate_alert() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let server_leaf = pki.leaf("example.com", &["localhost", "127.0.0.1"]);
    let settings = TlsSettings {
        cert_file: Some(write("server.crt", &server_leaf.cert_pem)),
        key_file: Some(write("server.key", &server_leaf.key_pem)),
        trusted_ca_file: Some(write("ca.crt", &pki.ca.pem())),
        client_cert_auth: true,
        allowed_cn: Some("example.com".into()),
        ..TlsSettings::default()
    };
    let server = tokio_rustls::TlsAcceptor::from(settings.server_config().unwrap());

    for (cn, accepted) in [("example.com", true), ("example2.com", false)] {
        let client_leaf = pki.leaf(cn, &["localhost"]);
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(client_leaf.key_pem.as_bytes()).unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_leaf.der.clone()], key)
        .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));

        let (c, s) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn({
            let server = server.clone();
            async move {
                let mut tls = server.accept(s).await?;
                let mut buf = [0u8; 4];
                tls.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            }
        });
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        // TLS 1.3: the client finishes first; the refusal arrives as an alert.
        let client = async {
            let mut tls = connector.connect(name, c).await?;
            tls.write_all(b"ping").await?;
            tls.flush().await?;
            let mut buf = [0u8; 1];
            tls.read(&mut buf).await
        }
        .await;
        let served = srv.await.unwrap();
        if accepted {
            assert_eq!(&served.unwrap(), b"ping");
        } else {
            let server_err = served.unwrap_err();
            assert_eq!(
                tls_error::describe(&server_err, Side::Server),
                CLIENT_CERT_AUTH_FAILED
            );
            let client_err = client.unwrap_err();
            assert_eq!(
                tls_error::describe(&client_err, Side::Client),
                "remote error: tls: bad certificate"
            );
        }
    }
}

/// A CRL revoking `serials`, signed by the test CA, as PEM.
fn crl_pem(pki: &Pki, serials: &[&[u8]]) -> String {
    let params = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2025, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(s),
                revocation_time: rcgen::date_time_ymd(2025, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params.signed_by(&pki.ca).unwrap().pem().unwrap()
}

fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.raw_serial().to_vec()
}

/// `--client-crl-file`: a revoked client is refused after its chain
/// verified; the file is read again when it changes.
#[test]
fn revoked_clients_are_refused_and_the_list_is_reread() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf("a", &["localhost"]), pki.leaf("b", &["localhost"]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revoke.crl");
    std::fs::write(&path, crl_pem(&pki, &[&serial(&a.der)])).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let v = CheckedClientVerifier {
        inner,
        trusted: vec![pki.ca.der().clone()],
        allowed: None,
        revoked: Some(crl::Revoked::load(&path).unwrap()),
    };
    let now = UnixTime::now();
    let err = v.verify_client_cert(&a.der, &[], now).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    );
    assert!(v.verify_client_cert(&b.der, &[], now).is_ok());

    std::fs::write(&path, crl_pem(&pki, &[&serial(&b.der)])).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert!(v.verify_client_cert(&a.der, &[], now).is_ok());
    assert!(v.verify_client_cert(&b.der, &[], now).is_err());

    std::fs::write(&path, "not a CRL").unwrap();
    assert!(crl::Revoked::load(&path).is_err());
}
