//! etcdserver for oxcd.
