//! Simple tokens (`--auth-token simple`, etcd's `auth/simple_token.go`):
//! `<16 random letters>.<raft index of the Authenticate entry>`.
//!
//! The proposer draws the letters; every member registers the token when
//! it applies the entry, so a token minted through one member works on
//! all. Tokens are not replicated state: they live in memory, slide their
//! expiry on each use (per member), and go on restart, on AuthDisable
//! (all) and on UserDelete / UserChangePassword (that user's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rand::Rng;

use super::store::TokenEffect;

/// What `--auth-token` asks for (etcd's `NewTokenProvider`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    /// `""`: no tokens at all; only client-certificate identities.
    None,
    /// `simple`.
    Simple,
    /// `jwt,…` with its `name=value` options.
    Jwt(Vec<(String, String)>),
}

/// etcd's error for `--auth-token` options it cannot read.
pub const INVALID_AUTH_OPTIONS: &str = "auth: invalid auth options";

/// Parses `--auth-token`: the type, then `name=value` pairs, all
/// comma-separated. A pair without exactly one `=`, a repeated name or an
/// unknown type is etcd's `auth: invalid auth options`.
///
/// # Errors
/// That message.
pub fn parse_auth_token(s: &str) -> Result<TokenKind, &'static str> {
    let mut parts = s.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut opts: Vec<(String, String)> = Vec::new();
    for p in parts {
        let mut kv = p.split('=');
        let (Some(k), Some(v), None) = (kv.next(), kv.next(), kv.next()) else {
            return Err(INVALID_AUTH_OPTIONS);
        };
        if opts.iter().any(|(seen, _)| seen == k) {
            return Err(INVALID_AUTH_OPTIONS);
        }
        opts.push((k.to_string(), v.to_string()));
    }
    match kind {
        "" => Ok(TokenKind::None),
        "simple" => Ok(TokenKind::Simple),
        "jwt" => Ok(TokenKind::Jwt(opts)),
        _ => Err(INVALID_AUTH_OPTIONS),
    }
}

/// Length of the random part, as etcd's.
const PREFIX_LEN: usize = 16;

/// The registry of simple tokens; a cheap `Clone` handle shared by the
/// applier (registers and drops) and the services (look up).
#[derive(Clone)]
pub struct SimpleTokens {
    inner: Arc<Inner>,
}

struct Inner {
    map: RwLock<HashMap<String, Entry>>,
    ttl: Duration,
    epoch: Instant,
}

struct Entry {
    user: String,
    /// Milliseconds since `epoch` when the token expires; a hit moves it
    /// under the read lock.
    expires: AtomicU64,
}

impl SimpleTokens {
    /// An empty registry whose tokens live `ttl` after their last use
    /// (`--auth-token-ttl`; 0 means etcd's 300 s).
    pub fn new(ttl: Duration) -> SimpleTokens {
        let ttl = if ttl.is_zero() {
            Duration::from_secs(300)
        } else {
            ttl
        };
        SimpleTokens {
            inner: Arc::new(Inner {
                map: RwLock::new(HashMap::new()),
                ttl,
                epoch: Instant::now(),
            }),
        }
    }

