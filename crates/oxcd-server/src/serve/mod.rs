//! Serving clients and peers: listeners, TLS, and the dispatch that puts
//! gRPC and HTTP/1 endpoints on one port (etcd's `embed/serve.go`).

pub mod access;
pub mod authority;
pub mod failpoints;
pub mod gateway;
pub mod http;
pub mod listener;
pub mod pprof;
pub mod probes;
pub mod tls;

use crate::v3rpc::GrpcRouter;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// The gRPC answer for a method no service claims: `Unimplemented`, as
/// etcd answers an unknown method.
pub fn unknown_method(path: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!("unknown method {path}"))
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Answers anything no route claimed: gRPC callers get `Unimplemented`
/// (what etcd says for an unknown method), everyone else a plain 404.
pub async fn fallback(req: Request<Body>) -> Response {
    if is_grpc(&req) {
        return unknown_method(req.uri().path())
            .into_http::<Body>()
            .into_response();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// How the client port serves connections.
#[derive(Debug, Clone)]
pub struct ClientPort {
    /// `--max-concurrent-streams`.
    pub max_streams: u32,
    /// Keepalive ping interval and timeout; `None` sends no pings.
    pub keepalive: Option<(std::time::Duration, std::time::Duration)>,
    /// CORS and the host whitelist.
    pub access: access::Access,
}

/// What a listener serves: gRPC calls go straight to the [`GrpcRouter`]
/// when there is one (the client port), everything else to an axum router
/// (HTTP endpoints, and on the peer port the raft and forwarding routes).
#[derive(Clone)]
pub struct Dispatch {
    grpc: Option<GrpcRouter>,
    http: Router,
    /// HTTP/2 streams a connection may have open at once
    /// (`--max-concurrent-streams` on the client port).
    pub(crate) max_streams: u32,
    /// HTTP/2 keepalive pings: interval and timeout
    /// (`--grpc-keepalive-interval`, `--grpc-keepalive-timeout`).
    pub(crate) keepalive: Option<(std::time::Duration, std::time::Duration)>,
    /// The client port's HTTP access rules (CORS, host whitelist).
    access: Option<access::Access>,
    /// Whether this connection is TLS (set per connection).
    secure: bool,
    /// The CN of the connection's verified client certificate.
    client_cn: Option<crate::auth::ClientCn>,
}

impl Dispatch {
    /// The client port: the gRPC services plus the HTTP endpoints, with at
    /// most `max_streams` concurrent streams per HTTP/2 connection.
    pub fn client(grpc: Option<GrpcRouter>, http: Router, opts: ClientPort) -> Dispatch {
        Dispatch {
            grpc,
            http: http.fallback(fallback),
            max_streams: opts.max_streams,
            keepalive: opts.keepalive,
            access: Some(opts.access),
            secure: false,
            client_cn: None,
        }
    }

    /// This dispatch for one connection, TLS or not, with the CN of its
    /// verified client certificate if it has one.
    pub(crate) fn for_connection(
        &self,
        secure: bool,
        client_cn: Option<crate::auth::ClientCn>,
    ) -> Dispatch {
        Dispatch {
            secure,
            client_cn,
            ..self.clone()
        }
    }

    /// A port served by an axum router alone (the peer port).
    pub fn router(http: Router) -> Dispatch {
        Dispatch {
            grpc: None,
            http,
            max_streams: u32::MAX,
            keepalive: None,
            access: None,
            secure: false,
            client_cn: None,
        }
    }
}

impl<B> tower::Service<Request<B>> for Dispatch
where
    B: tonic::codegen::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = crate::v3rpc::GrpcFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(grpc) = self.grpc.as_mut().filter(|_| is_grpc(&req)) {
            if let Some(cn) = &self.client_cn {
                req.extensions_mut().insert(cn.clone());
            }
            return grpc.call(req);
        }
        let http = self.http.clone();
        let Some(access) = self.access.clone() else {
            return Box::pin(async move {
                let Ok(resp) = http.oneshot(req.map(Body::new)).await;
                Ok(resp.map(tonic::body::Body::new))
            });
        };
        let cn = self.client_cn.as_ref().map(|c| &*c.0);
        if let Some(answer) = access
            .intercept(&req, self.secure)
            .or_else(|| access.refuse_gateway_cn(&req, cn))
        {
            return Box::pin(std::future::ready(Ok(answer.map(tonic::body::Body::new))));
        }
        let origin = Request::builder()
            .method(req.method().clone())
            .body(())
            .map(|mut r| {
                if let Some(o) = req.headers().get(header::ORIGIN) {
                    r.headers_mut().insert(header::ORIGIN, o.clone());
                }
                r
            });
        Box::pin(async move {
            let Ok(mut resp) = http.oneshot(req.map(Body::new)).await;
            if let Ok(origin) = origin {
                access.add_cors(&origin, &mut resp);
            }
            Ok(resp.map(tonic::body::Body::new))
        })
    }
}
