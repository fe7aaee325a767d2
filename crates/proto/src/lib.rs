//! etcd v3 wire types and gRPC stubs.
//!
//! The modules mirror etcd's protobuf packages one to one, so every message,
//! field number and gRPC path (`/etcdserverpb.KV/Range`, `/v3lockpb.Lock/Lock`,
//! ...) is what etcd clients expect. The code is generated at build time from
//! `proto/` by `build.rs` (protox + tonic-prost-build, no system `protoc`).
//! All protobuf `bytes` fields are `bytes::Bytes`. Every message also implements serde's
//! `Serialize` and `Deserialize` with the protobuf JSON mapping as etcd's JSON gateway uses it
//! (proto field names, 64-bit integers as strings, bytes as base64; see `build.rs`).

/// Storage-level `KeyValue` and watch `Event` (etcd `mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Auth store records `User`, `Permission`, `Role` (etcd `authpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The client API: KV, Watch, Lease, Cluster, Maintenance and Auth services
/// with their messages (etcd `etcdserverpb`). Server traits live in
/// `<service>_server` (e.g. `kv_server::Kv`), clients in `<service>_client`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The `Lock` service (etcd `v3lockpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// The `Election` service (etcd `v3electionpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Encoded `google.protobuf.FileDescriptorSet` of every file above (imports
/// included, with comments), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor.bin"));
