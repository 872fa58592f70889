//! Compiles `proto/` into Rust with protox (no `protoc` needed) and writes the encoded file
//! descriptor set that the services hand to gRPC reflection.

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "documents/v1/documents.proto",
    "documents/admin/v1/admin.proto",
    "consumer/v1/consumer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            proto_root.join(proto).display()
        );
    }

    let fds = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // google.rpc.Status is tonic-types' own type, so its details helpers apply to it.
        .extern_path(".google.rpc", "::tonic_types::pb")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
