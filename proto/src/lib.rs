//! Generated protocol types of mpn-notify.
//!
//! - [`mpn::v1`]: `PaymentEvent`, the record the upstream gateway writes to Kafka.
//! - [`mpn::notify::v1`]: the `Notify` subscription service that billing systems use.
//! - [`frame`] and [`frames`]: the server's `Subscribe` frames, encoded once and shared.
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

/// The server side of `Notify` with the frame codec: `Subscribe` writes [`frame::Frame`]s
/// (notifications encoded once, shared by every stream). Clients use the stubs in
/// [`mpn::notify::v1`], which read the same bytes.
#[allow(missing_debug_implementations, unreachable_pub, clippy::all)]
pub mod frames {
    include!(concat!(env!("OUT_DIR"), "/frames/mpn.notify.v1.Notify.rs"));
}

pub mod frame;

/// Encoded `FileDescriptorSet` of every `.proto` in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mpn_descriptor");

pub mod json;
