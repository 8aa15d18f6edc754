//! JWT options, every signing method, and tokens minted by Go's
//! `golang-jwt` with etcd's claims (testdata/go-tokens.txt: user `alice`,
//! revision 7, exp 2100-01-01).

use super::*;

fn data(f: &str) -> String {
    format!("{}/src/auth/jwt/testdata/{f}", env!("CARGO_MANIFEST_DIR"))
}

fn opts(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .skip(1)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            let v = if k.ends_with("-key") {
                data(v)
            } else {
                v.to_string()
            };
            (k.to_string(), v)
        })
        .collect()
}

fn jwt(s: &str) -> Result<Jwt, String> {
    Jwt::from_options(&opts(s))
}

fn go_token(method: &str) -> String {
    let all = std::fs::read_to_string(data("go-tokens.txt")).unwrap();
    all.lines()
        .find_map(|l| l.strip_prefix(&format!("{method} ")))
        .unwrap()
        .to_string()
}

const ALICE: Identity = Identity {
    username: String::new(),
    revision: 7,
};

fn alice() -> Identity {
    Identity {
        username: "alice".into(),
        ..ALICE
    }
}

#[test]
fn every_method_round_trips_and_reads_go_tokens() {
    let cases = [
        ("RS256", "priv-key=rsa.pem", "pub-key=rsa.pub.pem"),
        ("RS384", "priv-key=rsa.pk8.pem", "pub-key=rsa.pub.pem"),
        ("RS512", "priv-key=rsa.pem", "pub-key=rsa.pub.pem"),
        ("PS256", "priv-key=rsa.pem", "pub-key=rsa.pub.pem"),
        ("PS384", "priv-key=rsa.pem", "pub-key=rsa.pub.pem"),
        ("PS512", "priv-key=rsa.pk8.pem", "pub-key=rsa.pub.pem"),
        ("ES256", "priv-key=ec256.pem", "pub-key=ec256.pub.pem"),
        ("ES256", "priv-key=ec256.pk8.pem", "pub-key=ec256.pub.pem"),
        ("ES384", "priv-key=ec384.pem", "pub-key=ec384.pub.pem"),
        ("ES512", "priv-key=ec521.pem", "pub-key=ec521.pub.pem"),
        ("ES512", "priv-key=ec521.pk8.pem", "pub-key=ec521.pub.pem"),
        ("HS256", "priv-key=hmac.key", ""),
        ("HS384", "priv-key=hmac.key", ""),
        ("HS512", "priv-key=hmac.key", ""),
    ];
    let go = std::fs::read_to_string(data("go-tokens.txt")).unwrap();
    for (m, private, public) in cases {
        let signer = jwt(&format!("jwt,sign-method={m},{private}")).unwrap();
        let token = signer.sign("bob", 3).unwrap();
        let bob = Identity {
            username: "bob".into(),
            revision: 3,
        };
        assert_eq!(signer.verify(&token), Some(bob.clone()), "{m}");
        // The header and claims are etcd's.
        let mut parts = token.split('.');
        let header = B64.decode(parts.next().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(header).unwrap(),
            format!(r#"{{"alg":"{m}","typ":"JWT"}}"#)
        );
        let claims = String::from_utf8(B64.decode(parts.next().unwrap()).unwrap()).unwrap();
        assert!(
            claims.starts_with(r#"{"exp":"#)
                && claims.ends_with(r#","revision":3,"username":"bob"}"#),
            "{claims}"
        );
        if !public.is_empty() {
            // Verify-only members accept it, and cannot sign.
            let verifier = jwt(&format!("jwt,sign-method={m},{public}")).unwrap();
            assert!(verifier.verify_only());
            assert_eq!(verifier.verify(&token), Some(bob), "{m} verify-only");
            assert_eq!(verifier.sign("x", 1).unwrap_err(), VERIFY_ONLY);
        }
        if go.lines().any(|l| l.starts_with(&format!("{m} "))) {
            assert_eq!(signer.verify(&go_token(m)), Some(alice()), "Go's {m} token");
        }
    }
}

#[test]
fn forged_and_foreign_tokens_are_refused() {
    let rs = jwt("jwt,sign-method=RS256,priv-key=rsa.pem").unwrap();
    let token = rs.sign("bob", 3).unwrap();
    // Another method with the same key material: the alg must match.
    let ps = jwt("jwt,sign-method=PS256,priv-key=rsa.pem").unwrap();
    assert_eq!(ps.verify(&token), None);
    // Another key.
    let es = jwt("jwt,sign-method=ES256,priv-key=ec256.pem").unwrap();
    let es_other = jwt("jwt,sign-method=ES256,priv-key=ec256.pk8.pem").unwrap();
    let t = es.sign("bob", 3).unwrap();
    assert!(es_other.verify(&t).is_some(), "same key in PKCS#8");
    let hs = jwt("jwt,sign-method=HS256,priv-key=hmac.key").unwrap();
    assert_eq!(hs.verify(&t), None);
    // A changed claim breaks the signature.
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[1] = B64.encode(r#"{"exp":4102444800,"revision":3,"username":"root"}"#);
    assert_eq!(rs.verify(&parts.join(".")), None);
    for junk in ["", "a.b", "a.b.c", "a.b.c.d", &format!("{token}x")] {
        assert_eq!(rs.verify(junk), None, "{junk}");
    }
    // alg "none" is never accepted.
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(r#"{"revision":1,"username":"root"}"#)
    );
    assert_eq!(rs.verify(&none), None);
}

#[test]
fn expiry_and_claims_are_checked() {
    let hs = jwt("jwt,sign-method=HS256,priv-key=hmac.key,ttl=0s").unwrap();
    // exp = now: still valid this second (Go compares now <= exp).
    let t = hs.sign("bob", 3).unwrap();
    let make = |claims: &str| {
        let input = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            B64.encode(claims)
        );
        let s = sign(hs.method, hs.signer.as_ref().unwrap(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(s))
    };
    let _ = t;
    assert_eq!(
        hs.verify(&make(r#"{"exp":1,"revision":3,"username":"bob"}"#)),
        None
    );
    assert_eq!(
        hs.verify(&make(r#"{"nbf":4102444800,"revision":3,"username":"bob"}"#)),
        None
    );
    assert!(hs
        .verify(&make(r#"{"revision":3,"username":"bob"}"#))
        .is_some());
    assert_eq!(
        hs.verify(&make(r#"{"exp":4102444800,"username":"bob"}"#)),
        None
    );
    assert_eq!(hs.verify(&make(r#"{"exp":4102444800,"revision":3}"#)), None);
    assert_eq!(
        hs.verify(&make(r#"{"revision":"3","username":"bob"}"#)),
        None
    );
}

#[test]
fn option_errors_are_etcds() {
    let cases = [
        ("jwt,sign-method=RS256", MISSING_KEY.to_string()),
        ("jwt,priv-key=rsa.pem", INVALID_OPTIONS.to_string()),
        (
            "jwt,sign-method=XX256,priv-key=rsa.pem",
            INVALID_OPTIONS.to_string(),
        ),
        (
            "jwt,sign-method=RS256,priv-key=missing.pem",
            INVALID_OPTIONS.to_string(),
        ),
        (
            "jwt,sign-method=RS256,priv-key=rsa.pem,ttl=5",
            INVALID_OPTIONS.to_string(),
        ),
        (
            "jwt,sign-method=HS256,pub-key=rsa.pub.pem",
            MISSING_KEY.to_string(),
        ),
        (
            "jwt,sign-method=none",
            "unsupported signing method: none".to_string(),
        ),
        (
            "jwt,sign-method=EdDSA,priv-key=rsa.pem",
            "unsupported signing method: EdDSA".to_string(),
        ),
    ];
    for (o, want) in cases {
        assert_eq!(jwt(o).unwrap_err(), want, "{o}");
    }
    // Keys that do not fit the method are refused at start.
    assert!(jwt("jwt,sign-method=ES256,priv-key=ec384.pem").is_err());
    assert!(jwt("jwt,sign-method=ES512,priv-key=ec256.pem").is_err());
    assert!(jwt("jwt,sign-method=RS256,priv-key=ec256.pem").is_err());
    assert!(jwt("jwt,sign-method=ES384,pub-key=ec256.pub.pem").is_err());
    assert!(jwt("jwt,sign-method=RS256,pub-key=hmac.key").is_err());
    // An X.509 certificate serves as the public key (etcd's e2e setup).
    let cert = "/usr/share/gocode/src/go.etcd.io/etcd/integration/fixtures/server.crt";
    if std::path::Path::new(cert).exists() {
        let o = vec![
            ("sign-method".to_string(), "RS256".to_string()),
            ("pub-key".to_string(), cert.to_string()),
        ];
        assert!(Jwt::from_options(&o).unwrap().verify_only());
    }
    // Unknown options only warn; the default ttl is 5 minutes.
    let j = jwt("jwt,sign-method=HS256,priv-key=hmac.key,bogus=1").unwrap();
    assert_eq!(j.ttl, Duration::from_secs(300));
}

mod fuzz {
    use super::*;
    use crate::damage::{damaged, damages};
    use proptest::prelude::*;
    use serde_json::Value;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z0-9]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "alg", "typ", "exp", "iat", "nbf", "username", "revision", "x",
                ]),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
        })
    }

    /// `header.claims` signed with `j`'s key: what a holder of the key
    /// could send, whatever the JSON says.
    fn signed(j: &Jwt, header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let signature = sign(j.method, j.signer.as_ref().unwrap(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(signature))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// What a client puts in its `token` metadata: text, dotted parts
        /// of any bytes, a real token damaged. Refused or read, never a
        /// panic.
        #[test]
        fn arbitrary_tokens_are_refused(
            text in "[A-Za-z0-9_.=-]{0,120}",
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..5),
            damage in damages(3),
        ) {
            let hs = jwt("jwt,sign-method=HS256,priv-key=hmac.key").unwrap();
            let es = jwt("jwt,sign-method=ES256,priv-key=ec256.pem").unwrap();
            let dotted = parts.iter().map(|p| B64.encode(p)).collect::<Vec<_>>().join(".");
            for j in [&hs, &es] {
                let real = j.sign("alice", 7).unwrap();
                let bad = String::from_utf8_lossy(&damaged(real.into_bytes(), &damage)).into_owned();
                for token in [&text, &dotted, &bad] {
                    let _ = j.verify(token);
                }
            }
        }

        /// Correctly signed tokens whose header and claims are any JSON
        /// (or not JSON): an identity only with a string username and a
        /// revision in range.
        #[test]
        fn signed_claims_of_any_shape_are_checked(
            header in json(),
            claims in json(),
            raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..32)),
        ) {
            let hs = jwt("jwt,sign-method=HS256,priv-key=hmac.key").unwrap();
            let claims = raw.unwrap_or_else(|| claims.to_string().into_bytes());
            let header = header.to_string();
            for h in [header.as_bytes(), br#"{"alg":"HS256"}"#] {
                if let Some(who) = hs.verify(&signed(&hs, h, &claims)) {
                    let c: Value = serde_json::from_slice(&claims).unwrap();
                    prop_assert_eq!(c["username"].as_str(), Some(who.username.as_str()));
                }
            }
        }
    }
}
