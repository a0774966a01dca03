//! Omni's gRPC contracts as Rust: prost messages and tonic clients and servers for every
//! package under `proto/`, generated at build time. Modules follow the proto packages:
//! `omni_proto::omni::identity::v1`, `omni_proto::omni::events::v1`, ...

#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/omni_modules.rs"));

/// The encoded `FileDescriptorSet` of every Omni contract (with its imports), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/omni_descriptor.bin"));

pub use omni::common::v1 as common;
pub use omni::events::v1 as events;
pub use omni::identity::v1 as identity;
