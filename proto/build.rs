//! Generates the `pb` modules from `mpn/*.proto` with a vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler. Also writes the file descriptor set that
//! the server reflection service publishes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds its compiler through PROTOC.
    set_protoc(&protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["mpn/v1/payment_event.proto", "mpn/notify/v1/notify.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("mpn_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    // The server side of `Notify` once more, its `Subscribe` with the frame codec
    // (`src/frame.rs`): notifications go out as pre-encoded bodies behind a per-stream
    // prefix. Clients keep the prost-generated stubs above.
    let frames = out.join("frames");
    std::fs::create_dir_all(&frames)?;
    let method = |name: &str, route: &str, input: &str, output: &str, codec: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path(codec)
    };
    let notify = tonic_build::manual::Service::builder()
        .name("Notify")
        .package("mpn.notify.v1")
        .method(
            method(
                "authenticate",
                "Authenticate",
                "crate::mpn::notify::v1::AuthenticateRequest",
                "crate::mpn::notify::v1::AuthenticateResponse",
                "tonic_prost::ProstCodec",
            )
            .build(),
        )
        .method(
            method(
                "subscribe",
                "Subscribe",
                "crate::mpn::notify::v1::ClientMessage",
                "crate::frame::Frame",
                "crate::frame::FrameCodec",
            )
            .client_streaming()
            .server_streaming()
            .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .out_dir(&frames)
        .compile(&[notify]);
    Ok(())
}

#[allow(unsafe_code)]
fn set_protoc(path: &std::path::Path) {
    // SAFETY: the build script has no other threads reading the environment.
    unsafe { std::env::set_var("PROTOC", path) };
}
