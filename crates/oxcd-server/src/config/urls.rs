//! URL lists as etcd reads them (`pkg/types/urls.go`, `pkg/flags/unique_urls.go`).
//!
//! etcd checks the raw text, so the checks here run on the raw text too:
//! `url::Url` normalises `http://h:2379` to `http://h:2379/` and drops
//! default ports, which would hide a path or a missing port. For the same
//! reason never print a `Url` with `Display` where etcd prints one (member
//! peer URLs, log lines): use [`url_string`], which gives Go's form.

use url::Url;

const SCHEMES: [&str; 4] = ["http", "https", "unix", "unixs"];

/// Parses a comma-separated URL list as etcd's `types.NewURLs` does: each
/// item trimmed, scheme http/https/unix/unixs, `host:port`, no path; the
/// result sorted by its string form.
///
/// # Errors
/// etcd's message for the first bad item.
pub fn parse_urls(list: &str) -> Result<Vec<Url>, String> {
    let mut out = Vec::new();
    for item in list.split(',') {
        out.push(parse_url(item.trim())?);
    }
    out.sort_by_key(url_string);
    Ok(out)
}

/// Parses one URL with etcd's checks (see [`parse_urls`]).
///
/// # Errors
/// etcd's message (scheme, `host:port`, path).
pub fn parse_url(raw: &str) -> Result<Url, String> {
    let (scheme, rest) = match raw.split_once(':') {
        Some((s, rest)) if is_scheme(s) => (s.to_ascii_lowercase(), rest),
        _ => (String::new(), raw),
    };
    if !SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {raw}"
        ));
    }
    let not_host_port = || format!("URL address does not have the form \"host:port\": {raw}");
    let Some(after) = rest.strip_prefix("//") else {
        return Err(not_host_port());
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let authority = &after[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if split_host_port(host_port).is_none() {
        return Err(not_host_port());
    }
    if after[end..].starts_with('/') {
        return Err(format!("URL must not contain a path: {raw}"));
    }
    Url::parse(raw).map_err(|e| format!("parse \"{raw}\": {e}"))
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Go's `net.SplitHostPort`: `host:port` or `[v6]:port`; the port may be
/// empty but the colon must be there.
#[must_use]
pub fn split_host_port(hp: &str) -> Option<(&str, &str)> {
    if let Some(rest) = hp.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        if port.contains([':', '[', ']']) {
            return None;
        }
        return Some((host, port));
    }
    let (host, port) = hp.rsplit_once(':')?;
    if host.contains(':') || host.contains(['[', ']']) || port.contains(['[', ']']) {
        return None;
    }
    Some((host, port))
}

/// The string Go's `url.URL.String()` gives for a URL that passed
/// [`parse_url`]: `scheme://host:port` with the port always present and no
/// trailing slash. Use it wherever etcd prints or compares URLs.
#[must_use]
pub fn url_string(u: &Url) -> String {
    let mut s = format!("{}://", u.scheme());
    if !u.username().is_empty() {
        s.push_str(u.username());
        if let Some(p) = u.password() {
            s.push(':');
            s.push_str(p);
        }
        s.push('@');
    }
    s.push_str(u.host_str().unwrap_or(""));
    if let Some(port) = u.port_or_known_default() {
        s.push(':');
        s.push_str(&port.to_string());
    }
    if let Some(q) = u.query() {
        s.push('?');
        s.push_str(q);
    }
    s
}

/// The host part of a URL exactly as written (brackets stripped for IPv6),
/// used for the IP-literal check on listen URLs.
pub(crate) fn raw_host(u: &Url) -> String {
    match u.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Domain(d)) => d.to_string(),
        None => String::new(),
    }
}

/// Comma-joined [`url_string`]s, the form etcd logs and stores.
#[must_use]
pub fn urls_string(us: &[Url]) -> String {
    us.iter().map(url_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_checks_match_etcd() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("http://127.0.0.1:2379", Ok("http://127.0.0.1:2379")),
            (" http://localhost:2379 ", Ok("http://localhost:2379")),
            ("http://example.com:80", Ok("http://example.com:80")),
            ("https://[::1]:2379", Ok("https://[::1]:2379")),
            ("unix://localhost:1234", Ok("unix://localhost:1234")),
            (
                "ftp://127.0.0.1:1",
                Err("URL scheme must be http, https, unix, or unixs: ftp://127.0.0.1:1"),
            ),
            (
                "127.0.0.1:2379",
                Err("URL scheme must be http, https, unix, or unixs: 127.0.0.1:2379"),
            ),
            (
                "http://127.0.0.1",
                Err("URL address does not have the form \"host:port\": http://127.0.0.1"),
            ),
            (
                "http://127.0.0.1:2379/x",
                Err("URL must not contain a path: http://127.0.0.1:2379/x"),
            ),
            (
                "http://127.0.0.1:2379/",
                Err("URL must not contain a path: http://127.0.0.1:2379/"),
            ),
        ];
        for (raw, want) in cases {
            let got = parse_urls(raw).map(|u| urls_string(&u));
            let want = want.map(str::to_string).map_err(str::to_string);
            assert_eq!(got, want, "{raw}");
        }
    }

    #[test]
    fn url_list_is_sorted() {
        let us = parse_urls("http://b:2,http://a:1").unwrap();
        assert_eq!(urls_string(&us), "http://a:1,http://b:2");
    }
}
