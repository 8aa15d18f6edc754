//! `put`: etcd benchmark's `put.go`. Each request writes one key of the key
//! space (random, or index modulo the key space with `--sequential-keys`)
//! with the same random value.

use std::time::Instant;

use oxcd_api::etcdserverpb::PutRequest;

use super::{at_least, drive, Plan};
use crate::cli::PutOpts;
use crate::conn::Conns;
use crate::error::BenchError;
use crate::keys::{encode_key, random_value};
use crate::report::Summary;

/// Runs `opts.total` puts over `conns`' clients until done or `deadline`.
///
/// # Errors
/// `--key-size` or `--key-space-size` below 1.
pub async fn run(conns: &Conns, opts: &PutOpts, deadline: Instant) -> Result<Summary, BenchError> {
    at_least("--key-size", opts.key_size, 1)?;
    at_least("--key-space-size", opts.key_space_size, 1)?;
    let clients = conns.kv_clients();
    let value = random_value(opts.val_size);
    let (key_size, space, sequential) = (opts.key_size, opts.key_space_size, opts.sequential_keys);
    let plan = Plan {
        command: "put",
        clients: clients.len(),
        total: opts.total,
        rate: 0,
        deadline,
        until: None,
    };
    Ok(drive(plan, move |client, i| {
        let kv = clients[client].clone();
        let n = if sequential {
            i % space
        } else {
            rand::random_range(0..space)
        };
        let req = PutRequest {
            key: encode_key(n, key_size),
            value: value.clone(),
            ..Default::default()
        };
        async move { kv.put(&req).await.map(drop) }
    })
    .await)
}