    /// A fresh random token prefix (the proposer's part).
    pub fn new_prefix() -> String {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut rng = rand::rng();
        (0..PREFIX_LEN)
            .map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char)
            .collect()
    }

    /// The raft index a well-formed token names: the part after the one
    /// `.`; `None` for anything else.
    pub fn index_of(token: &str) -> Option<u64> {
        let (_, index) = token.split_once('.')?;
        if index.contains('.') {
            return None;
        }
        index.parse().ok()
    }

    /// The user of a live token, sliding its expiry.
    pub fn lookup(&self, token: &str) -> Option<String> {
        self.lookup_at(token, self.now_ms())
    }

    fn lookup_at(&self, token: &str, now: u64) -> Option<String> {
        let map = self
            .inner
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let e = map.get(token)?;
        if e.expires.load(Ordering::Relaxed) <= now {
            return None;
        }
        e.expires
            .store(now + self.inner.ttl.as_millis() as u64, Ordering::Relaxed);
        Some(e.user.clone())
    }

    /// Applies what an auth request did to the tokens.
    pub fn apply(&self, effect: &TokenEffect) {
        self.apply_at(effect, self.now_ms())
    }

    fn apply_at(&self, effect: &TokenEffect, now: u64) {
        let mut map = self
            .inner
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match effect {
            TokenEffect::None => {}
            TokenEffect::DropAll => map.clear(),
            TokenEffect::DropUser(u) => map.retain(|_, e| &e.user != u),
            TokenEffect::Register { token, user } => {
                // A replayed entry registers the same token again.
                let expires = now + self.inner.ttl.as_millis() as u64;
                map.insert(
                    token.clone(),
                    Entry {
                        user: user.clone(),
                        expires: AtomicU64::new(expires),
                    },
                );
            }
        }
    }

    /// Drops expired tokens and those of users no longer in `users`
    /// (after a snapshot install), everything if auth is now off.
    pub fn retain_users(&self, enabled: bool, has_user: impl Fn(&str) -> bool) {
        let mut map = self
            .inner
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !enabled {
            map.clear();
        } else {
            map.retain(|_, e| has_user(&e.user));
        }
    }

    /// Drops expired tokens.
    pub fn sweep(&self) {
        self.sweep_at(self.now_ms())
    }

    fn sweep_at(&self, now: u64) {
        self.inner
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, e| e.expires.load(Ordering::Relaxed) > now);
    }

    /// Sweeps once a second until the registry has no other owner.
    pub fn start_sweeper(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                SimpleTokens { inner }.sweep();
            }
        });
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_token_options() {
        assert_eq!(parse_auth_token("simple"), Ok(TokenKind::Simple));
        assert_eq!(parse_auth_token(""), Ok(TokenKind::None));
        assert_eq!(
            parse_auth_token("jwt,sign-method=RS256,ttl=1s"),
            Ok(TokenKind::Jwt(vec![
                ("sign-method".into(), "RS256".into()),
                ("ttl".into(), "1s".into())
            ]))
        );
        for bad in ["bogus", "jwt,a", "jwt,a=b=c", "jwt,a=1,a=2", "simple,x"] {
            assert_eq!(parse_auth_token(bad), Err(INVALID_AUTH_OPTIONS), "{bad}");
        }
    }

    #[test]
    fn tokens_look_like_etcds() {
        let p = SimpleTokens::new_prefix();
        assert_eq!(p.len(), 16);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
        assert_eq!(SimpleTokens::index_of("FNdplMumzikPHDNa.91"), Some(91));
        assert_eq!(SimpleTokens::index_of("abc"), None);
        assert_eq!(SimpleTokens::index_of("a.b"), None);
        assert_eq!(SimpleTokens::index_of("a.1.2"), None);
    }

    #[test]
    fn register_lookup_drop() {
        let t = SimpleTokens::new(Duration::from_secs(60));
        let reg = |tok: &str, user: &str| TokenEffect::Register {
            token: tok.into(),
            user: user.into(),
        };
        t.apply(&reg("a.1", "alice"));
        t.apply(&reg("b.2", "bob"));
        t.apply(&reg("c.3", "alice"));
        assert_eq!(t.lookup("a.1").as_deref(), Some("alice"));
        assert_eq!(t.lookup("x.1"), None);
        t.apply(&TokenEffect::DropUser("alice".into()));
        assert_eq!(t.lookup("a.1"), None);
        assert_eq!(t.lookup("c.3"), None);
        assert_eq!(t.lookup("b.2").as_deref(), Some("bob"));
        t.retain_users(true, |u| u != "bob");
        assert_eq!(t.lookup("b.2"), None);
        t.apply(&reg("d.4", "dan"));
        t.apply(&TokenEffect::DropAll);
        assert_eq!(t.lookup("d.4"), None);
    }

    #[test]
    fn expiry_slides_on_use() {
        let t = SimpleTokens::new(Duration::from_millis(300));
        let reg = TokenEffect::Register {
            token: "a.1".into(),
            user: "u".into(),
        };
        t.apply_at(&reg, 1000);
        // Used every 100 ms for 600 ms: it stays alive past its first TTL.
        for now in (1100..=1600).step_by(100) {
            assert!(t.lookup_at("a.1", now).is_some(), "at {now}");
        }
        t.sweep_at(1899);
        assert!(t.lookup_at("a.1", 1899).is_some());
        // 300 ms after its last use (1899) it is gone.
        assert_eq!(t.lookup_at("a.1", 2199), None);
        t.sweep_at(2199);
        assert!(t.inner.map.read().unwrap().is_empty());
    }
}
