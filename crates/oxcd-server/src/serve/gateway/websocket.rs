//! The gateway over a WebSocket, as etcd serves `/v3/` through
//! grpc-websocket-proxy: a WebSocket upgrade on any gateway path becomes a
//! POST to that route whose body is the client's messages, one per line,
//! and each line of the answer goes back as one text message. This is how
//! browsers (which cannot stream a request body) watch and keep leases
//! alive.
//!
//! As etcd's proxy: the HTTP status is not sent (an error body arrives as
//! a message), the token comes from `Sec-WebSocket-Protocol: Bearer,
//! <token>` or a `token` cookie (the `Authorization` header is not
//! passed), `Origin` and `Referer` are passed, and the socket closes when
//! the call ends. Unlike etcd, whose proxy passes `Bearer <token>` on as
//! the token itself so that no token is ever valid, the `Bearer ` prefix is
//! taken off, so authenticated WebSocket clients work.

use super::{method, serve, Gateway, Kind};
use axum::body::Body;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use std::convert::Infallible;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The subprotocol that carries a token, and the cookie that may instead.
const BEARER: &str = "Bearer";
const TOKEN_COOKIE: &str = "token";

/// Whether a request asks for a WebSocket (gorilla's test: an `upgrade`
/// token in `Connection`, `websocket` in `Upgrade`).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Answers the upgrade and relays the call once the socket is open.
pub(super) async fn upgrade(gw: Gateway, req: Request) -> Response {
    let (mut parts, _) = req.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let protocol = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ws = if protocol.starts_with(BEARER) {
        ws.protocols([BEARER])
    } else {
        ws
    };
    let headers = call_headers(&parts.headers, protocol);
    let uri = parts.uri;
    ws.max_message_size(gw.max_json)
        .max_frame_size(gw.max_json)
        .on_upgrade(move |socket| relay(gw, uri, headers, socket))
}

/// The headers of the inner call: the token, `Origin` and `Referer`.
fn call_headers(incoming: &HeaderMap, protocol: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [header::ORIGIN, header::REFERER] {
        if let Some(v) = incoming.get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let from_cookie = incoming
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (name, value) = c.trim().split_once('=')?;
            (name == TOKEN_COOKIE).then(|| value.to_string())
        });
    let from_protocol = protocol
        .split_once("Bearer,")
        .map(|(_, token)| token.trim().to_string());
    if let Some(token) = from_cookie.or(from_protocol).filter(|t| !t.is_empty()) {
        if let Ok(v) = HeaderValue::from_str(&token) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    headers
}

/// Runs the call with the socket's messages as its body and sends each
/// line of its answer back, until either side ends.
async fn relay(gw: Gateway, uri: Uri, headers: HeaderMap, socket: WebSocket) {
    let (mut to_client, mut from_client) = socket.split();
    // grpc-gateway reads one object for a unary or server-streaming route
    // and answers at once; here the body ends after the first message, as
    // it never would on its own while the socket stays open.
    let one_object = super::route(method(&uri)).is_some_and(|r| r.kind != Kind::BidiStream);
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(16);
    let closed = CancellationToken::new();
    let reader = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut body_tx = Some(body_tx);
            while let Some(Ok(msg)) = from_client.next().await {
                let payload = match msg {
                    Message::Text(t) => Bytes::from(t),
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                let Some(tx) = &body_tx else {
                    continue;
                };
                let mut line = BytesMut::with_capacity(payload.len() + 1);
                line.extend_from_slice(&payload);
                line.extend_from_slice(b"\n");
                if tx.send(line.freeze()).await.is_err() {
                    break;
                }
                if one_object {
                    body_tx = None;
                }
            }
            closed.cancel();
        })
    };
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(body_rx).map(Ok::<_, Infallible>),
    );
    let mut req = Request::new(body);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let answer = tokio::select! {
        r = serve(gw, req) => Some(r),
        _ = closed.cancelled() => None,
    };
    if let Some(answer) = answer {
        send_lines(answer.into_body(), &mut to_client, &closed).await;
        let _ = to_client.close().await;
    }
    reader.abort();
}

/// Sends each non-empty line of `body` as a text message (the last one
/// also without its newline).
async fn send_lines(
    mut body: Body,
    to_client: &mut SplitSink<WebSocket, Message>,
    closed: &CancellationToken,
) {
    let mut pending = BytesMut::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = closed.cancelled() => return,
        };
        let Some(Ok(frame)) = frame else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(end + 1).freeze().slice(..end);
            if !send(to_client, line, closed).await {
                return;
            }
        }
    }
    send(to_client, pending.freeze(), closed).await;
}

/// Sends one line unless it is empty; false once the client is gone.
async fn send(
    to_client: &mut SplitSink<WebSocket, Message>,
    line: Bytes,
    closed: &CancellationToken,
) -> bool {
    if line.is_empty() {
        return true;
    }
    let msg = match Utf8Bytes::try_from(line.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(line),
    };
    tokio::select! {
        r = to_client.send(msg) => r.is_ok(),
        _ = closed.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        assert!(is_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ])));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
        ])));
    }

    #[test]
    fn the_token_comes_from_the_cookie_or_the_bearer_subprotocol() {
        let h = call_headers(
            &headers(&[("origin", "http://a"), ("authorization", "ignored")]),
            "Bearer, abc.1",
        );
        assert_eq!(h.get(header::AUTHORIZATION).expect("token"), "abc.1");
        assert_eq!(h.get(header::ORIGIN).expect("origin"), "http://a");
        let h = call_headers(&headers(&[("cookie", "a=b; token=xyz")]), "Bearer, abc");
        assert_eq!(h.get(header::AUTHORIZATION).expect("token"), "xyz");
        let h = call_headers(&headers(&[("authorization", "t")]), "");
        assert!(h.get(header::AUTHORIZATION).is_none());
    }
}
