//! etcd v3 wire types and gRPC stubs.
//!
//! The modules mirror etcd's protobuf packages one to one, so every message,
//! field number and gRPC path (`/etcdserverpb.KV/Range`, `/v3lockpb.Lock/Lock`,
//! ...) is what etcd clients expect. The code is generated at build time from
//! `proto/` by `build.rs` (protox + tonic-prost-build, no system `protoc`).
//! All protobuf `bytes` fields are `bytes::Bytes`.

/// Storage-level `KeyValue` and watch `Event` (etcd `mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Auth store records `User`, `Permission`, `Role` (etcd `authpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The client API: KV, Watch, Lease, Cluster, Maintenance and Auth services
/// with their messages (etcd `etcdserverpb`). Server traits live in
/// `<service>_server` (e.g. `kv_server::Kv`), clients in `<service>_client`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The `Lock` service (etcd `v3lockpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// The `Election` service (etcd `v3electionpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every file above (imports
/// included, with comments), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/etcd_descriptor.bin"));
