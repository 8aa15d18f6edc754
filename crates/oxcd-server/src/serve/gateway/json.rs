//! JSON in and out of the gateway: protobuf messages through their pbjson
//! mapping (proto field names, int64 as strings, zero values left out), and
//! the error bodies and HTTP statuses grpc-gateway v1 gives etcd's clients.

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Code;

/// Turns a JSON request body into the encoded protobuf message. An empty
/// body is the empty message, as grpc-gateway treats it.
pub(super) fn to_proto<M>(json: &[u8]) -> Result<Vec<u8>, tonic::Status>
where
    M: prost::Message + DeserializeOwned + Default,
{
    let msg: M = if json.iter().all(u8::is_ascii_whitespace) {
        M::default()
    } else {
        serde_json::from_slice(json).map_err(|e| invalid_json(&e))?
    };
    Ok(msg.encode_to_vec())
}

/// Turns an encoded protobuf message into its JSON text.
pub(super) fn to_json<M>(proto: &[u8]) -> Result<Vec<u8>, tonic::Status>
where
    M: prost::Message + Serialize + Default,
{
    let msg = M::decode(proto).map_err(|e| tonic::Status::internal(e.to_string()))?;
    serde_json::to_vec(&msg).map_err(|e| tonic::Status::internal(e.to_string()))
}

/// A body that does not decode is InvalidArgument, as grpc-gateway says.
pub(super) fn invalid_json(e: &serde_json::Error) -> tonic::Status {
    tonic::Status::invalid_argument(e.to_string())
}

/// The HTTP status grpc-gateway v1 (`HTTPStatusFromCode`) gives a gRPC code.
pub(super) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The body of a failed unary call:
/// `{"error":"<msg>","message":"<msg>","code":N}`.
pub(super) fn error_body(status: &tonic::Status) -> Vec<u8> {
    let msg = json_string(status.message());
    format!(
        r#"{{"error":{msg},"message":{msg},"code":{}}}"#,
        status.code() as i32
    )
    .into_bytes()
}

/// What ends a failed stream (with no newline after it, as grpc-gateway
/// writes it):
/// `{"error":{"grpc_code":N,"http_code":N,"message":"…","http_status":"…"}}`.
pub(super) fn stream_error_line(status: &tonic::Status) -> Vec<u8> {
    let http = http_status(status.code());
    let reason = http.canonical_reason().unwrap_or("");
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{},\"http_status\":{}}}}}",
        status.code() as i32,
        http.as_u16(),
        json_string(status.message()),
        json_string(reason),
    )
    .into_bytes()
}

