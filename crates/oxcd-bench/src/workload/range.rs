//! `range`: etcd benchmark's `range.go`. Every request reads the same key
//! or range (or, with `--all`, every key; with `--key-space-size`, one key
//! drawn at random), linearizably or serializably.

use std::time::Instant;

use bytes::Bytes;
use oxcd_api::etcdserverpb::RangeRequest;

use super::{drive, Plan};
use crate::cli::{Consistency, RangeOpts};
use crate::conn::Conns;
use crate::error::BenchError;
use crate::keys::encode_key;
use crate::report::Summary;

/// Runs `opts.total` range requests over `conns`' clients until done or
/// `deadline`.
///
/// # Errors
/// `--key-space-size 0`.
pub async fn run(
    conns: &Conns,
    opts: &RangeOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    let clients = conns.kv_clients();
    let (key, range_end) = if opts.all {
        (Bytes::from_static(b"\0"), Bytes::from_static(b"\0"))
    } else {
        let bytes = |s: &Option<String>| s.clone().map_or_else(Bytes::new, Bytes::from);
        (bytes(&opts.key), bytes(&opts.end))
    };
    let template = RangeRequest {
        key,
        range_end,
        limit: opts.limit,
        serializable: opts.consistency == Consistency::Serializable,
        count_only: opts.count_only,
        ..Default::default()
    };
    let plan = Plan {
        command: "range",
        clients: clients.len(),
        total: opts.total,
        rate: 0,
        deadline,
        until: None,
    };
    let space = opts.key_space_size;
    if let Some(n) = space {
        super::at_least("--key-space-size", n, 1)?;
    }
    Ok(drive(plan, move |client, _| {
        let kv = clients[client].clone();
        let mut req = template.clone();
        if let Some(space) = space {
            req.key = encode_key(rand::random_range(0..space), 8);
        }
        async move { kv.range(&req).await.map(drop) }
    })
    .await)
}
