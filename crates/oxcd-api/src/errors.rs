//! etcd's client-visible error table: every `rpctypes.ErrGRPC*` error with its
//! gRPC code and exact message.
//!
//! Mirrors `etcdserver/api/v3rpc/rpctypes/error.go` (etcd 3.4). Clients
//! (clientv3, etcdctl) recognise these errors by their message text, so the
//! text must match byte for byte, including the `etcdserver: ` prefix.
//!
//! The table is written once, in the `etcd_errors!` invocation below; the enum,
//! [`EtcdError::KNOWN`] and the code/message lookup are all generated from it,
//! so they cannot drift apart.
//!
//! Version note: etcd 3.6 changed the code of `NotCapable` and
//! `NotSupportedForLearner` from Unavailable to FailedPrecondition. This table
//! keeps the 3.4 codes; clients match on the message, which did not change.

use tonic::{Code, Status};

/// Declares [`EtcdError`] and its lookup table from one list of
/// `Variant => (Code, "message")` rows.
macro_rules! etcd_errors {
    ($( $(#[$attr:meta])* $variant:ident => ($code:ident, $msg:literal), )*) => {
        /// An error etcd sends to clients, with its gRPC code and exact text.
        ///
        /// Converted into a [`tonic::Status`] at the service edge with
        /// `Status::from`. Every variant but [`EtcdError::Unknown`] is one row
        /// of etcd's `rpctypes` table.
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[non_exhaustive]
        #[error("{}", self.message())]
        pub enum EtcdError {
            $( $(#[$attr])* $variant, )*
            /// An error etcd does not map: sent as code Unknown with its raw
            /// text (e.g. `"election: no leader"`, `"auth: permission denied"`
            /// from Maintenance, `"etcdserver: request cancelled"`).
            Unknown(String),
        }

        impl EtcdError {
            /// Every table error, i.e. every variant except `Unknown`.
            pub const KNOWN: &'static [EtcdError] = &[$(EtcdError::$variant),*];

            /// The row of the table for this error.
            fn spec(&self) -> (Code, &str) {
                match self {
                    $( EtcdError::$variant => (Code::$code, $msg), )*
                    EtcdError::Unknown(text) => (Code::Unknown, text.as_str()),
                }
            }
        }
    };
}

etcd_errors! {
    /// A Range, Put, DeleteRange, compare or txn op has an empty key.
    EmptyKey => (InvalidArgument, "etcdserver: key is not provided"),
    /// Put with ignore_value / ignore_lease on a missing key; also a txn op
    /// with no request set.
    KeyNotFound => (InvalidArgument, "etcdserver: key not found"),
    /// ignore_value together with a non-empty value.
    ValueProvided => (InvalidArgument, "etcdserver: value is provided"),
    /// ignore_lease together with a non-zero lease.
    LeaseProvided => (InvalidArgument, "etcdserver: lease is provided"),
    /// A txn level has more compares or ops than `--max-txn-ops`.
    TooManyOps => (InvalidArgument, "etcdserver: too many operations in txn request"),
    /// A txn writes the same key twice (put/put or put/delete overlap).
    DuplicateKey => (InvalidArgument, "etcdserver: duplicate key given in txn request"),
    /// The requested revision is at or below the compaction revision.
    Compacted => (OutOfRange, "etcdserver: mvcc: required revision has been compacted"),
    /// The requested revision is above the current revision.
    FutureRev => (OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
    /// The backend quota is exceeded or the NOSPACE alarm is raised.
    NoSpace => (ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
    /// The lease named by a request does not exist.
    LeaseNotFound => (NotFound, "etcdserver: requested lease not found"),
    /// LeaseGrant with an explicit id already in use.
    LeaseExist => (FailedPrecondition, "etcdserver: lease already exists"),
    /// LeaseGrant with a TTL above [`crate::limits::MAX_LEASE_TTL`].
    LeaseTTLTooLarge => (OutOfRange, "etcdserver: too large lease TTL"),
    /// Final status of a Watch stream whose context was cancelled.
    WatchCanceled => (Cancelled, "etcdserver: watch canceled"),
    /// MemberAdd with an id that is already a member.
    MemberExist => (FailedPrecondition, "etcdserver: member ID already exist"),
    /// A peer URL is already used by another member.
    PeerURLExist => (FailedPrecondition, "etcdserver: Peer URLs already exists"),
    /// Strict reconfig: the change would leave too few started voters.
    /// rpctypes declares it FailedPrecondition, but etcd 3.4's `togRPCError`
    /// maps the server error to the client-side `rpctypes.Error` wrapper,
    /// which gRPC sends as code Unknown (seen on a real 3.4.23 server).
    MemberNotEnoughStarted => (Unknown, "etcdserver: re-configuration failed due to not enough started members"),
    /// MemberAdd peer URLs do not parse.
    MemberBadURLs => (InvalidArgument, "etcdserver: given member URLs are invalid"),
    /// The member id is unknown or was removed.
    MemberNotFound => (NotFound, "etcdserver: member not found"),
    /// MemberPromote of a voting member.
    MemberNotLearner => (FailedPrecondition, "etcdserver: can only promote a learner member"),
    /// MemberPromote of a learner that has not caught up with the leader.
    LearnerNotReady => (FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader"),
    /// The change would exceed the learner limit.
    TooManyLearners => (FailedPrecondition, "etcdserver: too many learner members in cluster"),
    /// The marshalled proposal exceeds `--max-request-bytes`.
    RequestTooLarge => (InvalidArgument, "etcdserver: request is too large"),
    /// Apply lags commit by too much to accept another proposal (Go name
    /// `ErrGRPCRequestTooManyRequests`).
    TooManyRequests => (ResourceExhausted, "etcdserver: too many requests"),
    /// AuthEnable without a `root` user.
    RootUserNotExist => (FailedPrecondition, "etcdserver: root user does not exist"),
    /// AuthEnable while `root` lacks the `root` role.
    RootRoleNotExist => (FailedPrecondition, "etcdserver: root user does not have root role"),
    /// UserAdd of an existing user.
    UserAlreadyExist => (FailedPrecondition, "etcdserver: user name already exists"),
    /// Empty user name; also a request without credentials while auth is on.
    UserEmpty => (InvalidArgument, "etcdserver: user name is empty"),
    /// The named user does not exist.
    UserNotFound => (FailedPrecondition, "etcdserver: user name not found"),
    /// RoleAdd of an existing role.
    RoleAlreadyExist => (FailedPrecondition, "etcdserver: role name already exists"),
    /// The named role does not exist.
    RoleNotFound => (FailedPrecondition, "etcdserver: role name not found"),
    /// RoleAdd with an empty name.
    RoleEmpty => (InvalidArgument, "etcdserver: role name is empty"),
    /// Authenticate with an unknown user or a wrong password.
    AuthFailed => (InvalidArgument, "etcdserver: authentication failed, invalid user ID or password"),
    /// The caller lacks a key permission or admin rights.
    PermissionDenied => (PermissionDenied, "etcdserver: permission denied"),
    /// UserRevokeRole of a role the user does not have.
    RoleNotGranted => (FailedPrecondition, "etcdserver: role is not granted to the user"),
    /// RoleRevokePermission with no exactly matching permission.
    PermissionNotGranted => (FailedPrecondition, "etcdserver: permission is not granted to the role"),
    /// RoleGrantPermission without a permission (etcd 3.6's error; 3.4
    /// crashed at apply).
    PermissionNotGiven => (InvalidArgument, "etcdserver: permission not given"),
    /// Authenticate while auth is disabled.
    AuthNotEnabled => (FailedPrecondition, "etcdserver: authentication is not enabled"),
    /// The token is unknown, expired or malformed.
    InvalidAuthToken => (Unauthenticated, "etcdserver: invalid auth token"),
    /// An operation that would lock out `root` while auth is on.
    InvalidAuthMgmt => (InvalidArgument, "etcdserver: invalid auth management"),
    /// The auth store changed after the request's token was checked.
    AuthOldRevision => (InvalidArgument, "etcdserver: revision of auth store is old"),
    /// There is no leader (and the caller required one).
    NoLeader => (Unavailable, "etcdserver: no leader"),
    /// A leader-only call reached a follower.
    NotLeader => (FailedPrecondition, "etcdserver: not leader"),
    /// A linearizable read was interrupted by a leader change.
    LeaderChanged => (Unavailable, "etcdserver: leader changed"),
    /// The cluster version is not yet known, so the v3 API is off.
    NotCapable => (Unavailable, "etcdserver: not capable"),
    /// The server is shutting down.
    Stopped => (Unavailable, "etcdserver: server stopped"),
    /// A proposal was not applied within the request timeout.
    Timeout => (Unavailable, "etcdserver: request timed out"),
    /// Timed out while a new leader was being elected.
    TimeoutDueToLeaderFail => (Unavailable, "etcdserver: request timed out, possibly due to previous leader failure"),
    /// Timed out after losing contact with the quorum or the leader.
    TimeoutDueToConnectionLost => (Unavailable, "etcdserver: request timed out, possibly due to connection lost"),
    /// A lease call waited too long for apply to catch up.
    TimeoutWaitAppliedIndex => (Unavailable, "etcdserver: request timed out, waiting for the applied index took too long"),
    /// Strict reconfig: the cluster is not healthy enough for the change.
    Unhealthy => (Unavailable, "etcdserver: unhealthy cluster"),
    /// The CORRUPT alarm is raised.
    Corrupt => (DataLoss, "etcdserver: corrupt cluster"),
    /// A learner got a call other than Status or a serializable Range (Go
    /// name `ErrGPRCNotSupportedForLearner`, typo included).
    NotSupportedForLearner => (Unavailable, "etcdserver: rpc not supported for learner"),
    /// The MoveLeader target is unknown or a learner.
    BadLeaderTransferee => (FailedPrecondition, "etcdserver: bad leader transferee"),
    /// [3.5] Downgrade with a version that is not `major.minor[.patch]`.
    WrongDowngradeVersionFormat => (InvalidArgument, "etcdserver: wrong downgrade target version format"),
    /// [3.5] Downgrade to a version the cluster cannot go back to.
    InvalidDowngradeTargetVersion => (InvalidArgument, "etcdserver: invalid downgrade target version"),
    /// [3.5] Downgrade CANCEL with no downgrade in progress.
    NoInflightDowngrade => (FailedPrecondition, "etcdserver: no inflight downgrade job"),
}

impl EtcdError {
    /// The gRPC status code etcd sends for this error.
    pub fn code(&self) -> Code {
        self.spec().0
    }

    /// The exact status message etcd sends, `etcdserver: ` prefix included.
    pub fn message(&self) -> &str {
        self.spec().1
    }

    /// Recognises an etcd error in a received status, the way clientv3 does:
    /// by message text alone, whatever the code (v3lock and v3election pass
    /// KV errors through with code Unknown but the same text).
    ///
    /// Returns `Unknown(text)` for an unrecognised message with code Unknown,
    /// and `None` for anything else (transport, deadline, cancellation...).
    pub fn from_status(status: &Status) -> Option<EtcdError> {
        let text = status.message();
        if let Some(known) = Self::KNOWN.iter().find(|e| e.message() == text) {
            return Some(known.clone());
        }
        (status.code() == Code::Unknown).then(|| EtcdError::Unknown(text.to_owned()))
    }
}

impl From<EtcdError> for Status {
    fn from(err: EtcdError) -> Status {
        Status::new(err.code(), err.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transcribed independently from ETCD-FACTS.md §1 (prefix added back).
    const TABLE: &[(EtcdError, Code, &str)] = &[
        (
            EtcdError::EmptyKey,
            Code::InvalidArgument,
            "key is not provided",
        ),
        (
            EtcdError::KeyNotFound,
            Code::InvalidArgument,
            "key not found",
        ),
        (
            EtcdError::ValueProvided,
            Code::InvalidArgument,
            "value is provided",
        ),
        (
            EtcdError::LeaseProvided,
            Code::InvalidArgument,
            "lease is provided",
        ),
        (
            EtcdError::TooManyOps,
            Code::InvalidArgument,
            "too many operations in txn request",
        ),
        (
            EtcdError::DuplicateKey,
            Code::InvalidArgument,
            "duplicate key given in txn request",
        ),
        (
            EtcdError::Compacted,
            Code::OutOfRange,
            "mvcc: required revision has been compacted",
        ),
        (
            EtcdError::FutureRev,
            Code::OutOfRange,
            "mvcc: required revision is a future revision",
        ),
        (
            EtcdError::NoSpace,
            Code::ResourceExhausted,
            "mvcc: database space exceeded",
        ),
        (
            EtcdError::LeaseNotFound,
            Code::NotFound,
            "requested lease not found",
        ),
        (
            EtcdError::LeaseExist,
            Code::FailedPrecondition,
            "lease already exists",
        ),
        (
            EtcdError::LeaseTTLTooLarge,
            Code::OutOfRange,
            "too large lease TTL",
        ),
        (EtcdError::WatchCanceled, Code::Cancelled, "watch canceled"),
        (
            EtcdError::MemberExist,
            Code::FailedPrecondition,
            "member ID already exist",
        ),
        (
            EtcdError::PeerURLExist,
            Code::FailedPrecondition,
            "Peer URLs already exists",
        ),
        (
            EtcdError::MemberNotEnoughStarted,
            Code::Unknown,
            "re-configuration failed due to not enough started members",
        ),
        (
            EtcdError::MemberBadURLs,
            Code::InvalidArgument,
            "given member URLs are invalid",
        ),
        (
            EtcdError::MemberNotFound,
            Code::NotFound,
            "member not found",
        ),
        (
            EtcdError::MemberNotLearner,
            Code::FailedPrecondition,
            "can only promote a learner member",
        ),
        (
            EtcdError::LearnerNotReady,
            Code::FailedPrecondition,
            "can only promote a learner member which is in sync with leader",
        ),
        (
            EtcdError::TooManyLearners,
            Code::FailedPrecondition,
            "too many learner members in cluster",
        ),
        (
            EtcdError::RequestTooLarge,
            Code::InvalidArgument,
            "request is too large",
        ),
        (
            EtcdError::TooManyRequests,
            Code::ResourceExhausted,
            "too many requests",
        ),
        (
            EtcdError::RootUserNotExist,
            Code::FailedPrecondition,
            "root user does not exist",
        ),
        (
            EtcdError::RootRoleNotExist,
            Code::FailedPrecondition,
            "root user does not have root role",
        ),
        (
            EtcdError::UserAlreadyExist,
            Code::FailedPrecondition,
            "user name already exists",
        ),
        (
            EtcdError::UserEmpty,
            Code::InvalidArgument,
            "user name is empty",
        ),
        (
            EtcdError::UserNotFound,
            Code::FailedPrecondition,
            "user name not found",
        ),
        (
            EtcdError::RoleAlreadyExist,
            Code::FailedPrecondition,
            "role name already exists",
        ),
        (
            EtcdError::RoleNotFound,
            Code::FailedPrecondition,
            "role name not found",
        ),
        (
            EtcdError::RoleEmpty,
            Code::InvalidArgument,
            "role name is empty",
        ),
        (
            EtcdError::AuthFailed,
            Code::InvalidArgument,
            "authentication failed, invalid user ID or password",
        ),
        (
            EtcdError::PermissionDenied,
            Code::PermissionDenied,
            "permission denied",
        ),
        (
            EtcdError::RoleNotGranted,
            Code::FailedPrecondition,
            "role is not granted to the user",
        ),
        (
            EtcdError::PermissionNotGranted,
            Code::FailedPrecondition,
            "permission is not granted to the role",
        ),
        (
            EtcdError::PermissionNotGiven,
            Code::InvalidArgument,
            "permission not given",
        ),
        (
            EtcdError::AuthNotEnabled,
            Code::FailedPrecondition,
            "authentication is not enabled",
        ),
        (
            EtcdError::InvalidAuthToken,
            Code::Unauthenticated,
            "invalid auth token",
        ),
        (
            EtcdError::InvalidAuthMgmt,
            Code::InvalidArgument,
            "invalid auth management",
        ),
        (
            EtcdError::AuthOldRevision,
            Code::InvalidArgument,
            "revision of auth store is old",
        ),
        (EtcdError::NoLeader, Code::Unavailable, "no leader"),
        (EtcdError::NotLeader, Code::FailedPrecondition, "not leader"),
        (
            EtcdError::LeaderChanged,
            Code::Unavailable,
            "leader changed",
        ),
        (EtcdError::NotCapable, Code::Unavailable, "not capable"),
        (EtcdError::Stopped, Code::Unavailable, "server stopped"),
        (EtcdError::Timeout, Code::Unavailable, "request timed out"),
        (
            EtcdError::TimeoutDueToLeaderFail,
            Code::Unavailable,
            "request timed out, possibly due to previous leader failure",
        ),
        (
            EtcdError::TimeoutDueToConnectionLost,
            Code::Unavailable,
            "request timed out, possibly due to connection lost",
        ),
        (
            EtcdError::TimeoutWaitAppliedIndex,
            Code::Unavailable,
            "request timed out, waiting for the applied index took too long",
        ),
        (EtcdError::Unhealthy, Code::Unavailable, "unhealthy cluster"),
        (EtcdError::Corrupt, Code::DataLoss, "corrupt cluster"),
        (
            EtcdError::NotSupportedForLearner,
            Code::Unavailable,
            "rpc not supported for learner",
        ),
        (
            EtcdError::BadLeaderTransferee,
            Code::FailedPrecondition,
            "bad leader transferee",
        ),
        (
            EtcdError::WrongDowngradeVersionFormat,
            Code::InvalidArgument,
            "wrong downgrade target version format",
        ),
        (
            EtcdError::InvalidDowngradeTargetVersion,
            Code::InvalidArgument,
            "invalid downgrade target version",
        ),
        (
            EtcdError::NoInflightDowngrade,
            Code::FailedPrecondition,
            "no inflight downgrade job",
        ),
    ];

    #[test]
    fn every_error_has_etcds_code_and_message() {
        assert_eq!(
            TABLE.len(),
            EtcdError::KNOWN.len(),
            "table and enum differ in size"
        );
        for (err, code, text) in TABLE {
            let want = format!("etcdserver: {text}");
            assert_eq!(err.code(), *code, "{err:?}");
            assert_eq!(err.message(), want, "{err:?}");
            assert_eq!(err.to_string(), want, "{err:?}");
            let status = Status::from(err.clone());
            assert_eq!(status.code(), *code, "{err:?}");
            assert_eq!(status.message(), want, "{err:?}");
        }
    }

    #[test]
    fn known_errors_are_distinct_and_round_trip() {
        for (i, err) in EtcdError::KNOWN.iter().enumerate() {
            assert!(
                TABLE.iter().any(|(e, _, _)| e == err),
                "{err:?} missing from TABLE"
            );
            assert!(!EtcdError::KNOWN[..i].contains(err), "{err:?} listed twice");
            let status = Status::from(err.clone());
            assert_eq!(EtcdError::from_status(&status).as_ref(), Some(err));
        }
    }

    #[test]
    fn unknown_passes_raw_text_with_code_unknown() {
        let err = EtcdError::Unknown("election: no leader".into());
        assert_eq!(err.code(), Code::Unknown);
        assert_eq!(err.message(), "election: no leader");
        let status = Status::from(err.clone());
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(status.message(), "election: no leader");
        assert_eq!(EtcdError::from_status(&status), Some(err));
    }

    #[test]
    fn from_status_matches_by_message_whatever_the_code() {
        // v3lock passes KV errors through as Unknown with the same text.
        let status = Status::unknown("etcdserver: requested lease not found");
        assert_eq!(
            EtcdError::from_status(&status),
            Some(EtcdError::LeaseNotFound)
        );
    }

    #[test]
    fn from_status_ignores_non_etcd_statuses() {
        assert_eq!(
            EtcdError::from_status(&Status::deadline_exceeded("context deadline exceeded")),
            None
        );
        assert_eq!(
            EtcdError::from_status(&Status::cancelled("context canceled")),
            None
        );
    }
}
