//! Framing over TCP. Every telegram starts with its total length as 4 ASCII digits
//! (the header's `total_length` field, counting itself), so a reader needs no other
//! delimiter: read 4 bytes, learn the size, read the rest.
//!
//! [`Deframer`] does that on whatever chunks the socket hands over, without I/O of its
//! own, so the TCP side is a loop of `push` and `next_frame`.

use thiserror::Error;

use crate::HEADER_LEN;

/// Size of the length prefix (the `total_length` field).
pub const LENGTH_PREFIX_LEN: usize = 4;

/// The largest frame a receiver accepts. Today's largest telegram is 320 bytes; the
/// headroom lets a later version add a type without changing the framing, while a
/// garbage prefix such as `9999` is still refused at once.
pub const MAX_FRAME_LEN: usize = 1024;

/// The stream cannot be framed any further. There is no way to find the next
/// telegram boundary after this: close the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("total_length \"{value}\" is not 4 ASCII digits")]
    NotDigits { value: String },
    #[error("total_length {len} is outside {HEADER_LEN}..={MAX_FRAME_LEN}")]
    OutOfRange { len: usize },
}

/// The frame size announced by a 4-byte prefix, checked against the limits.
pub fn declared_length(prefix: [u8; LENGTH_PREFIX_LEN]) -> Result<usize, FrameError> {
    if !prefix.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::NotDigits {
            value: prefix.escape_ascii().to_string(),
        });
    }
    let len = prefix.iter().fold(0, |n, b| n * 10 + usize::from(b - b'0'));
    if !(HEADER_LEN..=MAX_FRAME_LEN).contains(&len) {
        return Err(FrameError::OutOfRange { len });
    }
    Ok(len)
}

/// Splits a byte stream into frames. Holds at most one partial frame plus whatever
/// was pushed after it; frames come out whole, ready for [`crate::decode`].
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. A bad length
    /// prefix is reported as soon as its 4 bytes are in (not after waiting for a body
    /// that will never come), and again on every later call.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = declared_length(*prefix)?;
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }

    /// Bytes received but not yet returned as a frame (a partial frame at the end of
    /// a connection means the peer broke off mid-telegram).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_pushes_and_packed_together() {
        let mut frame = b"0048".to_vec();
        frame.resize(48, b'x');
        let mut d = Deframer::new();
        d.push(&frame[..3]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&frame[3..47]);
        assert_eq!(d.next_frame(), Ok(None));
        let mut two = frame[47..].to_vec();
        two.extend_from_slice(&frame);
        two.extend_from_slice(&frame[..10]);
        d.push(&two);
        assert_eq!(d.next_frame(), Ok(Some(frame.clone())));
        assert_eq!(d.next_frame(), Ok(Some(frame)));
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 10);
    }

    #[test]
    fn garbage_prefix_is_refused_at_once() {
        let mut d = Deframer::new();
        d.push(b"GET / HTTP/1.1");
        assert_eq!(
            d.next_frame(),
            Err(FrameError::NotDigits {
                value: "GET ".into()
            })
        );
        let mut d = Deframer::new();
        d.push(b"9999");
        assert_eq!(d.next_frame(), Err(FrameError::OutOfRange { len: 9999 }));
        let mut d = Deframer::new();
        d.push(b"0047");
        assert_eq!(d.next_frame(), Err(FrameError::OutOfRange { len: 47 }));
        // Still refused later: the stream cannot be resynchronised.
        assert_eq!(d.next_frame(), Err(FrameError::OutOfRange { len: 47 }));
    }
}
