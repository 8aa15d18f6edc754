//! Connections and clients, as etcd's benchmark makes them: `--conns`
//! HTTP/2 channels (connection i dials endpoint i % endpoints), and
//! `--clients` logical clients, client i sharing connection i % conns.

use std::sync::Arc;
use std::time::Duration;

use oxcd_api::etcdserverpb::kv_client::KvClient;
use oxcd_api::etcdserverpb::maintenance_client::MaintenanceClient;
use oxcd_api::etcdserverpb::{
    AuthenticateRequest, AuthenticateResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, StatusRequest, TxnRequest, TxnResponse,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::Status;

use crate::cli::{ClientKind, GlobalOpts};
use crate::error::BenchError;
use crate::h2chan::H2Channel;

/// The dialled connections and the number of clients spread over them.
#[derive(Debug, Clone)]
pub struct Conns {
    channels: Vec<H2Channel>,
    /// With `--client tonic`: the connections the unary KV calls use
    /// instead (`channels` then holds one connection, for setup calls).
    tonic: Vec<KvClient<tonic::transport::Channel>>,
    /// The auth token the tonic clients send (`--user`).
    token: Option<AsciiMetadataValue>,
    clients: usize,
    dialer: Dialer,
}

/// How to open one more connection as the flags say: the endpoints (only
/// the leader's with `--target-leader`), TLS, the dial timeout, `--user`.
#[derive(Debug, Clone)]
pub struct Dialer {
    urls: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    user: Option<String>,
}

impl Dialer {
    /// Dials connection `i` (endpoint `i % endpoints`) and authenticates
    /// it with `--user`.
    ///
    /// # Errors
    /// A failed dial or authentication.
    pub async fn dial(&self, i: usize) -> Result<H2Channel, BenchError> {
        let mut ch = dial(
            &self.urls[i % self.urls.len()],
            self.timeout,
            self.tls.as_ref(),
        )
        .await?;
        if let Some(user) = &self.user {
            authenticate(&mut ch, user).await?;
        }
        Ok(ch)
    }
}

impl Conns {
    /// Dials `opts.conns` connections eagerly (each bounded by
    /// `--dial-timeout`); with `--target-leader` and several endpoints,
    /// all of them dial the leader.
    ///
    /// # Errors
    /// Zero conns or clients, a malformed endpoint or TLS file, a failed
    /// dial, or no leader found.
    pub async fn connect(opts: &GlobalOpts) -> Result<Conns, BenchError> {
        if opts.conns == 0 || opts.clients == 0 {
            return Err(BenchError::InvalidArgs(
                "--conns and --clients must be at least 1".into(),
            ));
        }
        let tls = crate::tls::client_config(opts)?;
        let mut urls = opts
            .endpoints
            .iter()
            .map(|e| endpoint_url(e, tls.is_some()))
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(BenchError::InvalidArgs("no --endpoints given".into()));
        }
        let timeout = Duration::from_secs(opts.dial_timeout.max(1));
        if opts.target_leader && urls.len() > 1 {
            urls = vec![find_leader(&urls, timeout, tls.as_ref()).await?];
        }
        let dialer = Dialer {
            urls,
            tls,
            timeout,
            user: opts.user.clone(),
        };
        let tonic_client = opts.client == ClientKind::Tonic;
        let own = if tonic_client { 1 } else { opts.conns };
        let mut channels = Vec::with_capacity(own);
        for i in 0..own {
            channels.push(dialer.dial(i).await?);
        }
        let mut tonic = Vec::new();
        let mut token = None;
        if tonic_client {
            let tls = crate::tls::tonic_config(opts)?;
            for i in 0..opts.conns {
                let url = &dialer.urls[i % dialer.urls.len()];
                tonic.push(KvClient::new(dial_tonic(url, timeout, tls.as_ref()).await?));
            }
            token = match channels[0].token() {
                Some(t) => Some(
                    AsciiMetadataValue::try_from(t.as_bytes())
                        .map_err(|e| BenchError::InvalidArgs(format!("unusable token: {e}")))?,
                ),
                None => None,
            };
        }
        Ok(Conns {
            channels,
            tonic,
            token,
            clients: opts.clients,
            dialer,
        })
    }

    /// Opens further connections as the flags say.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Number of logical clients (`--clients`).
    pub fn clients(&self) -> usize {
        self.clients
    }

    /// The connection that client `client` uses.
    pub fn channel_for(&self, client: usize) -> H2Channel {
        self.channels[client % self.channels.len()].clone()
    }

    /// The KV client of logical client `client`.
    pub fn kv_for(&self, client: usize) -> Kv {
        Kv {
            h2: self.channel_for(client),
            tonic: (!self.tonic.is_empty()).then(|| self.tonic[client % self.tonic.len()].clone()),
            token: self.token.clone(),
        }
    }

    /// One KV client per logical client.
    pub fn kv_clients(&self) -> Vec<Kv> {
        (0..self.clients).map(|c| self.kv_for(c)).collect()
    }
}

/// The unary KV calls the workloads make: on [`H2Channel::unary`], or
/// with `--client tonic` through tonic's generated client on tonic's
/// `Channel` (what a Rust user of tonic or the `etcd-client` crate runs).
#[derive(Debug, Clone)]
pub struct Kv {
    h2: H2Channel,
    tonic: Option<KvClient<tonic::transport::Channel>>,
    token: Option<AsciiMetadataValue>,
}

