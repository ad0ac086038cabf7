//! The `gatehouse.v1` wire contract: prost messages and tonic client/server
//! stubs generated at build time from `proto/` with protox (no system
//! `protoc`). This crate is a leaf: it holds generated code only and must
//! never contain decision logic or depend on another workspace crate.

/// Generated types of package `gatehouse.v1`.
pub mod v1 {
    #![allow(
        unreachable_pub,
        missing_debug_implementations,
        clippy::all,
        clippy::allow_attributes_without_reason,
        reason = "generated code"
    )]
    tonic::include_proto!("gatehouse.v1");

    /// The encoded `FileDescriptorSet` of the contract, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/gatehouse_descriptor.bin"));
}
