//! Compiles the etcd v3 `.proto` files without a system `protoc`: `protox`
//! parses them into a `FileDescriptorSet` in pure Rust, and
//! `tonic-prost-build` generates the prost messages and the tonic client and
//! server stubs from that descriptor set.

use std::error::Error;
use std::path::{Path, PathBuf};

/// Entry files, relative to the include root `proto/`; their imports
/// (`mvccpb/kv.proto`, `authpb/auth.proto`) are pulled in automatically.
const PROTO_FILES: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let include_dir = manifest_dir.join("proto");

    // Rerun on any change under proto/, including files added later.
    println!("cargo:rerun-if-changed={}", include_dir.display());
    for file in PROTO_FILES {
        println!(
            "cargo:rerun-if-changed={}",
            include_dir.join(file).display()
        );
    }

    let mut compiler = protox::Compiler::new([&include_dir])?;
    // Source info carries the proto comments into the generated docs.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTO_FILES.iter().map(Path::new))?;

    // Kept for gRPC server reflection (exposed as `FILE_DESCRIPTOR_SET`).
    let descriptor_set = compiler.encode_file_descriptor_set();
    std::fs::write(out_dir.join("etcd_descriptor.bin"), &descriptor_set)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Every `bytes` field becomes `bytes::Bytes`, so keys, values and
        // snapshot blobs are sliced out of the receive buffer without copying.
        .bytes(".")
        .out_dir(&out_dir)
        .compile_fds(compiler.file_descriptor_set())?;

    // serde implementations of the protobuf JSON mapping (`<package>.serde.rs`), for the JSON
    // gateway. As etcd's gateway marshals them: the field names as written in the .proto
    // (`create_revision`, `TTL`, `dbSize`), 64-bit integers as strings, bytes as base64, enums
    // by name, default values left out; unknown fields are ignored when reading.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .out_dir(&out_dir)
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