/// One stream message as grpc-gateway frames it: `{"result":<msg>}` and a
/// newline.
pub(super) fn stream_result_line(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 12);
    line.extend_from_slice(b"{\"result\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    line
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxcd_api::etcdserverpb::{PutRequest, RangeResponse, ResponseHeader};
    use oxcd_api::mvccpb::KeyValue;

    #[test]
    fn requests_take_either_field_name_and_numbers_or_strings() {
        let a = to_proto::<PutRequest>(br#"{"key":"Zm9v","value":"YmFy","lease":"7"}"#).unwrap();
        let b = to_proto::<PutRequest>(br#"{"key":"Zm9v","value":"YmFy","lease":7}"#).unwrap();
        assert_eq!(a, b);
        let p: PutRequest = prost::Message::decode(a.as_slice()).unwrap();
        assert_eq!(
            (&p.key[..], &p.value[..], p.lease),
            (&b"foo"[..], &b"bar"[..], 7)
        );
        let c = to_proto::<oxcd_api::etcdserverpb::RangeRequest>(br#"{"rangeEnd":"AA=="}"#);
        let d = to_proto::<oxcd_api::etcdserverpb::RangeRequest>(br#"{"range_end":"AA=="}"#);
        assert_eq!(c.unwrap(), d.unwrap());
        assert_eq!(to_proto::<PutRequest>(b"  ").unwrap(), Vec::<u8>::new());
        assert!(to_proto::<PutRequest>(br#"{"unknown":1,"key":"Zm9v"}"#).is_ok());
        let bad = to_proto::<PutRequest>(br#"{"key":"!!"}"#).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
    }

    #[test]
    fn responses_use_proto_names_strings_for_int64_and_leave_zeros_out() {
        let r = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 0,
            }),
            kvs: vec![KeyValue {
                key: "foo".into(),
                create_revision: 2,
                mod_revision: 3,
                version: 1,
                value: "bar".into(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json = to_json::<RangeResponse>(&prost::Message::encode_to_vec(&r)).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[test]
    fn errors_carry_the_grpc_code_and_its_http_status() {
        let s = tonic::Status::unknown("\"leader\" field must be provided");
        assert_eq!(
            String::from_utf8(error_body(&s)).unwrap(),
            r#"{"error":"\"leader\" field must be provided","message":"\"leader\" field must be provided","code":2}"#
        );
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::PRECONDITION_FAILED
        );
        let line = stream_error_line(&tonic::Status::unavailable("no leader"));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"no leader\",\"http_status\":\"Service Unavailable\"}}"
        );
    }

    mod fuzz {
        use crate::damage::{damaged, damages};
        use crate::serve::gateway::route;
        use proptest::prelude::*;
        use serde_json::Value;
        use tonic::Code;

        /// Every route below `/v3/`.
        const METHODS: &[&str] = &[
            "kv/range",
            "kv/put",
            "kv/deleterange",
            "kv/txn",
            "kv/compaction",
            "watch",
            "lease/grant",
            "lease/revoke",
            "lease/keepalive",
            "lease/timetolive",
            "lease/leases",
            "cluster/member/add",
            "cluster/member/remove",
            "cluster/member/update",
            "cluster/member/list",
            "cluster/member/promote",
            "maintenance/alarm",
            "maintenance/status",
            "maintenance/defragment",
            "maintenance/hash",
            "maintenance/hashkv",
            "maintenance/snapshot",
            "maintenance/transfer-leadership",
            "maintenance/downgrade",
            "auth/enable",
            "auth/disable",
            "auth/status",
            "auth/authenticate",
            "auth/user/add",
            "auth/user/get",
            "auth/user/list",
            "auth/user/delete",
            "auth/user/changepw",
            "auth/user/grant",
            "auth/user/revoke",
            "auth/role/add",
            "auth/role/get",
            "auth/role/list",
            "auth/role/delete",
            "auth/role/grant",
            "auth/role/revoke",
            "lock/lock",
            "lock/unlock",
            "election/campaign",
            "election/proclaim",
            "election/leader",
            "election/observe",
            "election/resign",
        ];

        /// Field names of the client API's requests, in both spellings.
        const FIELDS: &[&str] = &[
            "key",
            "range_end",
            "rangeEnd",
            "value",
            "lease",
            "prev_kv",
            "limit",
            "revision",
            "sort_order",
            "sortOrder",
            "sort_target",
            "serializable",
            "keys_only",
            "count_only",
            "min_mod_revision",
            "compare",
            "success",
            "failure",
            "request_range",
            "request_put",
            "request_delete_range",
            "request_txn",
            "requestTxn",
            "result",
            "target",
            "version",
            "create_revision",
            "mod_revision",
            "create_request",
            "cancel_request",
            "progress_request",
            "start_revision",
            "filters",
            "watch_id",
            "fragment",
            "ID",
            "TTL",
            "keys",
            "peerURLs",
            "peer_urls",
            "isLearner",
            "alarm",
            "action",
            "memberID",
            "name",
            "password",
            "options",
            "no_password",
            "user",
            "role",
            "perm",
            "permType",
            "perm_type",
            "physical",
            "leader",
            "header",
            "targetID",
        ];

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                prop::sample::select(vec![
                    "",
                    "Zm9v",
                    "AA==",
                    "!!",
                    "9223372036854775807",
                    "9223372036854775808",
                    "-9223372036854775809",
                    "18446744073709551616",
                    "1e400",
                    "-1",
                    "NaN",
                    "EQUAL",
                    "PUT",
                    "DELETE",
                    "NOSPACE",
                    "ACTIVATE",
                    "READWRITE",
                    "99",
                ])
                .prop_map(Value::from),
            ]
        }

        /// JSON with the API's field names, a few levels deep.
        fn json() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(5, 48, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(prop::sample::select(FIELDS), inner, 0..5)
                        .prop_map(|m| Value::Object(
                            m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                        )),
                ]
            })
        }

        /// A Txn holding `depth` levels of nested Txns, as JSON.
        fn nested_txn(depth: usize) -> Value {
            let mut t = serde_json::json!({ "success": [] });
            for _ in 0..depth {
                t = serde_json::json!({ "success": [{ "request_txn": t }] });
            }
            t
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Any body, to every route: the encoded request, or
            /// InvalidArgument.
            #[test]
            fn arbitrary_bodies_convert_or_refuse(raw in prop::collection::vec(any::<u8>(), 0..64)) {
                for m in METHODS {
                    let r = route(m).unwrap();
                    if let Err(s) = (r.request)(&raw) {
                        prop_assert_eq!(s.code(), Code::InvalidArgument);
                    }
                    let _ = (r.response)(&raw);
                }
            }

            /// JSON of any shape with the API's field names, as is and
            /// damaged, to every route.
            #[test]
            fn api_shaped_json_converts_or_refuses(body in json(), damage in damages(3)) {
                let text = body.to_string().into_bytes();
                for bytes in [text.clone(), damaged(text, &damage)] {
                    for m in METHODS {
                        if let Err(s) = (route(m).unwrap().request)(&bytes) {
                            prop_assert_eq!(s.code(), Code::InvalidArgument);
                        }
                    }
                }
            }
        }

        /// Txns nested as deep as JSON allows convert (and encode); past
        /// serde_json's 128 levels they are refused; nothing overflows the
        /// stack.
        #[test]
        fn nested_txns_convert_or_refuse() {
            let txn = route("kv/txn").unwrap().request;
            for depth in (0..=45).chain([100, 127, 128, 129, 200]) {
                let r = txn(nested_txn(depth).to_string().as_bytes());
                match r {
                    Ok(_) => assert!(depth <= 42, "{depth}"),
                    Err(s) => {
                        assert!(depth > 40, "{depth}: {s:?}");
                        assert_eq!(s.code(), Code::InvalidArgument);
                    }
                }
            }
        }
    }
}
