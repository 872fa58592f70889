//! Generated gRPC code for every package in `proto/`, and the encoded file descriptor set that
//! the services serve to gRPC reflection.

/// `documents.v1`: the provider's contract; `documents.admin.v1`: its operators' view.
pub mod documents {
    pub mod v1 {
        tonic::include_proto!("documents.v1");
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("documents.admin.v1");
        }
    }
}

/// `consumer.v1`: the consumer's contract.
pub mod consumer {
    pub mod v1 {
        tonic::include_proto!("consumer.v1");
    }
}

/// Encoded `FileDescriptorSet` of every `.proto` in `proto/`, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Fully qualified gRPC service names, as health checks and reflection report them.
pub const PROVIDER_SERVICE_NAME: &str = "documents.v1.DocumentProvider";
pub const ADMIN_SERVICE_NAME: &str = "documents.admin.v1.Admin";
pub const CONSUMER_SERVICE_NAME: &str = "consumer.v1.Consumer";
