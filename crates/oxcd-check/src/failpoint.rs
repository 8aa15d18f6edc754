//! oxcd's failpoints over HTTP (`/debug/failpoints` on a member's client
//! port; debug builds started with `OXCD_FAILPOINTS_HTTP=1`), as the disk
//! nemesis arms them: `PUT /debug/failpoints/NAME` with a term as body,
//! `DELETE` to disarm, `GET /debug/failpoints` to list.
//!
//! A few lines of HTTP/1.1 over a TCP stream rather than an HTTP client
//! crate: one request per connection (`Connection: close`), status line
//! parsed, every step bounded by [`TIMEOUT`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound of one request, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Largest answer read (the list of armed failpoints is a few lines).
const MAX_ANSWER: u64 = 64 * 1024;

/// The status code and body of one request to `client_url` (`http://host:port`).
///
/// # Errors
/// Connection, timeout, or an answer that is not HTTP.
pub async fn request(
    client_url: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let host = client_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{client_url}: only http:// URLs have failpoints here"))?
        .trim_end_matches('/');
    let exchange = async {
        let mut stream = TcpStream::connect(host)
            .await
            .map_err(|e| format!("connect {host}: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("send to {host}: {e}"))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read from {host}: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{method} {client_url}{path}: timed out"))??;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{method} {client_url}{path}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Ok((status, body))
}

/// Arms failpoint `name` with `term` on the member at `client_url`.
///
/// # Errors
/// The request failed or the member refused the name or term.
pub async fn arm(client_url: &str, name: &str, term: &str) -> Result<(), String> {
    match request(
        client_url,
        "PUT",
        &format!("/debug/failpoints/{name}"),
        term,
    )
    .await?
    {
        (204 | 200, _) => Ok(()),
        (code, body) => Err(format!("arm {name}={term}: HTTP {code}: {}", body.trim())),
    }
}

/// Disarms failpoint `name`.
///
/// # Errors
/// The request failed or the member refused it.
pub async fn disarm(client_url: &str, name: &str) -> Result<(), String> {
    match request(
        client_url,
        "DELETE",
        &format!("/debug/failpoints/{name}"),
        "",
    )
    .await?
    {
        (204 | 200, _) => Ok(()),
        (code, body) => Err(format!("disarm {name}: HTTP {code}: {}", body.trim())),
    }
}

/// Whether the member serves `/debug/failpoints` (HTTP 200 on the list).
///
/// # Errors
/// The member could not be asked at all.
pub async fn available(client_url: &str) -> Result<bool, String> {
    let (code, _) = request(client_url, "GET", "/debug/failpoints", "").await?;
    Ok(code == 200)
}
