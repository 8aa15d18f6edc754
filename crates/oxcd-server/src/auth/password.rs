//! Passwords: bcrypt hashes as etcd stores them (`$2a$`, cost
//! `--bcrypt-cost`, only the first 72 bytes of a password count, as in Go).
//!
//! bcrypt at cost 10 is tens of milliseconds of CPU. It never runs on the
//! raft loop, the apply thread or a tokio worker: [`Hasher`] runs it on
//! the blocking pool, at most one job per core at a time, so an
//! Authenticate storm queues here instead of starving heartbeats.

use std::sync::Arc;

use base64::Engine;
use oxcd_api::EtcdError;
use tokio::sync::Semaphore;

/// etcd's default bcrypt cost.
pub const DEFAULT_COST: u32 = 10;

/// Runs bcrypt off the async threads, bounded.
#[derive(Clone)]
pub struct Hasher {
    cost: u32,
    slots: Arc<Semaphore>,
}

impl Hasher {
    /// A hasher at `cost` (`--bcrypt-cost`); outside bcrypt's 4..=31 it
    /// warns and uses etcd's default, as etcd does.
    pub fn new(cost: u32) -> Hasher {
        let cost = if (4..=31).contains(&cost) {
            cost
        } else {
            tracing::warn!(
                cost,
                "invalid bcrypt-cost, using the default {DEFAULT_COST}"
            );
            DEFAULT_COST
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hasher {
            cost,
            slots: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The bcrypt hash of `password`, base64-encoded as etcd 3.5 puts it
    /// in `AuthUserAddRequest.hashedPassword`.
    ///
    /// # Errors
    /// `Unknown` if the hashing job failed (it cannot for valid costs).
    pub async fn hash_for_proposal(&self, password: String) -> Result<String, EtcdError> {
        let cost = self.cost;
        let hash = self.run(move || hash(&password, cost)).await??;
        Ok(base64::engine::general_purpose::STANDARD.encode(hash))
    }

    /// Whether `password` matches the stored bcrypt `hash` (false for a
    /// hash that does not parse).
    pub async fn verify(&self, password: String, hash: Vec<u8>) -> Result<bool, EtcdError> {
        self.run(move || verify(&password, &hash)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, EtcdError> {
        let _slot = self.slots.acquire().await.map_err(|_| EtcdError::Stopped)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| EtcdError::Unknown(format!("bcrypt job failed: {e}")))
    }
}

/// bcrypt of `password` at `cost`, `$2a$` form (what Go writes).
///
/// # Errors
/// `Unknown` for a cost bcrypt refuses.
pub fn hash(password: &str, cost: u32) -> Result<Vec<u8>, EtcdError> {
    bcrypt::hash_with_result(password.as_bytes(), cost)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA).into_bytes())
        .map_err(|e| EtcdError::Unknown(format!("bcrypt: {e}")))
}

/// Whether `password` matches `hash` (bcrypt text); a hash that does not
/// parse matches nothing.
pub fn verify(password: &str, hash: &[u8]) -> bool {
    std::str::from_utf8(hash)
        .ok()
        .and_then(|h| bcrypt::verify(password.as_bytes(), h).ok())
        .unwrap_or(false)
}

/// Decodes a proposal's `hashedPassword` (base64 of the bcrypt text).
///
/// # Errors
/// `Unknown` when it is not base64 (a proposer bug or a forged entry).
pub fn decode_proposed(hashed: &str) -> Result<Vec<u8>, EtcdError> {
    base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .map_err(|e| EtcdError::Unknown(format!("bad hashedPassword: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_go_style_and_verify() {
        let h = hash("pass", 4).unwrap();
        assert!(h.starts_with(b"$2a$04$"), "{}", String::from_utf8_lossy(&h));
        assert!(verify("pass", &h));
        assert!(!verify("pasS", &h));
        assert!(!verify("pass", b"not a hash"));
    }

    #[test]
    fn only_72_bytes_count() {
        let long = "x".repeat(80);
        let h = hash(&long, 4).unwrap();
        assert!(verify(&long[..72], &h));
        assert!(!verify(&long[..71], &h));
    }

    #[test]
    fn empty_password_is_valid() {
        let h = hash("", 4).unwrap();
        assert!(verify("", &h));
        assert!(!verify("a", &h));
    }

    #[test]
    fn proposal_encoding_round_trips() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = Hasher::new(4);
        let enc = rt.block_on(h.hash_for_proposal("pw".into())).unwrap();
        let raw = decode_proposed(&enc).unwrap();
        assert!(verify("pw", &raw));
        assert!(rt.block_on(h.verify("pw".into(), raw)).unwrap());
        assert!(decode_proposed("%%%").is_err());
    }
}
