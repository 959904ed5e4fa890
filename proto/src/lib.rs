//! hanul's API schema. The types are generated from `hanul/v1/*.proto`; serde impls follow the
//! proto3 JSON mapping (camelCase fields), which is also the manifest format.
//!
//! Beside the generated code: [`resource`] (the kinds and generic access to any object) and
//! [`manifest`] (YAML/JSON manifests to objects and back).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("hanul.v1");
    include!(concat!(env!("OUT_DIR"), "/hanul.v1.serde.rs"));

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hanul_descriptor");
}

pub mod autoscaling;
pub mod client;
pub mod db;
pub mod elb;
pub mod events;
pub mod instance;
pub mod manifest;
pub mod resource;
pub mod selector;
pub mod time;

pub use client::{Client, Fields};
pub use resource::Kind;
pub use selector::Selector;
