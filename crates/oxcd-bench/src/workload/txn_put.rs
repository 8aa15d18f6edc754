//! `txn-put`: etcd benchmark's `txn_put.go`. Txn i holds `--txn-ops` puts
//! on keys `(i * txn_ops + j) % key_space`, distinct within one txn.

use std::time::Instant;

use oxcd_api::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};

use super::{at_least, drive, Plan};
use crate::cli::TxnPutOpts;
use crate::conn::Conns;
use crate::error::BenchError;
use crate::keys::{encode_key, random_value};
use crate::report::Summary;

/// Runs `opts.total` txns over `conns`' clients until done or `deadline`.
///
/// # Errors
/// `--txn-ops` or `--key-size` below 1, or a key space smaller than
/// `--txn-ops` (a txn would put one key twice, which etcd rejects).
pub async fn run(
    conns: &Conns,
    opts: &TxnPutOpts,
    deadline: Instant,
) -> Result<Summary, BenchError> {
    at_least("--txn-ops", opts.txn_ops, 1)?;
    at_least("--key-size", opts.key_size, 1)?;
    let ops = u64::try_from(opts.txn_ops).expect("usize fits in u64");
    at_least("--key-space-size", opts.key_space_size, ops)?;
    let clients = conns.kv_clients();
    let value = random_value(opts.val_size);
    let (key_size, space) = (opts.key_size, opts.key_space_size);
    let plan = Plan {
        command: "txn-put",
        clients: clients.len(),
        total: opts.total,
        rate: 0,
        deadline,
        until: None,
    };
    Ok(drive(plan, move |client, i| {
        let kv = clients[client].clone();
        let success = (0..ops)
            .map(|j| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: encode_key((i.wrapping_mul(ops) + j) % space, key_size),
                    value: value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let req = TxnRequest {
            success,
            ..Default::default()
        };
        async move { kv.txn(&req).await.map(drop) }
    })
    .await)
}
