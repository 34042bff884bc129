//! Generated protocol types of mpn-notify.
//!
//! - [`mpn::v1`]: `PaymentEvent`, the record the upstream gateway writes to Kafka.
//! - [`mpn::notify::v1`]: the `Notify` subscription service that billing systems use.
//! - [`json`]: the JSON form of `PaymentEvent`, both directions.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.

#[allow(missing_debug_implementations, clippy::all)]
pub mod mpn {
    pub mod v1 {
        tonic::include_proto!("mpn.v1");
    }
    pub mod notify {
        pub mod v1 {
            tonic::include_proto!("mpn.notify.v1");
        }
    }
}

/// Encoded `FileDescriptorSet` of every `.proto` in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mpn_descriptor");

pub mod json;
