//! TLS failures described in the words etcd (Go's `crypto/tls`) logs them,
//! so that tooling grepping etcd's logs finds the same text in oxcd's:
//! `remote error: tls: bad certificate` when the other side rejected us,
//! `client certificate authentication failed` when a server's
//! `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname` check refused
//! a client certificate.

use rustls::{AlertDescription, CertificateError};
use std::error::Error as StdError;

/// etcd's message for a client certificate that verified against the CA
/// but failed the allowed-CN / allowed-hostname check.
pub const CLIENT_CERT_AUTH_FAILED: &str = "client certificate authentication failed";

/// Which end of the handshake observed the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We accepted the connection (a listener).
    Server,
    /// We dialed (peer transport, clients).
    Client,
}

/// Finds the first [`rustls::Error`] in `err`'s source chain, looking inside
/// `std::io::Error`s too (whose `source()` skips the wrapped error itself).
pub fn find_rustls<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            cur = inner.source();
            continue;
        }
        cur = e.source();
    }
    None
}

/// Describes `err` as Go would, if a TLS error is in its source chain.
///
/// HTTP/2 (h2, hence hyper and tonic) re-creates I/O errors from their
/// text, so a received alert can also appear only as rustls's message
/// `received fatal alert: <Name>`; that form is recognised too.
pub fn describe_tls(err: &(dyn StdError + 'static), side: Side) -> Option<String> {
    if let Some(e) = find_rustls(err) {
        return Some(go_text(e, side));
    }
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(a) = parse_alert(&e.to_string()) {
            return Some(go_text(&rustls::Error::AlertReceived(a), side));
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}

/// Parses rustls's `received fatal alert: <Name>` text.
fn parse_alert(text: &str) -> Option<AlertDescription> {
    const PREFIX: &str = "received fatal alert: ";
    let name = &text[text.find(PREFIX)? + PREFIX.len()..];
    let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    (0..=u8::MAX)
        .map(AlertDescription::from)
        .find(|a| !matches!(a, AlertDescription::Unknown(_)) && format!("{a:?}") == name)
}

/// Describes `err`: the Go wording of a TLS failure in its chain, else the
/// error and its sources joined by `: `.
pub fn describe(err: &(dyn StdError + 'static), side: Side) -> String {
    describe_tls(err, side).unwrap_or_else(|| chain(err))
}

/// `err` and its sources, joined by `: `, skipping repeats.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// The Go `crypto/tls` wording of one rustls error.
pub fn go_text(err: &rustls::Error, side: Side) -> String {
    match err {
        rustls::Error::AlertReceived(a) => format!("remote error: tls: {}", alert_text(*a)),
        // A client verifier only reports a name mismatch from the
        // allowed-CN / allowed-hostname check (chain checks carry no name).
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) if side == Side::Server => CLIENT_CERT_AUTH_FAILED.to_string(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "x509: certificate signed by unknown authority".to_string()
        }
        rustls::Error::NoCertificatesPresented if side == Side::Server => {
            "tls: client didn't provide a certificate".to_string()
        }
        other => other.to_string(),
    }
}

/// Go's name for a TLS alert (`crypto/tls/alert.go`).
pub fn alert_text(a: AlertDescription) -> String {
    use AlertDescription as A;
    let s = match a {
        A::CloseNotify => "close notify",
        A::UnexpectedMessage => "unexpected message",
        A::BadRecordMac => "bad record MAC",
        A::DecryptionFailed => "decryption failed",
        A::RecordOverflow => "record overflow",
        A::DecompressionFailure => "decompression failure",
        A::HandshakeFailure => "handshake failure",
        A::BadCertificate => "bad certificate",
        A::UnsupportedCertificate => "unsupported certificate",
        A::CertificateRevoked => "revoked certificate",
        A::CertificateExpired => "expired certificate",
        A::CertificateUnknown => "unknown certificate",
        A::IllegalParameter => "illegal parameter",
        A::UnknownCA => "unknown certificate authority",
        A::AccessDenied => "access denied",
        A::DecodeError => "error decoding message",
        A::DecryptError => "error decrypting message",
        A::ExportRestriction => "export restriction",
        A::ProtocolVersion => "protocol version not supported",
        A::InsufficientSecurity => "insufficient security level",
        A::InternalError => "internal error",
        A::InappropriateFallback => "inappropriate fallback",
        A::UserCanceled => "user canceled",
        A::NoRenegotiation => "no renegotiation",
        A::MissingExtension => "missing extension",
        A::UnsupportedExtension => "unsupported extension",
        A::CertificateUnobtainable => "certificate unobtainable",
        A::UnrecognisedName => "unrecognized name",
        A::BadCertificateStatusResponse => "bad certificate status response",
        A::BadCertificateHashValue => "bad certificate hash value",
        A::UnknownPSKIdentity => "unknown PSK identity",
        A::CertificateRequired => "certificate required",
        A::NoApplicationProtocol => "no application protocol",
        A::EncryptedClientHelloRequired => "encrypted client hello required",
        other => return format!("alert({})", u8::from(other)),
    };
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_inside_io_error_is_found() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::BadCertificate),
        );
        assert_eq!(
            describe(&io, Side::Client),
            "remote error: tls: bad certificate"
        );
    }

    #[test]
    fn stringified_alert_is_recognised() {
        // What h2 leaves of a rustls alert error.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        assert_eq!(
            describe(&io, Side::Client),
            "remote error: tls: bad certificate"
        );
        assert_eq!(
            parse_alert("received fatal alert: UnknownCA"),
            Some(AlertDescription::UnknownCA)
        );
        assert_eq!(parse_alert("received fatal alert: Nonsense"), None);
    }

    #[test]
    fn name_mismatch_on_server_is_auth_failure() {
        let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert_eq!(describe(&e, Side::Server), CLIENT_CERT_AUTH_FAILED);
        assert_ne!(describe(&e, Side::Client), CLIENT_CERT_AUTH_FAILED);
    }

    #[test]
    fn non_tls_errors_keep_their_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&io, Side::Client), "refused");
        assert_eq!(alert_text(AlertDescription::Unknown(200)), "alert(200)");
    }
}
