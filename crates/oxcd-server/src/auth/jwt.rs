//! JWT tokens (`--auth-token jwt,…`, etcd's `auth/jwt.go` and
//! `auth/options.go`): signed claims `{exp, revision, username}`, so a
//! token made by one member verifies on every member holding the key,
//! and the auth revision it carries never slides.
//!
//! Signatures use ring (already linked by rustls) for RS, PS, ES256,
//! ES384 and HS, and p521 for ES512, which ring lacks. Keys are read as
//! Go's `jwt-go` reads them: the first PEM block, whatever its label;
//! private keys PKCS#1 or PKCS#8 (RSA), SEC1 or PKCS#8 (EC); public keys
//! PKIX or an X.509 certificate; an HS secret is the private-key file's
//! bytes as they are. With only a public key the member verifies tokens
//! but cannot issue them.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use p521::ecdsa::signature::{Signer as _, Verifier as _};
use ring::signature::{self as sig, KeyPair as _};

use super::Identity;

/// etcd's errors for JWT options (`auth/store.go`).
const INVALID_OPTIONS: &str = "auth: invalid auth options";
const MISSING_KEY: &str = "auth: missing key data";
/// Authenticate on a member with only a public key.
pub const VERIFY_ONLY: &str = "auth: token signing attempted with verify-only key";

/// Verified tokens kept to skip repeating a signature check (a busy
/// client sends the same token with every request).
const CACHE_LIMIT: usize = 4096;

/// A signing method etcd accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Rs(u16),
    Ps(u16),
    Es(u16),
    Hs(u16),
}

impl Method {
    fn parse(name: &str) -> Option<Method> {
        let (family, bits) = (name.get(..2)?, name.get(2..)?);
        let bits = match bits {
            "256" => 256,
            "384" => 384,
            "512" => 512,
            _ => return None,
        };
        match family {
            "RS" => Some(Method::Rs(bits)),
            "PS" => Some(Method::Ps(bits)),
            "ES" => Some(Method::Es(bits)),
            "HS" => Some(Method::Hs(bits)),
            _ => None,
        }
    }

    fn name(self) -> String {
        match self {
            Method::Rs(b) => format!("RS{b}"),
            Method::Ps(b) => format!("PS{b}"),
            Method::Es(b) => format!("ES{b}"),
            Method::Hs(b) => format!("HS{b}"),
        }
    }
}

enum SigningKey {
    Rsa(sig::RsaKeyPair),
    Ec(sig::EcdsaKeyPair),
    P521(p521::ecdsa::SigningKey),
    Hmac(ring::hmac::Key),
}

enum VerifyingKey {
    /// PKCS#1 `RSAPublicKey` DER.
    Rsa(Vec<u8>),
    /// Uncompressed EC point.
    Ec(Vec<u8>),
    P521(p521::ecdsa::VerifyingKey),
    Hmac(ring::hmac::Key),
}

