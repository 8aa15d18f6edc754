//! Compiles the .proto files with protox (pure Rust, no system protoc) and
//! generates prost messages plus tonic clients and servers, and (pbjson)
//! the protobuf JSON mapping of the client-facing packages, which the JSON
//! gateway speaks.

/// Every .proto of the wire contract, relative to `proto/` (also the import
/// root, so imports read like `import "mvccpb/kv.proto";`).
const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "membershippb/membership.proto",
    "etcdserverpb/rpc.proto",
    "etcdserverpb/etcdserver.proto",
    "etcdserverpb/raft_internal.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "oxcdpeerpb/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files: Vec<String> = PROTOS.iter().map(|f| format!("proto/{f}")).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(&files, ["proto"])?;
    let descriptors = prost::Message::encode_to_vec(&fds);
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    // etcd's gateway marshals with the .proto field names (`OrigName`) and
    // leaves zero values out; it ignores fields it does not know.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".membershippb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
