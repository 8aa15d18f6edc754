//! Who may talk HTTP to the client port (etcd's `accessController`):
//! `--host-whitelist` refuses plain-HTTP requests for other Host names
//! with 421 (DNS rebinding, CVE-2018-5702), and `--cors` decides the CORS
//! headers every answer carries; an OPTIONS preflight is answered at once.
//! gRPC calls are not HTTP/1 requests and pass untouched, as in etcd.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeSet;

/// The client port's HTTP access rules.
#[derive(Clone, Default)]
pub struct Access {
    /// Allowed origins; `None` allows all (`*` or empty).
    cors: Option<BTreeSet<String>>,
    /// Allowed Host names for plain HTTP; `None` allows all.
    hosts: Option<BTreeSet<String>>,
    /// Whether auth is on (the gateway's client-certificate rule).
    auth: Option<crate::auth::store::SharedView>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("cors", &self.cors)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// etcd's answer to a gateway request made with a client certificate
/// while auth is on: the gateway cannot pass the CN on as an identity.
const GATEWAY_CN_REFUSED: &str =
    "CommonName of client sending a request against gateway will be ignored and not used as expected\n";

impl Access {
    /// Rules from `--cors` and `--host-whitelist`.
    pub fn new(cors: &BTreeSet<String>, hosts: &BTreeSet<String>) -> Access {
        let limit =
            |set: &BTreeSet<String>| (!set.is_empty() && !set.contains("*")).then(|| set.clone());
        Access {
            cors: limit(cors),
            hosts: limit(hosts),
            auth: None,
        }
    }

    /// The same rules, with the auth state for the gateway's
    /// client-certificate rule.
    pub fn with_auth(mut self, auth: crate::auth::store::SharedView) -> Access {
        self.auth = Some(auth);
        self
    }

    /// etcd's gateway rule (`embed/serve.go`): with auth on, a `/v3/`
    /// request over TLS whose verified client certificate has a CN gets
    /// 400, since the gateway would drop that identity.
    pub fn refuse_gateway_cn<B>(&self, req: &Request<B>, cn: Option<&str>) -> Option<Response> {
        cn.filter(|c| !c.is_empty())?;
        if !req.uri().path().starts_with("/v3/") {
            return None;
        }
        if !self.auth.as_ref().is_some_and(|a| a.get().enabled()) {
            return None;
        }
        let mut r = (StatusCode::BAD_REQUEST, GATEWAY_CN_REFUSED).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Some(r)
    }

    /// The answer to give instead of serving `req`, if any: 421 for a
    /// plain-HTTP Host that is not whitelisted, 200 for a preflight.
    pub fn intercept<B>(&self, req: &Request<B>, secure: bool) -> Option<Response> {
        if !secure {
            let host = hostname(req);
            if let Some(hosts) = &self.hosts {
                if !hosts.contains(host) {
                    tracing::warn!(
                        "rejecting HTTP request from {host:?} to prevent DNS rebinding attacks"
                    );
                    let body = format!(
                        "\netcd received your request, but the Host header was unrecognized.\n\n\
                         To fix this, choose one of the following options:\n\
                         - Enable TLS, then any HTTPS request will be allowed.\n\
                         - Add the hostname you want to use to the whitelist in settings.\n  \
                         - e.g. etcd --host-whitelist {host:?}\n\n\
                         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
                    );
                    let mut r = (StatusCode::MISDIRECTED_REQUEST, body).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    return Some(r);
                }
            }
        }
        if req.method() == Method::OPTIONS {
            let mut r = Response::new(Body::empty());
            self.add_cors(req, &mut r);
            return Some(r);
        }
        None
    }

    /// Adds the CORS headers `req`'s origin is allowed.
    pub fn add_cors<B>(&self, req: &Request<B>, resp: &mut Response) {
        let origin = match &self.cors {
            None => HeaderValue::from_static("*"),
            Some(allowed) => match req.headers().get(header::ORIGIN) {
                Some(o) if o.to_str().is_ok_and(|o| allowed.contains(o)) => o.clone(),
                _ => return,
            },
        };
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("accept, content-type, authorization"),
        );
    }
}

/// The request's host name without the port (Go's `GetHostname`).
fn hostname<B>(req: &Request<B>) -> &str {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if let Some(rest) = host.strip_prefix('[') {
        // [::1]:2379
        return rest.split_once(']').map_or(host, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, method: Method) -> Request<()> {
        Request::builder()
            .method(method)
            .uri("/health")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn host_whitelist_guards_plain_http_only() {
        let hosts: BTreeSet<String> = ["localhost".to_string()].into();
        let a = Access::new(&BTreeSet::from(["*".to_string()]), &hosts);
        assert!(a
            .intercept(&req("localhost:2379", Method::GET), false)
            .is_none());
        let refused = a
            .intercept(&req("evil.example:2379", Method::GET), false)
            .unwrap();
        assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
        assert!(a
            .intercept(&req("evil.example:2379", Method::GET), true)
            .is_none());
        assert_eq!(hostname(&req("[::1]:2379", Method::GET)), "::1");
    }

    #[test]
    fn cors_headers_follow_the_allowed_origins() {
        let all = Access::new(&BTreeSet::from(["*".to_string()]), &BTreeSet::new());
        let r = all.intercept(&req("h", Method::OPTIONS), false).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let some = Access::new(&BTreeSet::from(["http://a".to_string()]), &BTreeSet::new());
        let mut q = req("h", Method::GET);
        q.headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static("http://a"));
        let mut resp = Response::new(Body::empty());
        some.add_cors(&q, &mut resp);
        assert_eq!(
            resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://a"
        );
        let mut resp = Response::new(Body::empty());
        some.add_cors(&req("h", Method::GET), &mut resp);
        assert!(resp
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none());
    }
}
