//! hanul's API schema. The types are generated from `hanul/v1/*.proto`; serde impls follow the
//! proto3 JSON mapping (camelCase fields), which is also the manifest format.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("hanul.v1");
    include!(concat!(env!("OUT_DIR"), "/hanul.v1.serde.rs"));

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hanul_descriptor");
}
