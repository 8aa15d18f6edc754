//! The Lease service of the proxy. Grant, revoke, time-to-live and the
//! lease list pass through; keep-alives are coalesced: every client stream
//! of the proxy feeds one upstream keep-alive stream, a lease with a
//! keep-alive already in flight is not asked for again, and an answer at
//! most [`FRESH`] old is reused. A thousand clients keeping one lease
//! alive cost the cluster one keep-alive at a time, not a thousand.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use oxcd_api::etcdserverpb::lease_client::LeaseClient;
use oxcd_api::etcdserverpb::lease_server::Lease;
use oxcd_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::namespace::Namespace;
use super::upstream::{is_connection_failure, upcall, Upstream};

/// How long a keep-alive answer is good for other callers of the same
/// lease: well under a second, the TTL's unit, so the TTL it reports is
/// never a whole second too long.
const FRESH: Duration = Duration::from_millis(500);

/// Answers a client stream may have waiting before more are dropped (a
/// client that does not read its stream must not grow the proxy).
const CLIENT_QUEUE: usize = 64;

/// `Lease` for clients of the proxy.
#[derive(Debug)]
pub struct LeaseProxy {
    up: Arc<Upstream>,
    ns: Namespace,
    asks: mpsc::Sender<Ask>,
}

/// A client's keep-alive of one lease, and where its answer goes.
#[derive(Debug)]
struct Ask {
    id: i64,
    reply: mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>,
}

impl LeaseProxy {
    /// The Lease service over `up`; starts the shared keep-alive stream's
    /// task on the current runtime.
    pub fn new(up: Arc<Upstream>, ns: Namespace) -> LeaseProxy {
        let (asks, rx) = mpsc::channel(1024);
        tokio::spawn(coalesce(up.clone(), rx));
        LeaseProxy { up, ns, asks }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseProxy {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let r = req.get_ref().clone();
        // A grant with an ID is safe to repeat (the second says the lease
        // exists); one without might grant two leases.
        let repeatable = r.id != 0;
        self.up
            .unary(repeatable, upcall!(LeaseClient, lease_grant, &req, r))
            .await
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let r = req.get_ref().clone();
        self.up
            .unary(false, upcall!(LeaseClient, lease_revoke, &req, r))
            .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let asks = self.asks.clone();
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(k)) => {
                        let ask = Ask {
                            id: k.id,
                            reply: tx.clone(),
                        };
                        if asks.send(ask).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.try_send(Err(e));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.get_ref().clone();
        let mut resp = self
            .up
            .unary(true, upcall!(LeaseClient, lease_time_to_live, &req, r))
            .await?
            .into_inner();
        self.ns.lease_ttl_resp(&mut resp);
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let r = req.get_ref().clone();
        self.up
            .unary(true, upcall!(LeaseClient, lease_leases, &req, r))
            .await
    }
}

/// The one upstream keep-alive stream and what waits on it.
struct Coalescer {
    up: Arc<Upstream>,
    /// Callers waiting for each lease's in-flight keep-alive.
    waiting: HashMap<i64, Vec<mpsc::Sender<Result<LeaseKeepAliveResponse, Status>>>>,
    /// The last answer per lease, and when it came.
    recent: HashMap<i64, (Instant, LeaseKeepAliveResponse)>,
    stream: Option<(
        usize,
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )>,
}

/// Runs the shared keep-alive stream until every [`LeaseProxy`] is gone.
async fn coalesce(up: Arc<Upstream>, mut asks: mpsc::Receiver<Ask>) {
    let mut c = Coalescer {
        up,
        waiting: HashMap::new(),
        recent: HashMap::new(),
        stream: None,
    };
    let mut retry = tokio::time::interval(Duration::from_millis(200));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let answer = async {
            match c.stream.as_mut() {
                Some((_, _, s)) => s.message().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ask = asks.recv() => {
                let Some(ask) = ask else { return };
                c.ask(ask).await;
            }
            a = answer => match a {
                Ok(Some(resp)) => c.answer(resp),
                Ok(None) => c.lost(Status::unavailable("keep-alive stream closed")),
                Err(e) => c.lost(e),
            },
            _ = retry.tick() => {
                c.recent.retain(|_, (at, _)| at.elapsed() < FRESH);
                if c.stream.is_none() && !c.waiting.is_empty() {
                    c.reconnect().await;
                }
            }
        }
    }
}

impl Coalescer {
    async fn ask(&mut self, ask: Ask) {
        if let Some((at, resp)) = self.recent.get(&ask.id) {
            if at.elapsed() < FRESH {
                let _ = ask.reply.try_send(Ok(resp.clone()));
                return;
            }
        }
        let first = !self.waiting.contains_key(&ask.id);
        let waiters = self.waiting.entry(ask.id).or_default();
        // One entry per client stream, however often it asks meanwhile.
        if !waiters.iter().any(|w| w.same_channel(&ask.reply)) {
            waiters.push(ask.reply);
        }
        if first {
            self.send(ask.id).await;
        }
    }

    /// Sends a keep-alive of `id` upstream, opening the stream if needed.
    async fn send(&mut self, id: i64) {
        if self.stream.is_none() {
            self.reconnect().await;
            // reconnect() re-sent every waiting lease, `id` included.
            return;
        }
        if let Some((_, tx, _)) = &self.stream {
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                self.lost(Status::unavailable("keep-alive stream closed"));
            }
        }
    }

    fn answer(&mut self, resp: LeaseKeepAliveResponse) {
        let now = Instant::now();
        if let Some(waiters) = self.waiting.remove(&resp.id) {
            for w in waiters {
                let _ = w.try_send(Ok(resp.clone()));
            }
        }
        self.recent.insert(resp.id, (now, resp));
    }

    /// The upstream stream broke: the next endpoint gets the waiting
    /// leases (after a connection failure), or the callers get the error.
    fn lost(&mut self, e: Status) {
        if let Some((i, _, _)) = self.stream.take() {
            if is_connection_failure(&e) {
                self.up.failed(i);
                return;
            }
        }
        self.fail_all(e);
    }

    async fn reconnect(&mut self) {
        let (i, ch) = self.up.channel();
        let (tx, rx) = mpsc::channel(1024);
        for id in self.waiting.keys() {
            let _ = tx.try_send(LeaseKeepAliveRequest { id: *id });
        }
        match LeaseClient::new(ch)
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
        {
            Ok(s) => self.stream = Some((i, tx, s.into_inner())),
            Err(e) if is_connection_failure(&e) => self.up.failed(i),
            Err(e) => self.fail_all(e),
        }
    }

    fn fail_all(&mut self, e: Status) {
        for (_, waiters) in self.waiting.drain() {
            for w in waiters {
                let _ = w.try_send(Err(e.clone()));
            }
        }
    }
}