/// The JWT provider of one member.
pub struct Jwt {
    method: Method,
    signer: Option<SigningKey>,
    verifier: VerifyingKey,
    ttl: Duration,
    /// token → (identity, exp): tokens whose signature already verified.
    cache: RwLock<HashMap<String, (Identity, Option<f64>)>>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("method", &self.method)
            .field("verify_only", &self.signer.is_none())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Builds the provider from `--auth-token jwt,…` options.
    ///
    /// # Errors
    /// etcd's start-up errors: `auth: invalid auth options` (unreadable
    /// file, bad ttl, unknown or missing sign-method), `auth: missing key
    /// data`, `unsupported signing method: …`, or the key parser's error.
    pub fn from_options(opts: &[(String, String)]) -> Result<Jwt, String> {
        let get = |k: &str| {
            opts.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let unknown: Vec<&str> = opts
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !["sign-method", "pub-key", "priv-key", "ttl"].contains(k))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!("unknown JWT options: {unknown:?}");
        }
        let ttl = match get("ttl") {
            Some(t) => crate::config::duration::parse_go_duration(t)
                .map(|ns| Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
                .map_err(|_| INVALID_OPTIONS.to_string())?,
            None => Duration::from_secs(300),
        };
        let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
            get(k)
                .map(|path| std::fs::read(path).map_err(|_| INVALID_OPTIONS.to_string()))
                .transpose()
        };
        let public = read("pub-key")?;
        let private = read("priv-key")?;
        let method_name = get("sign-method").unwrap_or_default();
        if method_name == "none" || method_name == "EdDSA" {
            return Err(format!("unsupported signing method: {method_name}"));
        }
        let method = Method::parse(method_name).ok_or_else(|| INVALID_OPTIONS.to_string())?;
        let (signer, verifier) = keys(method, public.as_deref(), private.as_deref())?;
        Ok(Jwt {
            method,
            signer,
            verifier,
            ttl,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Whether this member can only verify tokens.
    pub fn verify_only(&self) -> bool {
        self.signer.is_none()
    }

    /// A token for `username` at auth `revision`, valid for the ttl.
    ///
    /// # Errors
    /// [`VERIFY_ONLY`] without a private key; a signing failure.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, String> {
        let signer = self
            .signer
            .as_ref()
            .ok_or_else(|| VERIFY_ONLY.to_string())?;
        let exp = unix_now() as u64 + self.ttl.as_secs();
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.method.name());
        // Go's MapClaims marshal with sorted keys.
        let claims = serde_json::json!({"exp": exp, "revision": revision, "username": username});
        let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims.to_string()));
        let signature = sign(self.method, signer, signing_input.as_bytes())?;
        Ok(format!("{signing_input}.{}", B64.encode(signature)))
    }

    /// The identity a valid token names (its revision is the claim's,
    /// which never slides); `None` for anything invalid or expired.
    pub fn verify(&self, token: &str) -> Option<Identity> {
        let now = unix_now();
        if let Some((who, exp)) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
        {
            return exp.is_none_or(|e| now <= e).then(|| who.clone());
        }
        let (who, exp) = self.check(token, now)?;
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, e)| e.is_none_or(|e| now <= e));
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(token.to_string(), (who.clone(), exp));
        Some(who)
    }

    fn check(&self, token: &str, now: f64) -> Option<(Identity, Option<f64>)> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.method.name() {
            return None;
        }
        let signature = B64.decode(s).ok()?;
        let signing_input = &token[..h.len() + 1 + c.len()];
        if !verify(
            self.method,
            &self.verifier,
            signing_input.as_bytes(),
            &signature,
        ) {
            return None;
        }
        let claims: serde_json::Value = serde_json::from_slice(&B64.decode(c).ok()?).ok()?;
        // Go's MapClaims.Valid: exp, iat and nbf when present, no leeway.
        let num = |k: &str| claims.get(k).map(|v| v.as_f64());
        let exp = match num("exp") {
            None => None,
            Some(Some(e)) if now <= e => Some(e),
            Some(_) => return None,
        };
        for k in ["iat", "nbf"] {
            match num(k) {
                None => {}
                Some(Some(t)) if now >= t => {}
                Some(_) => return None,
            }
        }
        let username = claims.get("username")?.as_str()?.to_string();
        let revision = claims.get("revision")?.as_f64()?;
        if !(0.0..=u64::MAX as f64).contains(&revision) {
            return None;
        }
        Some((
            Identity {
                username,
                revision: revision as u64,
            },
            exp,
        ))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64().floor())
}

fn sign(method: Method, key: &SigningKey, msg: &[u8]) -> Result<Vec<u8>, String> {
    let rng = ring::rand::SystemRandom::new();
    let failed = |e: ring::error::Unspecified| format!("failed to sign a JWT token: {e}");
    match (method, key) {
        (Method::Rs(b) | Method::Ps(b), SigningKey::Rsa(k)) => {
            let mut out = vec![0; k.public().modulus_len()];
            k.sign(rsa_padding(method, b), &rng, msg, &mut out)
                .map_err(failed)?;
            Ok(out)
        }
        (Method::Es(_), SigningKey::Ec(k)) => {
            Ok(k.sign(&rng, msg).map_err(failed)?.as_ref().to_vec())
        }
        (Method::Es(_), SigningKey::P521(k)) => {
            let s: p521::ecdsa::Signature = k.sign(msg);
            Ok(s.to_bytes().to_vec())
        }
        (Method::Hs(_), SigningKey::Hmac(k)) => Ok(ring::hmac::sign(k, msg).as_ref().to_vec()),
        _ => Err("failed to sign a JWT token: key does not fit the method".into()),
    }
}

