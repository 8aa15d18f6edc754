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
}
