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
    Ok(())
}

#[allow(unsafe_code)]
fn set_protoc(path: &std::path::Path) {
    // SAFETY: the build script has no other threads reading the environment.
    unsafe { std::env::set_var("PROTOC", path) };
}