impl Kv {
    /// The connection for calls beyond Put, Range and Txn.
    pub fn channel(&self) -> &H2Channel {
        &self.h2
    }

    /// `req` as a tonic request, with the token.
    fn request<T>(&self, req: &T) -> tonic::Request<T>
    where
        T: Clone,
    {
        let mut r = tonic::Request::new(req.clone());
        if let Some(t) = &self.token {
            r.metadata_mut().insert("token", t.clone());
        }
        r
    }

    /// `KV/Put`.
    ///
    /// # Errors
    /// The server's gRPC status, or a transport failure.
    pub async fn put(&self, req: &PutRequest) -> Result<PutResponse, Status> {
        match &self.tonic {
            Some(c) => Ok(c.clone().put(self.request(req)).await?.into_inner()),
            None => self.h2.unary("/etcdserverpb.KV/Put", req).await,
        }
    }

    /// `KV/Range`.
    ///
    /// # Errors
    /// The server's gRPC status, or a transport failure.
    pub async fn range(&self, req: &RangeRequest) -> Result<RangeResponse, Status> {
        match &self.tonic {
            Some(c) => Ok(c.clone().range(self.request(req)).await?.into_inner()),
            None => self.h2.unary("/etcdserverpb.KV/Range", req).await,
        }
    }

    /// `KV/Txn`.
    ///
    /// # Errors
    /// The server's gRPC status, or a transport failure.
    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, Status> {
        match &self.tonic {
            Some(c) => Ok(c.clone().txn(self.request(req)).await?.into_inner()),
            None => self.h2.unary("/etcdserverpb.KV/Txn", req).await,
        }
    }
}

/// A tonic `Channel` to `url`: tonic's defaults, as a new user gets them,
/// with `TCP_NODELAY` (tonic's default too) and the dial timeout.
async fn dial_tonic(
    url: &str,
    timeout: Duration,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, BenchError> {
    let err = |e: tonic::transport::Error| BenchError::InvalidArgs(format!("{url}: {e}"));
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(err)?
        .connect_timeout(timeout);
    if let Some(tls) = tls {
        ep = ep.tls_config(tls.clone()).map_err(err)?;
    }
    ep.connect().await.map_err(err)
}

/// Authenticates `user` (`name:password`) on `ch` and makes its calls
/// carry the token.
async fn authenticate(ch: &mut H2Channel, user: &str) -> Result<(), BenchError> {
    let (name, password) = user
        .split_once(':')
        .ok_or_else(|| BenchError::InvalidArgs("--user must be name:password".into()))?;
    let req = AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let resp: AuthenticateResponse = ch
        .unary("/etcdserverpb.Auth/Authenticate", &req)
        .await
        .map_err(|s| BenchError::setup("Auth", "authenticate", s))?;
    ch.set_token(&resp.token)
        .map_err(|e| BenchError::InvalidArgs(format!("unusable token: {e}")))
}

/// `host:port` becomes `http://host:port` (`https://` with `tls`);
/// `http://` and `https://` URLs pass through.
fn endpoint_url(endpoint: &str, tls: bool) -> Result<String, BenchError> {
    let invalid = |reason: &str| BenchError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    match endpoint.split_once("://") {
        None if endpoint.is_empty() => Err(invalid("empty")),
        None if tls => Ok(format!("https://{endpoint}")),
        None => Ok(format!("http://{endpoint}")),
        Some(("http", rest)) if !rest.is_empty() => Ok(endpoint.to_string()),
        Some(("https", rest)) if !rest.is_empty() && tls => Ok(endpoint.to_string()),
        Some(("https", _)) => Err(invalid("https needs --cacert")),
        Some(_) => Err(invalid(
            "expected host:port, http://host:port or https://host:port",
        )),
    }
}

async fn dial(
    url: &str,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<H2Channel, BenchError> {
    H2Channel::dial(url, timeout, tls)
        .await
        .map_err(|e| BenchError::Connect {
            endpoint: url.to_string(),
            source: e,
        })
}

/// The first endpoint whose Status says it is the leader.
async fn find_leader(
    urls: &[String],
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<String, BenchError> {
    for url in urls {
        let Ok(channel) = dial(url, timeout, tls).await else {
            continue;
        };
        let status = tokio::time::timeout(
            timeout,
            MaintenanceClient::new(channel).status(StatusRequest {}),
        )
        .await;
        if let Ok(Ok(reply)) = status {
            let reply = reply.into_inner();
            let member = reply.header.as_ref().map_or(0, |h| h.member_id);
            if member != 0 && reply.leader == member {
                return Ok(url.clone());
            }
        }
    }
    Err(BenchError::NoLeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url("127.0.0.1:2379", true).unwrap(),
            "https://127.0.0.1:2379"
        );
        assert_eq!(endpoint_url("http://h:1", true).unwrap(), "http://h:1");
        assert_eq!(endpoint_url("https://h:1", true).unwrap(), "https://h:1");
        assert!(endpoint_url("https://h:1", false).is_err());
        assert!(endpoint_url("unix://x", false).is_err());
        assert!(endpoint_url("", false).is_err());
    }
}
