//! Log lines in the shape of etcd's zap JSON logger, on stderr: tools and
//! tests that wait for etcd's proxy lines (`ready to proxy client
//! requests`, `started gRPC proxy`) find them in oxcd's.

/// Writes one JSON log line: level, timestamp, etcd's caller, message,
/// then the fields in order.
pub fn line(level: &str, caller: &str, msg: &str, fields: serde_json::Value) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line = format!(
        "{{\"level\":{},\"ts\":{ts},\"caller\":{},\"msg\":{}",
        serde_json::Value::from(level),
        serde_json::Value::from(caller),
        serde_json::Value::from(msg)
    );
    for (k, v) in fields.as_object().into_iter().flatten() {
        line.push_str(&format!(",{}:{v}", serde_json::Value::from(k.as_str())));
    }
    line.push('}');
    eprintln!("{line}");
}
