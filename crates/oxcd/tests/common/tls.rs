//! Client TLS for black-box tests: a throwaway CA with certificates for
//! 127.0.0.1 ([`tls_files`]) and a one-member cluster that serves clients
//! only over TLS with client certificates required ([`TlsMember`]).

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{free_port, server_binary, POLL, READY_DEADLINE};

/// A throwaway CA in a temp dir that issues leaf certificates as files.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate's file.
    pub ca_file: String,
}

impl TestCa {
    /// A CA whose Common Name is `name`.
    pub fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let ca_file = write(dir.path(), "ca.crt", &ca.pem());
        TestCa { dir, ca, ca_file }
    }

    /// A certificate for `hosts` with Common Name `cn` (an organization
    /// name instead when `None`) and `usages`, written as `NAME.crt` and
    /// `NAME.key`; returns the two paths.
    pub fn leaf(
        &self,
        name: &str,
        cn: Option<&str>,
        hosts: &[&str],
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (String, String) {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_string()).collect();
        let mut p = CertificateParams::new(hosts).expect("params");
        p.distinguished_name = DistinguishedName::new();
        match cn {
            Some(cn) => p.distinguished_name.push(DnType::CommonName, cn),
            None => p.distinguished_name.push(DnType::OrganizationName, "oxcd"),
        }
        p.extended_key_usages = usages;
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        (
            write(self.dir.path(), &format!("{name}.crt"), &cert.pem()),
            write(
                self.dir.path(),
                &format!("{name}.key"),
                &key.serialize_pem(),
            ),
        )
    }
}

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p.display().to_string()
}

/// A CA and certificates for 127.0.0.1, written to a temp dir.
pub struct TlsFiles {
    _ca: TestCa,
    pub ca: String,
    /// 127.0.0.1, for server and client use.
    pub server_crt: String,
    pub server_key: String,
    /// A client certificate without a Common Name (the proxy's).
    pub client_crt: String,
    pub client_key: String,
}

pub fn tls_files() -> TlsFiles {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ca = TestCa::new("proxy tls test ca");
    let (server_crt, server_key) = ca.leaf(
        "server",
        Some("127.0.0.1"),
        &["127.0.0.1"],
        vec![ServerAuth, ClientAuth],
    );
    let (client_crt, client_key) = ca.leaf("client", None, &["127.0.0.1"], vec![ClientAuth]);
    TlsFiles {
        ca: ca.ca_file.clone(),
        _ca: ca,
        server_crt,
        server_key,
        client_crt,
        client_key,
    }
}

/// A one-member cluster serving clients over TLS only, with client
/// certificates required (`--client-cert-auth`). SIGKILLed (by pid) and
/// reaped on drop.
pub struct TlsMember {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsMember {
    pub async fn start(f: &TlsFiles) -> TlsMember {
        let mut last = String::new();
        for _ in 0..3 {
            let mut m = TlsMember::spawn(f);
            match m.wait_ready().await {
                Ok(()) => return m,
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("TLS member did not become ready:\n{log}"),
            }
        }
        panic!("TLS member failed to start three times (ports in use):\n{last}");
    }

    fn spawn(f: &TlsFiles) -> TlsMember {
        let dir = tempfile::Builder::new()
            .prefix("oxcd-bbx-tls-")
            .tempdir()
            .expect("create temp dir");
        let (port, peer) = (free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("create log");
        let mut cmd = Command::new(server_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--name", "m0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg(format!("--initial-cluster=m0={peer_url}"))
            .args(["--cert-file", &f.server_crt, "--key-file", &f.server_key])
            .args(["--trusted-ca-file", &f.ca, "--client-cert-auth"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", server_binary().display()));
        TlsMember { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let log = self.log();
            if log.contains("ready to serve client requests") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("exited with {status}:\n{log}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready in time:\n{log}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
