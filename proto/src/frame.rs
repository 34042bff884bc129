//! What the server writes on a `Subscribe` stream, encoded once and shared.
//!
//! A notification is protobuf-encoded once, by the session that builds it, without its
//! `seq` (0, so absent). Every stream that delivers it writes the same body behind its
//! own few bytes of prefix: the `ServerMessage.notification` key and length, then the
//! `Notification.seq` field. Field 1 comes first in a canonical encoding anyway, so
//! prefix + body is byte for byte what prost writes for the whole `ServerMessage`
//! (checked below, and by every client that decodes the stream).

use bytes::{BufMut, Bytes};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

use crate::mpn::notify::v1 as pb;

/// One message of a `Subscribe` stream.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A message built for this stream only (`subscribed`, `heartbeat`); boxed, so
    /// that a frame is small in the stream's channel.
    Message(Box<pb::ServerMessage>),
    /// A notification: its shared encoded body (see [`encode_body`]) and this
    /// stream's sequence number.
    Notification { seq: u64, body: Bytes },
}

/// `ServerMessage.notification`.
const NOTIFICATION_FIELD: u32 = 2;
/// `Notification.seq`.
const SEQ_FIELD: u32 = 1;

/// The shared body of a notification: its encoding without `seq`.
pub fn encode_body(notification: &pb::Notification) -> Bytes {
    debug_assert_eq!(notification.seq, 0, "the body carries no seq");
    Bytes::from(notification.encode_to_vec())
}

/// Length of the `Notification` message that `seq` and `body` make.
fn inner_len(seq: u64, body: &[u8]) -> usize {
    let seq_len = if seq == 0 {
        0
    } else {
        key_len(SEQ_FIELD) + encoded_len_varint(seq)
    };
    seq_len + body.len()
}

/// Writes `ServerMessage { notification: body with seq }` into `buf`.
pub fn encode_notification(seq: u64, body: &[u8], buf: &mut impl BufMut) {
    let inner = inner_len(seq, body);
    encode_key(NOTIFICATION_FIELD, WireType::LengthDelimited, buf);
    encode_varint(inner as u64, buf);
    if seq != 0 {
        encode_key(SEQ_FIELD, WireType::Varint, buf);
        encode_varint(seq, buf);
    }
    buf.put_slice(body);
}

/// Encoded length of the `ServerMessage` that [`encode_notification`] writes.
pub fn notification_len(seq: u64, body: &[u8]) -> usize {
    let inner = inner_len(seq, body);
    key_len(NOTIFICATION_FIELD) + encoded_len_varint(inner as u64) + inner
}

/// The `Subscribe` codec: writes [`Frame`]s, reads `ClientMessage`s with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// Writes a [`Frame`] as one gRPC message.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameEncoder;

/// A stream's buffers start small and grow with what it sends: an idle stream keeps
/// only these (tonic's default is 8 KiB each way, per stream).
const ENCODE_BUFFER: usize = 1024;
const DECODE_BUFFER: usize = 256;
/// What a busy stream writes before handing it to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }

    fn encode(&mut self, item: Frame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Frame::Message(m) => m
                .encode(buf)
                .map_err(|e| Status::internal(format!("encoding a server message: {e}"))),
            Frame::Notification { seq, body } => {
                encode_notification(seq, &body, buf);
                Ok(())
            }
        }
    }
}

impl Codec for FrameCodec {
    type Encode = Frame;
    type Decode = pb::ClientMessage;
    type Encoder = FrameEncoder;
    type Decoder = ProstDecoder<pb::ClientMessage>;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        // The client sends only `subscribe` and acknowledgements.
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpn::v1 as event;
    use proptest::prelude::*;

    fn notification() -> impl Strategy<Value = pb::Notification> {
        (
            "[0-9]{26}:[A-Z_]{0,20}",
            "[0-9]{8}",
            0i32..8,
            "[0-9]{0,20}",
            any::<u64>(),
            "\\PC{0,12}",
            any::<i64>(),
            any::<i32>(),
            any::<i64>(),
            any::<bool>(),
            proptest::option::of((any::<u64>(), any::<u64>())),
        )
            .prop_map(
                |(
                    id,
                    inst,
                    kind,
                    customer,
                    amount,
                    kana,
                    published,
                    partition,
                    offset,
                    resent,
                    counters,
                )| {
                    pb::Notification {
                        seq: 0,
                        notification_id: id,
                        institution_code: inst,
                        kind,
                        customer_number: customer,
                        amount,
                        payer_kana: kana,
                        published_at_us: published,
                        source_partition: partition,
                        source_offset: offset,
                        resent_by_mpn: resent,
                        counters: counters.map(|(count, amount)| event::DailyCounters {
                            clearing_count: count,
                            clearing_amount: amount,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }
                },
            )
    }

    proptest! {
        /// Prefix + shared body is exactly prost's encoding of the whole message, and
        /// decodes back to the notification with this stream's seq.
        #[test]
        fn prefix_and_shared_body_equal_a_plain_prost_encode(n in notification(), seq in 0u64..=u64::MAX) {
            let body = encode_body(&n);
            let mut framed = Vec::new();
            encode_notification(seq, &body, &mut framed);
            let mut stamped = n.clone();
            stamped.seq = seq;
            let whole = pb::ServerMessage {
                message: Some(pb::server_message::Message::Notification(stamped.clone())),
            };
            prop_assert_eq!(&framed, &whole.encode_to_vec());
            prop_assert_eq!(framed.len(), notification_len(seq, &body));
            let decoded = pb::ServerMessage::decode(framed.as_slice()).unwrap();
            prop_assert_eq!(decoded.message, Some(pb::server_message::Message::Notification(stamped)));
        }
    }

    #[test]
    fn one_body_serves_every_stream() {
        let n = pb::Notification {
            notification_id: "x:PAYMENT".into(),
            amount: 1200,
            ..Default::default()
        };
        let body = encode_body(&n);
        for seq in [1, 127, 128, 16_384, u64::MAX] {
            let mut framed = Vec::new();
            encode_notification(seq, &body, &mut framed);
            let Some(pb::server_message::Message::Notification(got)) =
                pb::ServerMessage::decode(framed.as_slice())
                    .unwrap()
                    .message
            else {
                panic!("not a notification");
            };
            assert_eq!(
                (got.seq, got.amount, got.notification_id.as_str()),
                (seq, 1200, "x:PAYMENT")
            );
        }
    }
}
