//! Compiles the .proto files under the repository's `proto/` directory with tonic-prost-build.
//! protoc comes from protoc-bin-vendored, so no system protoc is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "build/bazel/semver/semver.proto",
    "google/bytestream/bytestream.proto",
    "google/longrunning/operations.proto",
    "google/rpc/code.proto",
    "google/rpc/error_details.proto",
    "google/rpc/status.proto",
];

/// Messages that carry blob bytes: their Debug is written by hand (lengths, not contents) so a
/// logged request never dumps a blob.
const NO_DERIVED_DEBUG: &[&str] = &[
    ".google.bytestream.ReadResponse",
    ".google.bytestream.WriteRequest",
    ".build.bazel.remote.execution.v2.BatchUpdateBlobsRequest.Request",
    ".build.bazel.remote.execution.v2.BatchReadBlobsResponse.Response",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // Edition 2024 makes `env::set_var` unsafe (and the workspace forbids unsafe code), so the
    // vendored protoc is handed to prost-build directly rather than through `PROTOC`.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    // Naming files replaces cargo's default of re-running on any change in the package, so
    // this script must name itself too.
    println!("cargo:rerun-if-changed=build.rs");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        .skip_debug(NO_DERIVED_DEBUG.iter().copied())
        .include_file("protos.rs")
        .compile_with_config(config, &files, &[root, well_known])?;

    raw_servers();
    Ok(())
}

/// Server sides of ActionCache and ContentAddressableStorage whose messages keep client-supplied
/// protos as the bytes that were sent: an ActionResult is stored and returned exactly as uploaded,
/// and GetTree returns Directory blobs as stored (re-encoding could change their digests). The
/// wire format is the same as the standard services'; see `src/raw.rs` for the types.
fn raw_servers() {
    use tonic_prost_build::manual::{Builder, Method, Service};

    const CODEC: &str = "tonic_prost::ProstCodec";
    const V2: &str = "crate::reapi::v2";
    let method = |name: &str, route: &str, input: String, output: String| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path(CODEC)
    };
    let action_cache = Service::builder()
        .name("ActionCache")
        .package("build.bazel.remote.execution.v2")
        .method(
            method(
                "get_action_result",
                "GetActionResult",
                format!("{V2}::GetActionResultRequest"),
                "crate::raw::RawMessage".into(),
            )
            .build(),
        )
        .method(
            method(
                "update_action_result",
                "UpdateActionResult",
                "crate::raw::UpdateActionResultRequestRaw".into(),
                "crate::raw::RawMessage".into(),
            )
            .build(),
        )
        .build();
    let cas = Service::builder()
        .name("ContentAddressableStorage")
        .package("build.bazel.remote.execution.v2")
        .method(
            method(
                "find_missing_blobs",
                "FindMissingBlobs",
                format!("{V2}::FindMissingBlobsRequest"),
                format!("{V2}::FindMissingBlobsResponse"),
            )
            .build(),
        )
        .method(
            method(
                "batch_update_blobs",
                "BatchUpdateBlobs",
                format!("{V2}::BatchUpdateBlobsRequest"),
                format!("{V2}::BatchUpdateBlobsResponse"),
            )
            .build(),
        )
        .method(
            method(
                "batch_read_blobs",
                "BatchReadBlobs",
                format!("{V2}::BatchReadBlobsRequest"),
                format!("{V2}::BatchReadBlobsResponse"),
            )
            .build(),
        )
        .method(
            method(
                "get_tree",
                "GetTree",
                format!("{V2}::GetTreeRequest"),
                "crate::raw::GetTreeResponseRaw".into(),
            )
            .server_streaming()
            .build(),
        )
        .build();
    // Clients too: a sharded CAS moves action results between servers as the bytes stored.
    Builder::new()
        .build_client(true)
        .build_server(true)
        .compile(&[action_cache, cas]);
}
