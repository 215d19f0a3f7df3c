//! Generates Rust for every `.proto` under `../../proto`. Uses `protoc` from PATH when there
//! is one, and the vendored binary from `protoc-bin-vendored` otherwise, so a fresh machine
//! needs nothing but the Rust toolchain.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    if std::env::var_os("PROTOC").is_none() && which("protoc").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    let files = [
        "weir/v1/ingest.proto",
        "weir/v1/storage.proto",
        "weir/v1/peer.proto",
        "opentelemetry/proto/common/v1/common.proto",
        "opentelemetry/proto/resource/v1/resource.proto",
        "opentelemetry/proto/logs/v1/logs.proto",
        "opentelemetry/proto/collector/logs/v1/logs_service.proto",
        "loki/push.proto",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::StrictProstCodec")
        // A stored record's labels and attributes in name order: one label set encodes
        // to the same bytes in every record, which the document store's compression then
        // finds (a hash map's order differs from map to map), and readers see them sorted.
        .btree_map(".weir.v1.StoredRecord")
        // An appended record's maps in name order too: decoding into a BTreeMap costs
        // less than into a HashMap (no SipHash, no table growth), validation reads names
        // in order without sorting them, and normalising moves the maps into the stored
        // record as they are.
        .btree_map(".weir.v1.Record")
        .compile_protos(&paths, &[root, protoc_include()?])?;
    Ok(())
}

/// Where `google/protobuf/timestamp.proto` is: the vendored include directory (a protoc
/// from PATH ships its own too, but may not say where).
fn protoc_include() -> Result<PathBuf, Box<dyn std::error::Error>> {
    Ok(protoc_bin_vendored::include_path()?)
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(bin))
        .find(|p| p.is_file())
}