fn verify(method: Method, key: &VerifyingKey, msg: &[u8], signature: &[u8]) -> bool {
    match (method, key) {
        (Method::Rs(b), VerifyingKey::Rsa(k)) => {
            let alg: &dyn sig::VerificationAlgorithm = match b {
                256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                _ => &sig::RSA_PKCS1_2048_8192_SHA512,
            };
            sig::UnparsedPublicKey::new(alg, k)
                .verify(msg, signature)
                .is_ok()
        }
        (Method::Ps(b), VerifyingKey::Rsa(k)) => {
            let alg: &dyn sig::VerificationAlgorithm = match b {
                256 => &sig::RSA_PSS_2048_8192_SHA256,
                384 => &sig::RSA_PSS_2048_8192_SHA384,
                _ => &sig::RSA_PSS_2048_8192_SHA512,
            };
            sig::UnparsedPublicKey::new(alg, k)
                .verify(msg, signature)
                .is_ok()
        }
        (Method::Es(b), VerifyingKey::Ec(k)) => {
            let alg: &dyn sig::VerificationAlgorithm = match b {
                256 => &sig::ECDSA_P256_SHA256_FIXED,
                _ => &sig::ECDSA_P384_SHA384_FIXED,
            };
            sig::UnparsedPublicKey::new(alg, k)
                .verify(msg, signature)
                .is_ok()
        }
        (Method::Es(_), VerifyingKey::P521(k)) => {
            p521::ecdsa::Signature::from_slice(signature).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Method::Hs(_), VerifyingKey::Hmac(k)) => ring::hmac::verify(k, msg, signature).is_ok(),
        _ => false,
    }
}

fn rsa_padding(method: Method, bits: u16) -> &'static dyn sig::RsaEncoding {
    match (method, bits) {
        (Method::Ps(_), 256) => &sig::RSA_PSS_SHA256,
        (Method::Ps(_), 384) => &sig::RSA_PSS_SHA384,
        (Method::Ps(_), _) => &sig::RSA_PSS_SHA512,
        (_, 256) => &sig::RSA_PKCS1_SHA256,
        (_, 384) => &sig::RSA_PKCS1_SHA384,
        _ => &sig::RSA_PKCS1_SHA512,
    }
}

/// The signing key (if a private key is given) and the verifying key
/// (the private key's own public half, else the public key), as etcd's
/// `jwtOptions.Key` chooses them.
fn keys(
    method: Method,
    public: Option<&[u8]>,
    private: Option<&[u8]>,
) -> Result<(Option<SigningKey>, VerifyingKey), String> {
    if let Method::Hs(b) = method {
        let secret = private.filter(|p| !p.is_empty()).ok_or(MISSING_KEY)?;
        let alg = match b {
            256 => ring::hmac::HMAC_SHA256,
            384 => ring::hmac::HMAC_SHA384,
            _ => ring::hmac::HMAC_SHA512,
        };
        let key = ring::hmac::Key::new(alg, secret);
        return Ok((Some(SigningKey::Hmac(key.clone())), VerifyingKey::Hmac(key)));
    }
    let private = private
        .filter(|p| !p.is_empty())
        .map(first_pem)
        .transpose()?;
    let public = public
        .filter(|p| !p.is_empty())
        .map(first_pem)
        .transpose()?;
    if let Some(der) = private {
        let signer = private_key(method, &der)?;
        let verifier = match &signer {
            SigningKey::Rsa(k) => VerifyingKey::Rsa(k.public().as_ref().to_vec()),
            SigningKey::Ec(k) => VerifyingKey::Ec(k.public_key().as_ref().to_vec()),
            SigningKey::P521(k) => VerifyingKey::P521(*k.verifying_key()),
            SigningKey::Hmac(k) => VerifyingKey::Hmac(k.clone()),
        };
        return Ok((Some(signer), verifier));
    }
    let der = public.ok_or(MISSING_KEY)?;
    Ok((None, public_key(method, &der)?))
}

