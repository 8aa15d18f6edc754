//! Versions oxcd reports. oxcd speaks etcd 3.4's API and reports itself as
//! that etcd version, so version-gated clients and tools accept it.

/// The etcd server version oxcd is compatible with (`/version`, Status).
pub const SERVER_VERSION: &str = "3.4.23";
/// The cluster version a 3.4 cluster settles on.
pub const CLUSTER_VERSION: &str = "3.4.0";
/// The API capability version logged at readiness.
pub const API_VERSION: &str = "3.4";
/// oxcd's own version.
pub const OXCD_VERSION: &str = env!("CARGO_PKG_VERSION");
