//! CAFIS-style fixed-length telegrams (docs/cafis-telegram.md): the codec the engine's
//! CAFIS connector and the host simulator share. Pure functions on bytes and values,
//! no I/O, so every rule is unit-tested, property-tested and fuzzed without a socket.
//!
//! - [`telegram`]: the model: [`Telegram`] = [`Header`] + [`Body`] (payment and
//!   cancellation notices, ack, nack with a [`NackReason`], echo request/response),
//!   and the helpers that build answers ([`Telegram::ack`], [`Telegram::nack`],
//!   [`Telegram::echo_response`]) so both sides apply the same echo rules.
//! - [`codec`]: [`encode`] (value → whole frame) and [`decode`] (whole frame → value),
//!   checking every field; errors name the field and the offending value.
//! - [`frame`]: the length-prefix framing and the incremental [`Deframer`].
//! - [`kana`]: the Zengin rules for single-byte text fields (half-width kana, voiced
//!   marks as separate bytes, truncation that never splits a kana from its mark).
//!
//! Sending a notice and reading the answer, without the socket:
//!
//! ```
//! use mpn_cafis::{Body, Deframer, Header, Telegram, decode, encode};
//! let at = chrono::NaiveDate::from_ymd_opt(2026, 5, 31).unwrap().and_hms_opt(10, 15, 0).unwrap();
//! let echo = Telegram {
//!     header: Header { sequence: 1, resend: false, centre_id: "0000012345".into(), sent_at: at },
//!     body: Body::EchoRequest,
//! };
//! let bytes = encode(&echo).unwrap();
//! let mut deframer = Deframer::new();
//! deframer.push(&bytes);
//! let frame = deframer.next_frame().unwrap().unwrap();
//! assert_eq!(decode(&frame).unwrap(), echo);
//! ```

pub mod codec;
pub mod frame;
pub mod kana;
pub mod telegram;

pub use codec::{DecodeError, EncodeError, MAX_AMOUNT, decode, encode};
pub use frame::{Deframer, FrameError, MAX_FRAME_LEN};
pub use kana::KanaError;
pub use telegram::{
    Ack, Body, Cancellation, Channel, CollectionMethod, Header, Nack, NackReason, Notice,
    NoticeKind, Telegram, TelegramType,
};

/// Size of the common header, the smallest telegram (an echo).
pub const HEADER_LEN: usize = 48;

/// Sequence numbers run 1..=MAX_SEQUENCE (8 digits) and wrap to 1.
pub const MAX_SEQUENCE: u32 = 99_999_999;
