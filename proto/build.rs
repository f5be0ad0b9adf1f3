//! Compiles `proto/**/*.proto` without a system `protoc`: protox parses them into a
//! descriptor set, tonic-prost-build generates messages and services, pbjson-build the
//! serde impls of the protobuf JSON mapping (snake_case names kept).

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "vane/config/v1/config.proto",
    "vane/admin/v1/admin.proto",
    "vane/discovery/v1/discovery.proto",
    "vane/store/v1/store.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(FILES, ["proto"])?;
    std::fs::write(out.join("vane_descriptor.bin"), fds.encode_to_vec())?;

    // Maps as BTreeMap: their protobuf encoding is then in key order, the same in every
    // process, so the sha256 of a snapshot's encoding (its identity, which a node checks)
    // does not depend on a HashMap's random seed (a consumer with two metadata entries
    // was NACKed by every node before).
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds.clone())?;

    let mut json = pbjson_build::Builder::new();
    for file in &fds.file {
        json.register_file_descriptor(file.clone());
    }
    json.preserve_proto_field_names().btree_map(["."]).build(&[".vane"])?;
    Ok(())
}
