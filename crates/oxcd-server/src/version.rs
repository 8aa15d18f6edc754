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

/// `major.minor` of a version (`3.4.0` → `3.4`), as etcd's
/// `version.Cluster` prints cluster versions; a version that is already
/// `major.minor` is returned as is.
pub fn major_minor(v: &str) -> &str {
    match v.match_indices('.').nth(1) {
        Some((second_dot, _)) => &v[..second_dot],
        None => v,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn major_minor_cuts_the_patch_only() {
        assert_eq!(super::major_minor("3.4.0"), "3.4");
        assert_eq!(super::major_minor("3.5"), "3.5");
        assert_eq!(super::major_minor("3"), "3");
    }
}
