//! The gRPC screening service: `pathguard.v1.Screening` plus the standard health and
//! reflection services, Prometheus metrics, and the `pathguard screen` client.
//!
//! Handlers on the async runtime only validate and enqueue; the model lives on worker threads
//! ([`worker`]) that batch requests from different clients together.

pub mod bounded;
pub mod client;
pub mod codec;
pub mod deadline;
pub mod drain;
pub mod grpc;
pub mod hostile;
pub mod input;
pub mod kserve;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod page;
pub mod rest;
pub mod server;
pub mod worker;

/// Code generated from `proto/pathguard/v1/screening.proto`.
pub mod proto {
    tonic::include_proto!("pathguard.v1");

    /// Descriptor set of our protos (both packages), served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pathguard_descriptor");
}

/// Code generated from `proto/inference/open_inference.proto` (the Open Inference Protocol).
pub mod inference {
    tonic::include_proto!("inference");
}
