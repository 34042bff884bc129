//! Feeds arbitrary bytes to the deframer (in uneven chunks) and to the decoder. Nothing
//! may panic, and whatever decodes must re-encode to bytes that decode to the same
//! value (decode output is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpn_cafis::{Deframer, decode, encode};

fn check(bytes: &[u8]) {
    if let Ok(t) = decode(bytes) {
        let again = encode(&t).expect("a decoded telegram re-encodes");
        assert_eq!(decode(&again).expect("a re-encoded telegram decodes"), t);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut deframer = Deframer::new();
    // The first byte picks the chunk size, so frames straddle pushes in many ways.
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(step) {
        deframer.push(chunk);
        loop {
            match deframer.next_frame() {
                Ok(Some(frame)) => check(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