/// The DER of the first PEM block, whatever its label (Go's `pem.Decode`).
fn first_pem(text: &[u8]) -> Result<Vec<u8>, String> {
    let invalid = || "invalid key: Key must be PEM encoded PKCS1 or PKCS8 private key".to_string();
    let text = std::str::from_utf8(text).map_err(|_| invalid())?;
    let start = text.find("-----BEGIN ").ok_or_else(invalid)?;
    let rest = &text[start..];
    let body_start = rest.find('\n').ok_or_else(invalid)? + 1;
    let body_end = rest.find("-----END ").ok_or_else(invalid)?;
    let body: String = rest
        .get(body_start..body_end)
        .ok_or_else(invalid)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| invalid())
}

fn private_key(method: Method, der: &[u8]) -> Result<SigningKey, String> {
    match method {
        Method::Rs(_) | Method::Ps(_) => sig::RsaKeyPair::from_der(der)
            .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
            .map(SigningKey::Rsa)
            .map_err(|e| format!("invalid RSA private key: {e}")),
        Method::Es(512) => {
            use p521::pkcs8::DecodePrivateKey;
            p521::SecretKey::from_sec1_der(der)
                .or_else(|_| p521::SecretKey::from_pkcs8_der(der).map_err(|_| ()))
                .map(|k| SigningKey::P521(p521::ecdsa::SigningKey::from(k)))
                .map_err(|_| "invalid EC private key: not a P-521 key (ES512)".to_string())
        }
        Method::Es(b) => {
            let (alg, curve_oid, curve) = if b == 256 {
                (&sig::ECDSA_P256_SHA256_FIXED_SIGNING, P256_OID, "P-256")
            } else {
                (&sig::ECDSA_P384_SHA384_FIXED_SIGNING, P384_OID, "P-384")
            };
            let rng = ring::rand::SystemRandom::new();
            sig::EcdsaKeyPair::from_pkcs8(alg, &sec1_to_pkcs8(der, curve_oid), &rng)
                .or_else(|_| sig::EcdsaKeyPair::from_pkcs8(alg, der, &rng))
                .map(SigningKey::Ec)
                .map_err(|_| format!("invalid EC private key: not a {curve} key (ES{b})"))
        }
        Method::Hs(_) => Err(MISSING_KEY.into()),
    }
}

fn public_key(method: Method, der: &[u8]) -> Result<VerifyingKey, String> {
    use x509_parser::prelude::FromDer;
    let spki_bytes = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert.public_key().raw.to_vec(),
        Err(_) => der.to_vec(),
    };
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_bytes)
        .map_err(|e| format!("invalid public key: {e}"))?;
    let alg = spki.algorithm.algorithm.to_id_string();
    let key = spki.subject_public_key.data.to_vec();
    match method {
        Method::Rs(_) | Method::Ps(_) if alg == "1.2.840.113549.1.1.1" => {
            Ok(VerifyingKey::Rsa(key))
        }
        Method::Es(512) if alg == "1.2.840.10045.2.1" => {
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&key)
                .map(VerifyingKey::P521)
                .map_err(|_| "invalid EC public key: not a P-521 key (ES512)".to_string())
        }
        Method::Es(b) if alg == "1.2.840.10045.2.1" => {
            let want = if b == 256 { 65 } else { 97 };
            if key.len() != want {
                return Err(format!("invalid EC public key: wrong curve for ES{b}"));
            }
            Ok(VerifyingKey::Ec(key))
        }
        _ => Err("invalid public key: key type does not fit the signing method".into()),
    }
}

/// OIDs (DER, with tag and length) of the curves ring signs with.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Wraps a SEC1 `ECPrivateKey` in a PKCS#8 `PrivateKeyInfo` for
/// `curve_oid` (ring reads only PKCS#8).
fn sec1_to_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Vec<u8> {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let alg = der_tlv(0x30, &[EC_PUBLIC_KEY, curve_oid].concat());
    let body = [&[0x02, 0x01, 0x00][..], &alg, &der_tlv(0x04, sec1)].concat();
    der_tlv(0x30, &body)
}

fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests;
