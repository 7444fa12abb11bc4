include!("build-support/torch_link.rs");

use std::path::PathBuf;

/// Protocol files compiled into the crate (see proto/README.md).
const PROTOS: [&str; 2] = ["proto/pathguard/v1/screening.proto", "proto/inference/open_inference.proto"];

fn main() {
    link_libtorch();
    compile_protos();
}

/// Compiles the gRPC API with protox (pure Rust, no system protoc) and tonic-prost-build,
/// and writes the descriptor set that server reflection serves.
fn compile_protos() {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"]).unwrap_or_else(|e| panic!("compiling {PROTOS:?}: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let descriptor = out.join("pathguard_descriptor.bin");
    std::fs::write(&descriptor, prost::Message::encode_to_vec(&fds)).expect("writing the descriptor set");
    // Our codec checks requests before decoding them (src/service/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::service::codec::BoundedCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating gRPC code: {e}"));
}
